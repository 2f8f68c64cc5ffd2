"""CPU engines: OpenVINO backend, the choice by measurement, the ONNX Runtime builder's tested range."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ghostedge.build import Backend, BuildConfig, Precision, build
from ghostedge.errors import GhostedgeError
from ghostedge.export import ort_session

from .test_cli import ge


def _x(n: int = 4) -> np.ndarray:
    return np.random.default_rng(0).standard_normal((n, 3, 32, 32)).astype(np.float32)


def test_openvino_fp32_engine_matches_onnx_runtime(engines_copy: Path):
    from ghostedge.bench import open_runner

    r = build(BuildConfig(engines=engines_copy, precision=Precision.fp32, backend=Backend.openvino))
    assert r.engine.name == "ghostnet.fp32.ov.xml" and r.engine.with_suffix(".bin").is_file()
    man = json.loads(r.manifest.read_text())
    assert man["backend"] == "openvino" and man["precision_hint"] == "f32" and man["model"]["preprocess"]
    runner, _ = open_runner(r.engine)
    with runner:
        for b in (1, 3, 4):   # dynamic batch
            y = runner.infer(_x(b))
            ref = ort_session(engines_copy / "ghostnet.onnx").run(None, {"input": _x(b)})[0]
            np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-4)
    assert runner.backend == "openvino" and runner.precision == "fp32"


def test_openvino_int8_engine_runs_the_qdq_graph_in_int8(engines_copy: Path):
    from ghostedge.inspect import inspect_path

    r = build(BuildConfig(engines=engines_copy, precision=Precision.int8, backend=Backend.openvino))
    rows = inspect_path(r.engine)
    convs = [x for x in rows if x["type"] == "Convolution"]
    assert convs and sum(x["precision"] == "int8" for x in convs) >= len(convs) // 2
    res = ge("inspect", str(r.engine), "--json")
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["layers"]


def test_build_on_a_cpu_chooses_by_measurement_and_records_every_candidate(engines_copy: Path):
    said = []
    r = build(BuildConfig(engines=engines_copy, precision=Precision.int8, backend=Backend.auto, batch=(1, 4, 4),
                          threads=1), say=said.append)
    man = json.loads(r.manifest.read_text())
    sel = man["selection"]
    names = [c["name"] for c in sel["candidates"]]
    import openvino as ov

    from ghostedge.build_cpu import int8_variants
    from ghostedge.cpu import host_cpu

    bf16 = "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    assert names == [v.name for v in int8_variants(host_cpu(), True, bf16)]   # this CPU kind's candidates
    assert sel["batches"] == [1, 4] and sel["held_out_images"] > 0 and sel["cpu"]["name"]
    chosen = next(c for c in sel["candidates"] if c["name"] == sel["chosen"])
    # faithful, or (a CPU where every candidate falls short) the most faithful, with the shortfall recorded
    assert (chosen["faithful"] or sel["shortfall"]["engine"] == chosen["name"]) and chosen["backend"] == r.backend
    faithful = [c for c in sel["candidates"] if c["faithful"] and not c["error"]]
    geo = lambda c: np.exp(np.mean(np.log(list(c["throughput"].values()))))  # noqa: E731
    if faithful:
        assert geo(chosen) == max(geo(c) for c in faithful)       # the fastest faithful one won
    assert all(set(c["throughput"]) == {"1", "4"} for c in faithful)
    assert any("candidate" in s for s in said) and any("chose" in s for s in said)
    assert not [p for p in engines_copy.iterdir() if p.name.startswith(".select")]   # no leftovers


def test_unfaithful_candidates_are_dropped(engines_copy: Path, monkeypatch: pytest.MonkeyPatch):
    import ghostedge.build_cpu as bc

    real_open = bc._open

    def broken(c, threads):  # every candidate now predicts the FP32 model's least likely class
        r = real_open(c, threads)
        infer = r.infer_impl
        r.infer_impl = lambda x: -infer(x)
        return r

    monkeypatch.setattr(bc, "_open", broken)
    monkeypatch.setattr(bc, "SELECT_SECONDS", 0.05)
    said: list[str] = []
    # never stop the job because no candidate is perfect: the most faithful is built, the shortfall recorded
    r = build(BuildConfig(engines=engines_copy, precision=Precision.int8, backend=Backend.auto, batch=(1, 2, 2)),
              say=said.append)
    sel = json.loads(r.manifest.read_text())["selection"]
    assert not any(c["faithful"] for c in sel["candidates"] if not c["error"])
    assert sel["shortfall"]["engine"] == sel["chosen"] and sel["shortfall"]["shortfall_pts"] > 0.3
    worked = [c for c in sel["candidates"] if not c["error"]]
    assert sel["shortfall"]["shortfall_pts"] == min(c["shortfall_pts"] for c in worked)   # the most faithful
    assert sel["shortfall"]["reason"] and any("warning: no CPU engine kept" in s for s in said)


def test_selection_needs_the_calibration_images(engines_copy: Path, tmp_path: Path):
    with pytest.raises(GhostedgeError, match="--calib DIR"):
        build(BuildConfig(engines=engines_copy, precision=Precision.int8, backend=Backend.auto,
                          calib=tmp_path / "gone"))


def test_cpu_int8_keeps_the_calibrated_ranges_not_the_raw_min_max():
    from ghostedge.backends.onnxruntime import calibrated_ranges
    from ghostedge.record import TensorRange

    r = calibrated_ranges({"relu": TensorRange.from_dict({"min": 0.0, "max": 40.0, "amax": 6.0}),
                           "signed": TensorRange.from_dict({"min": -9.0, "max": 3.0, "amax": 5.0})})
    assert r == {"relu": (0.0, 6.0), "signed": (-5.0, 3.0)}


def test_onnxruntime_builder_refuses_an_untested_onnxruntime(monkeypatch: pytest.MonkeyPatch):
    import onnxruntime

    from ghostedge.backends.onnxruntime import ORT_TESTED, check_ort_version

    check_ort_version(onnxruntime.__version__)     # the installed one is inside the tested range
    for v in ("1.16.3", f"{ORT_TESTED[1][0]}.{ORT_TESTED[1][1]}.0", "2.0.0"):
        with pytest.raises(GhostedgeError, match="outside the range"):
            check_ort_version(v)
    pyproject = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
    lo, hi = ORT_TESTED
    assert f'"onnxruntime>={lo[0]}.{lo[1]},<{hi[0]}.{hi[1]}"' in pyproject


def test_bench_table_fits_80_columns(engines_copy: Path, image_folder: Path):
    r = ge("bench", str(engines_copy / "ghostnet.onnx"), "--batch", "1,8", "--iters", "2", "--warmup", "1",
           "--eval", str(image_folder), "--threads", "1", env={"COLUMNS": "80"})
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert max(len(x) for x in lines) <= 80
    assert "…" not in r.stdout and "img/s" in r.stdout and "agree %" in r.stdout


def test_cpu_qdq_variant_keeps_the_ranges_and_leaves_the_tensorrt_graph_alone(engines_copy: Path):
    import onnx
    from onnx import numpy_helper

    from ghostedge.build_cpu import cpu_qdq_variant
    from ghostedge.record import CalibrationRecord

    before = (engines_copy / "ghostnet.int8.onnx").read_bytes()
    rec = CalibrationRecord.read(engines_copy / "ghostnet.calib.json")
    v = cpu_qdq_variant(onnx.load(str(engines_copy / "ghostnet.int8.onnx")), rec)
    inits = {t.name: numpy_helper.to_array(t) for t in v.graph.initializer}
    seen = 0
    for n in v.graph.node:
        if n.op_type != "QuantizeLinear" or n.input[0] not in rec.tensors:
            continue
        t = rec.tensors[n.input[0]]
        scale, zp = float(inits[n.input[1]]), inits[n.input[2]]
        if t.min >= 0:
            assert zp.dtype == np.uint8 and abs(scale * 255 - t.amax) < 1e-5 * max(1.0, t.amax)
        else:
            assert zp.dtype == np.int8 and abs(scale * 127 - t.amax) < 1e-5 * max(1.0, t.amax)
        seen += 1
    assert seen > 10
    assert not [n for n in v.graph.node if n.op_type == "Concat" and any("dequantized" in i for i in n.input)]
    build(BuildConfig(engines=engines_copy, precision=Precision.int8, backend=Backend.openvino))
    assert (engines_copy / "ghostnet.int8.onnx").read_bytes() == before   # TensorRT's Q/DQ ONNX untouched
