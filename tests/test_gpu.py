"""On a machine with a CUDA GPU and TensorRT: build real engines and run them (skipped elsewhere)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ghostedge.build import Backend, BuildConfig, Precision, build
from ghostedge.export import ort_session


@pytest.mark.gpu
@pytest.mark.tensorrt
@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_real_tensorrt_engine_matches_fp32(engines_copy: Path, precision: str):
    from ghostedge.backends.tensorrt import TensorRTRunner, import_tensorrt, inspect_engine

    out = engines_copy / f"g.{precision}.plan"
    build(BuildConfig(engines=engines_copy, precision=Precision(precision), backend=Backend.tensorrt,
                      target="dgpu", batch=(1, 4, 8), out=out))
    x = np.random.default_rng(0).standard_normal((4, 3, 32, 32)).astype(np.float32)
    ref = ort_session(engines_copy / "ghostnet.onnx").run(None, {"input": x})[0]
    with TensorRTRunner(out) as r:
        y = r.infer(x)
        assert r.gpu_ms and r.gpu_ms[-1] > 0
        rows = inspect_engine(import_tensorrt(), r.engine)
    cos = (ref * y).sum(1) / (np.linalg.norm(ref, axis=1) * np.linalg.norm(y, axis=1))
    assert cos.min() > (0.99 if precision == "fp16" else 0.95)
    assert rows and all({"name", "precision", "flags"} <= set(row) for row in rows)


@pytest.mark.gpu
@pytest.mark.tensorrt
def test_real_cuda_graph_replay_after_a_larger_batch(engines_copy: Path):
    """bench's order: batches 1, 4, 8, then eval replays 1 and 4 from their graphs: results must not change."""
    from ghostedge.backends.tensorrt import TensorRTRunner

    out = engines_copy / "g.fp16.plan"
    build(BuildConfig(engines=engines_copy, precision=Precision.fp16, backend=Backend.tensorrt, target="dgpu",
                      batch=(1, 4, 8), out=out))
    rng = np.random.default_rng(0)
    xs = {b: rng.standard_normal((b, 3, 32, 32)).astype(np.float32) for b in (1, 4, 8)}
    with TensorRTRunner(out) as plain:
        want = {b: plain.infer(x) for b, x in xs.items()}
    with TensorRTRunner(out, cuda_graph=True) as r:
        for b in (1, 4, 8, 1, 4, 8, 1, 4):
            np.testing.assert_allclose(r.infer(xs[b]), want[b], rtol=1e-3, atol=1e-3)
        assert len(r._graphs) == 3


@pytest.mark.gpu
@pytest.mark.tensorrt
def test_real_version_compatible_engine_runs(engines_copy: Path):
    from ghostedge.bench import open_runner

    out = engines_copy / "g.vc.plan"
    build(BuildConfig(engines=engines_copy, precision=Precision.fp16, backend=Backend.tensorrt, target="dgpu",
                      batch=(1, 4, 8), out=out, version_compatible=True))
    runner, man = open_runner(out)
    assert man["version_compatible"]
    x = np.random.default_rng(0).standard_normal((4, 3, 32, 32)).astype(np.float32)
    ref = ort_session(engines_copy / "ghostnet.onnx").run(None, {"input": x})[0]
    with runner:
        y = runner.infer(x)
    cos = (ref * y).sum(1) / (np.linalg.norm(ref, axis=1) * np.linalg.norm(y, axis=1))
    assert cos.min() > 0.99
