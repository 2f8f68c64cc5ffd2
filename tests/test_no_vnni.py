"""x86 CPUs without VNNI (issue #16): a host-independent TensorRT INT8 estimate, CPU engines that cannot
saturate an int16 intermediate, a faithfulness check with known error rates, never a stopped main job.

Nothing here depends on which CPU runs it: CPU kinds are given as /proc/cpuinfo texts, and what a kernel
does is checked statically (the weights it multiplies with) or against a numpy model of vpmaddubsw."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from ghostedge.build import BuildConfig, Precision
from ghostedge.build_cpu import (FAITHFUL_ALPHA, FAITHFUL_TOL_PTS, SELECT_IMAGES, check_images, faithfulness,
                                 forced_variant, int8_variants, mosaics)
from ghostedge.cpu import NO_OVERFLOW_WEIGHT_MAX, read_cpu
from ghostedge.estimate import executed_graph, int8_kernels, qdq_logits
from ghostedge.export import INPUT_NAME, ort_session
from ghostedge.record import CalibrationRecord

XEON = "model name\t: Intel(R) Xeon(R) Processor\nflags\t\t: fpu sse avx avx2 fma avx512f avx512bw avx512_vnni avx512_bf16\n"
EPYC_VNNI = "model name\t: AMD EPYC\nflags\t\t: fpu avx avx2 fma avx512f avx512bw avx512_vnni avx512_bf16\n"
EPYC_ZEN3 = "model name\t: AMD EPYC 7B13\nflags\t\t: fpu sse sse2 ssse3 avx avx2 fma f16c bmi2\n"
ALDER = "model name\t: 12th Gen Intel(R) Core(TM) i7\nflags\t\t: avx avx2 fma avx_vnni\n"
GRAVITON = "processor\t: 0\nFeatures\t: fp asimd asimddp i8mm bf16\n"
KINDS = {"xeon-vnni": (XEON, "x86_64"), "epyc-vnni": (EPYC_VNNI, "x86_64"), "epyc-zen3-avx2": (EPYC_ZEN3, "x86_64"),
         "alder-avx-vnni": (ALDER, "x86_64"), "graviton": (GRAVITON, "aarch64")}


def cpu_kind(kind: str, **env: str):  # noqa: ANN201
    text, arch = KINDS[kind]
    return read_cpu(text, arch, env)


# ---------------------------------------------------------------------------------------------
# 1. the estimate

def test_estimate_never_runs_the_hosts_int8_kernels(engines_dir: Path):
    q = onnx.load(str(engines_dir / "ghostnet.int8.onnx"))
    n_act_q = sum(n.op_type == "QuantizeLinear" and n.input[0] not in {i.name for i in q.graph.initializer}
                  for n in q.graph.node)
    ran = executed_graph(q)
    assert int8_kernels(ran) == []
    assert sum(n.op_type == "QuantizeLinear" for n in ran.graph.node) >= n_act_q   # every activation Q/DQ stays
    # the check can fail: ONNX Runtime's default session fuses the same graph into int8 kernels
    d = engines_dir.parent / "default_opt.onnx"
    ort_session(q, threads=1, optimized_path=d)
    assert int8_kernels(onnx.load(str(d)))


def test_estimate_is_the_graphs_float_semantics(engines_dir: Path):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((16, 3, 32, 32)).astype(np.float32)
    q = engines_dir / "ghostnet.int8.onnx"
    pure = ort_session(q, threads=1, optimize=False).run(None, {INPUT_NAME: x})[0]   # no graph rewrite at all
    got = qdq_logits(q, x, batch=5, threads=1)
    np.testing.assert_allclose(got, pure, rtol=1e-4, atol=1e-4)
    assert (got.argmax(1) == pure.argmax(1)).all()


def test_two_independent_estimates_agree_image_for_image(tmp_path: Path):
    """The reference GhostNet's Q/DQ graph, estimated by ONNX Runtime (float Q/DQ) and by the PyTorch
    interpreter's fake quantization (torch convolutions, its own rounding code). The two sum in different
    orders, so an activation within float eps of a rounding boundary can round the other way (about ten per
    image in a model this size), which moves a near-tie image now and then: measured 127 of 128 images with
    the same top-1 (and 505 of 512 real val images). The figure that matters, agreement with FP32, must not
    move by more than that."""
    from ghostedge.data import load_images, normalize, sample_images
    from ghostedge.checkpoint import load_model
    from ghostedge.qdq import plan_placement
    from ghostedge.quantize import QuantizeConfig, quantize
    from ghostedge.refine import RefineConfig, Refined

    from .test_refine import quantized_logits

    calib = Path(__file__).resolve().parents[1] / "calib"
    quantize(QuantizeConfig(calib=calib, out=tmp_path, num_images=64, holdout=0, batch=32, threads=2,
                            refine=RefineConfig(rounding="nearest", bias_correction=False)))
    rec = CalibrationRecord.read(tmp_path / "ghostnet.calib.json")
    fp32 = onnx.load(str(tmp_path / "ghostnet.onnx"))
    _, info = load_model(None)
    u8, _, _ = load_images(sample_images(calib, 128, 7), info.preprocess)
    x = normalize(u8, info.preprocess)
    amax = {k: v.amax for k, v in rec.tensors.items()}
    pl = plan_placement(fp32, set(rec.excluded_nodes))
    mine = quantized_logits(fp32, pl, Refined(amax=amax), x)
    est = qdq_logits(tmp_path / "ghostnet.int8.onnx", x, threads=2)
    assert (mine.argmax(1) == est.argmax(1)).mean() >= 0.97
    assert np.abs(mine - est).max() < 0.1 * np.abs(est).max()
    ref = ort_session(fp32, threads=2).run(None, {INPUT_NAME: x})[0].argmax(1)
    assert abs((mine.argmax(1) == ref).sum() - (est.argmax(1) == ref).sum()) <= 2
    assert not np.array_equal(mine, est)   # two computations, not one


# ---------------------------------------------------------------------------------------------
# 2. the CPU and its candidates

def test_cpu_kinds_are_read_from_their_flags():
    for kind, vnni in (("xeon-vnni", True), ("epyc-vnni", True), ("epyc-zen3-avx2", False),
                       ("alder-avx-vnni", True)):
        c = cpu_kind(kind)
        assert c.x86 and c.vnni is vnni and c.ort_saturates is (not vnni) and c.onednn_saturates is (not vnni), kind
    zen3 = cpu_kind("epyc-zen3-avx2")
    assert "no VNNI" in zen3.describe() and zen3.name == "AMD EPYC 7B13"
    arm = cpu_kind("graviton")
    assert not arm.x86 and not arm.ort_saturates and not arm.onednn_saturates
    capped = cpu_kind("epyc-vnni", ONEDNN_MAX_CPU_ISA="AVX2")         # oneDNN sent down the AVX2 path
    assert capped.onednn_saturates and not capped.ort_saturates and "ONEDNN_MAX_CPU_ISA" in capped.describe()
    assert cpu_kind("xeon-vnni", GHOSTEDGE_ASSUME_NO_VNNI="1").ort_saturates


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_no_candidate_can_saturate_on_any_cpu_kind(kind: str):
    c = cpu_kind(kind)
    vs = int8_variants(c, openvino=True, bf16=True)
    assert vs and len({v.name for v in vs}) == len(vs)
    for v in vs + [forced_variant("onnxruntime", True, c), forced_variant("openvino", True, c)]:
        saturates = c.ort_saturates if v.backend == "onnxruntime" else c.onednn_saturates
        if saturates:
            assert v.weight_bits == 7 or v.uint8_weights, (kind, v)
    if c.vnni or not c.x86:   # where nothing saturates, the full-precision candidates of the VNNI machines
        assert {v.name for v in vs} >= {"onnxruntime-u8s8", "openvino-u8-f32"}


def _vpmaddubsw_dot(a_u8: np.ndarray, w_s8: np.ndarray) -> int:
    """u8 . s8 as AVX2 computes it without VNNI: pairs of products added in a saturating int16, then int32."""
    p = a_u8.astype(np.int32) * w_s8.astype(np.int32)
    pairs = np.clip(p[0::2] + p[1::2], -32768, 32767)
    return int(pairs.sum())


def test_seven_bit_weights_are_exactly_the_bound_that_cannot_overflow():
    rng = np.random.default_rng(0)
    a = np.full(64, 255, np.uint8)
    for bound, overflows in ((NO_OVERFLOW_WEIGHT_MAX, False), (127, True)):
        worst = np.full(64, bound, np.int8)
        exact = int(a.astype(np.int32) @ worst.astype(np.int32))
        assert (_vpmaddubsw_dot(a, worst) != exact) is overflows
    for _ in range(200):   # any u8 activations with |w| <= 64: exact
        x = rng.integers(0, 256, 96).astype(np.uint8)
        w = rng.integers(-64, 65, 96).astype(np.int8)
        assert _vpmaddubsw_dot(x, w) == int(x.astype(np.int32) @ w.astype(np.int32))


def test_every_no_vnni_engine_built_passes_the_static_check(engines_copy: Path, monkeypatch: pytest.MonkeyPatch):
    import ghostedge.build_cpu as bc
    from ghostedge.backends.onnxruntime import qoperator_weight_code_max

    monkeypatch.setattr(bc, "SELECT_SECONDS", 0.05)
    zen3 = cpu_kind("epyc-zen3-avx2")
    r = bc.choose_cpu_engine(BuildConfig(engines=engines_copy, precision=Precision.int8, batch=(1, 2, 2)),
                             lambda s: None, threads=1, cpu=zen3)
    sel = json.loads(r.manifest.read_text())["selection"]
    assert sel["cpu"]["ort_saturates"] and not sel["cpu"]["vnni"]
    built = [c for c in sel["candidates"] if not c["error"]]
    assert {c["name"] for c in built} >= {"onnxruntime-u8u8", "onnxruntime-u8s8w7"}
    for c in built:
        assert c["uint8_weights"] or c["weight_bits"] == 7
    man = json.loads(r.manifest.read_text())
    assert man["weight_code_max"] is None or man["weight_code_max"] <= NO_OVERFLOW_WEIGHT_MAX
    # the engines on disk: 7-bit weights really are within [-64, 64]; u8u8 weights really are uint8
    for v in (bc.Variant("w7", "onnxruntime", "qoperator", weight_bits=7),
              bc.Variant("u8u8", "onnxruntime", "qoperator", uint8_weights=True)):
        out = engines_copy / f"{v.name}.ort.onnx"
        bc.build_onnxruntime_engine(BuildConfig(engines=engines_copy, precision=Precision.int8), out,
                                    CalibrationRecord.read(engines_copy / "ghostnet.calib.json"), v)
        worst = qoperator_weight_code_max(onnx.load(str(out)))
        assert (worst is None) if v.uint8_weights else (0 < worst <= NO_OVERFLOW_WEIGHT_MAX)
    # and forced builds on that CPU pick a safe variant
    r = bc.build_cpu(BuildConfig(engines=engines_copy, precision=Precision.int8), "onnxruntime", lambda s: None,
                     cpu=zen3)
    assert json.loads(r.manifest.read_text())["variant"] == "onnxruntime-u8u8"


def test_uint8_weights_are_the_same_numbers(engines_copy: Path):
    from onnx import numpy_helper

    from ghostedge.backends.onnxruntime import _WEIGHT_INPUTS, quantize_for_cpu, to_uint8_weights
    from ghostedge.build_cpu import refined_float_graph

    cfg = BuildConfig(engines=engines_copy, precision=Precision.int8)
    s8 = quantize_for_cpu(refined_float_graph(cfg), CalibrationRecord.read(engines_copy / "ghostnet.calib.json"))
    u8 = to_uint8_weights(s8)
    a = {t.name: numpy_helper.to_array(t).astype(np.int32) for t in s8.graph.initializer}
    b = {t.name: numpy_helper.to_array(t) for t in u8.graph.initializer}
    n = 0
    for node in s8.graph.node:
        if node.op_type in _WEIGHT_INPUTS:
            w, z = (node.input[i] for i in _WEIGHT_INPUTS[node.op_type])
            assert b[w].dtype == np.uint8 and b[z].dtype == np.uint8
            np.testing.assert_array_equal(b[w].astype(np.int32) - b[z].astype(np.int32).reshape(
                (-1,) + (1,) * (b[w].ndim - 1) if b[z].size > 1 else ()), a[w] - a[z].reshape(
                (-1,) + (1,) * (a[w].ndim - 1) if a[z].size > 1 else ()))
            n += 1
    assert n > 5
    x = np.random.default_rng(0).standard_normal((4, 3, 32, 32)).astype(np.float32)
    got = ort_session(u8, threads=1).run(None, {INPUT_NAME: x})[0]
    assert np.isfinite(got).all() and got.shape[0] == 4


# ---------------------------------------------------------------------------------------------
# 3. the faithfulness check

def _flag_rate(n: int, p_b: float, p_c: float, draws: int = 1500, seed: int = 0) -> float:
    rng = np.random.default_rng(seed)
    bc = rng.multinomial(n, [p_b, p_c, 1 - p_b - p_c], size=draws)
    return float(np.mean([not faithfulness(int(b), int(c), n)[0] for b, c, _ in bc]))


def test_faithfulness_catches_a_two_point_loss_and_keeps_faithful_engines():
    n = SELECT_IMAGES
    for p_b, p_c in ((0.02, 0.0), (0.025, 0.005), (0.03, 0.01)):      # 2 points lost, more or less noise
        assert _flag_rate(n, p_b, p_c) >= 0.95, (p_b, p_c)
    for p in (0.0025, 0.005, 0.01, 0.02):                              # faithful: as often better as worse
        assert _flag_rate(n, p, p) <= FAITHFUL_ALPHA, p


def test_one_image_never_drops_an_engine():
    for n in (8, 64, 128, 512, SELECT_IMAGES):
        for c in range(0, 6):
            assert faithfulness(c + 1, c, n)[0], (n, c)
    ok, short, p = faithfulness(40, 4, 1024)
    assert not ok and short > FAITHFUL_TOL_PTS and p < 1e-6


# ---------------------------------------------------------------------------------------------
# 4. the images the choice is made on

def test_choice_never_checks_on_calibration_images(engines_dir: Path, image_folder: Path):
    from ghostedge.card import read_onnx_card

    rec = CalibrationRecord.read(engines_dir / "ghostnet.calib.json")
    info = read_onnx_card(engines_dir / "ghostnet.onnx")
    cfg = BuildConfig(engines=engines_dir, precision=Precision.int8, calib=image_folder)
    x, what = check_images(cfg, rec, info, 32)
    n_files = len(list(p for p in image_folder.rglob("*") if p.is_file()))
    assert what["real"] == n_files - len(rec.data.paths) > 0
    assert what["synthetic"] == SELECT_IMAGES - what["real"] and "synthetic" in what["note"]
    assert len(x) == SELECT_IMAGES
    # no check image is a calibration image
    from ghostedge.data import load_images, normalize

    cal = normalize(load_images([image_folder / p for p in rec.data.paths], info.preprocess, 32)[0],
                    info.preprocess)
    flat_cal = {c.tobytes() for c in cal}
    assert not any(xi.tobytes() in flat_cal for xi in x)


def test_mosaics_are_new_images_of_the_same_pixels():
    rng = np.random.default_rng(0)
    u8 = rng.integers(0, 256, (6, 16, 16, 3)).astype(np.uint8)
    m = mosaics(u8, 20, seed=1)
    assert m.shape == (20, 16, 16, 3) and m.dtype == np.uint8
    assert not any((mi == ui).all() for mi in m for ui in u8)
    assert set(np.unique(m)) <= set(np.unique(u8))


def test_the_cli_says_which_cpu_and_which_images(engines_copy: Path):
    from .test_cli import ge

    r = ge("build", "--int8", "--engines", str(engines_copy), "--batch", "1:1:2", "--threads", "1")
    assert r.returncode == 0, r.stderr
    assert "CPU:" in r.stderr and "synthetic" in r.stderr and "chose" in r.stderr


def test_the_probe_sees_what_the_kernels_do():
    """One QLinearConv whose exact sum overflows an int16 pair: the u8u8 kernels are exact on every CPU; the
    u8s8 ones are exact, or short of it where they add pairs in int16 (CPUs without VNNI)."""
    from ghostedge.backends.onnxruntime import u8s8_probe

    assert u8s8_probe(uint8_weights=True) == 200
    assert 0 < u8s8_probe() <= 200          # saturation can only lose magnitude (every pair clipped: ~101)
