"""Library stages leave the process as they found it: threads, flush-denormal, RNGs, deterministic mode."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch

from ghostedge.state import flush_denormal_enabled, flush_denormals, seeded, torch_threads


def _rng_fingerprint() -> tuple:
    return (random.getstate(), np.random.get_state()[1].tobytes(), torch.get_rng_state().numpy().tobytes())


def test_torch_threads_restores_also_on_error():
    before = torch.get_num_threads()
    want = 1 if before != 1 else 2
    with torch_threads(want):
        assert torch.get_num_threads() == want
    assert torch.get_num_threads() == before
    with pytest.raises(RuntimeError):
        with torch_threads(want):
            raise RuntimeError("stage failed")
    assert torch.get_num_threads() == before
    with torch_threads(0):                      # 0 means: leave it alone
        assert torch.get_num_threads() == before


@pytest.mark.parametrize("initial", [False, True])
def test_flush_denormals_restores_the_previous_mode(initial: bool):
    if not torch.set_flush_denormal(initial):
        pytest.skip("this CPU has no flush-denormal mode (needs SSE3 on x86)")
    try:
        assert flush_denormal_enabled() is initial
        with flush_denormals():
            assert flush_denormal_enabled()
            assert (torch.tensor([1e-39]) * 1.0).item() == 0.0
        assert flush_denormal_enabled() is initial
    finally:
        torch.set_flush_denormal(False)


def test_seeded_is_reproducible_and_restores_every_generator():
    random.seed(123)
    np.random.seed(123)
    torch.manual_seed(123)
    before = _rng_fingerprint()
    det = torch.are_deterministic_algorithms_enabled()
    with seeded(7, deterministic=True):
        a = (random.random(), float(np.random.rand()), float(torch.rand(1)))
        assert torch.are_deterministic_algorithms_enabled()
    with seeded(7):
        b = (random.random(), float(np.random.rand()), float(torch.rand(1)))
    assert a == b
    assert _rng_fingerprint() == before
    assert torch.are_deterministic_algorithms_enabled() == det


def test_distill_and_evaluate_leave_threads_and_rng_alone(tmp_path: Path, tiny_weights: Path):
    from ghostedge.distill import DistillConfig, distill
    from ghostedge.evaluate import EvalConfig, evaluate

    threads = torch.get_num_threads()
    want = 1 if threads != 1 else 2
    torch.manual_seed(5)
    before = _rng_fingerprint()
    distill(DistillConfig(out=tmp_path / "calib", n=2, batch=2, iters=2, weights=tiny_weights, threads=want))
    assert torch.get_num_threads() == threads
    assert _rng_fingerprint() == before
    (tmp_path / "val" / "n01440764").mkdir(parents=True)
    (tmp_path / "calib" / "distilled_0000.png").rename(tmp_path / "val" / "n01440764" / "a.png")
    evaluate(EvalConfig(data=tmp_path / "val", weights=tiny_weights, threads=want))
    assert torch.get_num_threads() == threads


def test_refined_weights_are_cached_within_one_build_only(engines_dir: Path, image_folder: Path, monkeypatch):
    import ghostedge.refine as refine_mod
    from ghostedge.build_common import BuildConfig
    from ghostedge.build_cpu import _REFINED, refined_for_bits, refinement_cache
    from ghostedge.record import CalibrationRecord

    calls = []
    real = refine_mod.refine
    monkeypatch.setattr(refine_mod, "refine", lambda *a, **k: calls.append(1) or real(*a, **k))
    rec = CalibrationRecord.read(engines_dir / "ghostnet.calib.json")
    cfg = BuildConfig(engines=engines_dir, calib=image_folder)
    with refinement_cache():
        a = refined_for_bits(cfg, rec, 7)
        assert refined_for_bits(cfg, rec, 7) is a and len(calls) == 1
    assert _REFINED.get() is None                      # the cache went with the build
    b = refined_for_bits(cfg, rec, 7)                  # outside a build: computed, not kept
    assert b is not a and len(calls) == 2 and _REFINED.get() is None
