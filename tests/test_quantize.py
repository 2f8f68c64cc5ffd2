"""Quantization: TensorRT's Q/DQ rules checked on the graph, calibrators, the record and the cache."""

from __future__ import annotations

import json
import struct
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from ghostedge.calibrate import amax_entropy, amax_mse, amax_percentile
from ghostedge.errors import GhostedgeError
from ghostedge.quantize import (CACHE_NAME, INT8_NAME, RECORD_NAME, QuantizeConfig, calib_cache_text,
                                parse_calib_cache, quantize, trt_version_int)

from .conftest import make_image_folder


def _graph(engines: Path):
    m = onnx.load(str(engines / INT8_NAME))
    inits = {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}
    prod = {o: n for n in m.graph.node for o in n.output}
    cons = defaultdict(list)
    for n in m.graph.node:
        for t in n.input:
            cons[t].append(n)
    return m, inits, prod, cons


def _dq_scale(dq: onnx.NodeProto, inits: dict) -> float:
    return float(inits[dq.input[1]])


def test_qdq_graph_follows_tensorrt_rules(engines_dir: Path):
    m, inits, prod, cons = _graph(engines_dir)
    nodes = m.graph.node
    qs = [n for n in nodes if n.op_type == "QuantizeLinear"]
    dqs = [n for n in nodes if n.op_type == "DequantizeLinear"]
    assert qs and len(qs) == len(dqs)
    # every Q feeds exactly one DQ with the same scale / zero point (no dangling Q or DQ)
    for q in qs:
        users = cons[q.output[0]]
        assert len(users) == 1 and users[0].op_type == "DequantizeLinear"
        assert users[0].input[1] == q.input[1] and users[0].input[2] == q.input[2]
    # symmetric int8: all zero points are int8 zeros
    for q in qs:
        zp = inits[q.input[2]]
        assert zp.dtype == np.int8 and not zp.any()
    # weights: per-channel on axis 0 for every quantized Conv / Gemm; activations per tensor
    convs = [n for n in nodes if n.op_type in ("Conv", "Gemm")]
    quantized_convs = [n for n in convs if prod.get(n.input[1]) is not None
                       and prod[n.input[1]].op_type == "DequantizeLinear"]
    assert len(quantized_convs) >= len(convs) - 20  # SE convs stay in float by default
    for n in quantized_convs:
        dq = prod[n.input[1]]
        axis = [a.i for a in dq.attribute if a.name == "axis"]
        w = inits[prod[dq.input[0]].input[0]]
        assert axis == [0] and inits[dq.input[1]].shape == (w.shape[0],)
        act = prod.get(n.input[0])
        assert act is not None and act.op_type == "DequantizeLinear", n.name
        assert inits[act.input[1]].shape == ()
    # residual Add, per block (issue 18 placement): in the downsampling blocks the shortcut ends in a 1x1 conv,
    # whose output reaches the Add without Q/DQ (the add fuses into that conv: TensorRT's Q/DQ placement
    # recommendations, ModelOpt's build_non_residual_input_map) while the Ghost-module side is quantized; in the
    # ordinary blocks (Concat + identity, no conv to fuse into) both inputs are quantized
    adds = [n for n in nodes if n.op_type == "Add" and all(t not in inits for t in n.input)]
    kinds = set()
    for n in adds:
        srcs = [prod[t].op_type for t in n.input]
        if "Conv" in srcs:
            assert sorted(srcs) == ["Conv", "DequantizeLinear"], (n.name, srcs)
            raw = n.input[srcs.index("Conv")]
            assert len(cons[raw]) == 1 and prod[raw].input[1] in {d.output[0] for d in dqs}   # an INT8 1x1 conv
            kinds.add("downsampling")
        else:
            assert srcs == ["DequantizeLinear", "DequantizeLinear"], (n.name, srcs)
            kinds.add("ordinary")
    assert kinds == {"downsampling", "ordinary"}
    # Concat: quantized inputs share one scale (so TensorRT needs no requantization)
    concats = [n for n in nodes if n.op_type == "Concat"]
    quantized_concats = 0
    for n in concats:
        ins = [prod.get(t) for t in n.input]
        if all(p is not None and p.op_type == "DequantizeLinear" for p in ins):
            quantized_concats += 1
            scales = {_dq_scale(p, inits) for p in ins}
            assert len(scales) == 1, n.name
            users = cons[n.output[0]]
            for u in users:  # and the concat output, where quantized, uses the same scale
                if u.op_type == "QuantizeLinear":
                    assert float(inits[u.input[1]]) in scales
    assert quantized_concats >= len(concats) // 2
    # no Q/DQ anywhere else: every DQ output feeds a Conv, Gemm, Add or Concat
    for dq in dqs:
        for u in cons[dq.output[0]]:
            assert u.op_type in ("Conv", "Gemm", "Add", "Concat"), (dq.name, u.op_type)


def test_record_and_cache_are_consistent(engines_dir: Path):
    rec = json.loads((engines_dir / RECORD_NAME).read_text())
    fp32 = onnx.load(str(engines_dir / "ghostnet.onnx"))
    tensor_names = {o for n in fp32.graph.node for o in n.output} | {"input"}
    assert set(rec["tensors"]) == tensor_names  # names TensorRT sees after parsing the FP32 ONNX
    for t in rec["tensors"].values():
        assert t["min"] <= t["max"] and t["amax"] <= max(abs(t["min"]), abs(t["max"])) + 1e-6
    assert rec["data"]["fingerprint"] and rec["model"]["fingerprint"] and rec["tools"]["onnxruntime"]
    header, scales = parse_calib_cache((engines_dir / CACHE_NAME).read_text())
    assert header == "TRT-8502-EntropyCalibration2"   # JetPack 5.1's TensorRT, unless a target says otherwise
    # the cache names what the Q/DQ graph quantizes (issue 18 item 4): every Q/DQ activation, no float-layer tensor
    q = onnx.load(str(engines_dir / "ghostnet.int8.onnx"))
    q_inits = {i.name for i in q.graph.initializer}
    qdq_acts = {n.input[0] for n in q.graph.node if n.op_type == "QuantizeLinear" and n.input[0] not in q_inits}
    assert qdq_acts <= set(scales) <= tensor_names
    # the squeeze-excite branch runs in float: none of its tensors but the gated output the next conv quantizes
    se = {o for n in fp32.graph.node if "/se/" in n.name for o in n.output} - qdq_acts
    assert se and not se & set(scales)
    for name, s in scales.items():
        assert s == pytest.approx(max(rec["tensors"][name]["amax"], 1e-8) / 127.0, rel=1e-6)
    # hex of the big-endian float32 bits, as TensorRT writes them
    line = next(ln for ln in (engines_dir / CACHE_NAME).read_text().splitlines() if ln.startswith("input: "))
    assert struct.unpack(">f", bytes.fromhex(line.split(": ")[1]))[0] == pytest.approx(scales["input"])


def test_record_reads_back_what_it_wrote_and_older_records(engines_dir: Path, tmp_path: Path):
    from ghostedge.record import CalibrationRecord

    raw = json.loads((engines_dir / RECORD_NAME).read_text())
    rec = CalibrationRecord.read(engines_dir / RECORD_NAME)
    assert rec.to_dict() == raw       # the typed record is the file, key for key
    assert rec.data.paths and rec.model_fingerprint == raw["model"]["fingerprint"]
    assert rec.tensors["input"].amax == raw["tensors"]["input"]["amax"]
    rec.write(tmp_path / "again.json")
    assert json.loads((tmp_path / "again.json").read_text()) == raw
    # a record from before the file list, the implicit-INT8 and refinement sections and the amax per tensor
    old = {k: v for k, v in raw.items() if k not in ("implicit_int8", "refinement", "tools", "quantization")}
    old["data"] = {k: v for k, v in raw["data"].items() if k != "paths"}
    old["tensors"] = {k: {"min": v["min"], "max": v["max"]} for k, v in raw["tensors"].items()}
    (tmp_path / "old.json").write_text(json.dumps(old))
    o = CalibrationRecord.read(tmp_path / "old.json")
    assert o.data.paths is None and o.implicit_int8 is None and o.excluded_nodes == raw["excluded_nodes"]
    t = raw["tensors"]["input"]
    assert o.tensors["input"].amax == max(abs(t["min"]), abs(t["max"]))
    (tmp_path / "bad.json").write_text(json.dumps({"format": "something else", "tensors": {}}))
    with pytest.raises(GhostedgeError, match="not a ghostedge calibration record"):
        CalibrationRecord.read(tmp_path / "bad.json")


def test_setting_errors_name_the_setting_and_the_cli_names_its_flag(tmp_path: Path, image_folder: Path):
    from ghostedge.cli import flag_for
    from ghostedge.errors import SettingError
    from ghostedge.pipeline import PipelineSettings, pipeline

    with pytest.raises(SettingError) as e:
        quantize(QuantizeConfig(calib=image_folder, out=tmp_path / "q", batch=0))
    assert e.value.setting == "batch" and "--" not in str(e.value) and str(e.value) == "batch must be at least 1"
    assert e.value.render(flag_for) == "--batch must be at least 1"
    assert e.value.renamed({"batch": "calib_batch"}).render(flag_for) == "--calib-batch must be at least 1"
    with pytest.raises(SettingError) as e:
        pipeline(PipelineSettings(calib=image_folder, engines=tmp_path / "p", max_drop=1.0))
    assert e.value.setting == "max_drop" and "--" not in str(e.value)
    assert e.value.render(flag_for).startswith("--max-drop needs --eval")
    assert not (tmp_path / "q").exists() and not (tmp_path / "p").exists()


def test_trt_version_stamp():
    assert trt_version_int("8.6.1") == 8601
    assert trt_version_int("8.5.2") == 8502
    assert trt_version_int("10.3.0") == 100300
    assert calib_cache_text({"x": 127.0}, "10.3.0").startswith("TRT-100300-EntropyCalibration2\nx: 3f800000")


def test_amax_methods_on_a_known_histogram():
    rng = np.random.default_rng(0)
    x = np.abs(np.concatenate([rng.normal(0, 1, 200_000), [40.0]]))
    hist, _ = np.histogram(x, bins=2048, range=(0, x.max()))
    pct = amax_percentile(hist, x.max(), 99.99)
    assert 3.0 < pct < 5.0  # the outlier at 40 is clipped
    assert pct < amax_mse(hist, x.max()) < 40.0  # MSE weighs the outlier's clipping error
    assert 2.0 < amax_entropy(hist, x.max()) < 20.0
    assert amax_percentile(hist, x.max(), 100.0) == pytest.approx(x.max(), rel=1e-3)


def _entropy(pk: np.ndarray, qk: np.ndarray) -> float:
    """scipy.stats.entropy(pk, qk): both normalized, sum of rel_entr (inf where pk > 0 and qk = 0)."""
    pk, qk = pk / pk.sum(), qk / qk.sum()
    with np.errstate(divide="ignore", invalid="ignore"):
        return float(np.where(pk > 0, np.where(qk > 0, pk * np.log(pk / qk), np.inf), 0.0).sum())


def _reference_entropy_amax(calib_hist, calib_bin_edges, num_bits=8, unsigned=False, stride=1, start_bin=128):
    """ModelOpt's _compute_amax_entropy (modelopt/torch/quantization/calib/histogram.py at 5a4242f, the code
    pytorch-quantization's EntropyCalibration came from), transcribed line by line; scipy's entropy above."""
    bins = calib_hist[:].copy()
    bins[0] = bins[1]
    divergences = []
    nbins = 1 << (num_bits - 1 + int(unsigned))
    starting = start_bin
    stop = len(bins)
    new_density_counts = np.zeros(nbins, dtype=np.float64)
    for i in range(starting, stop + 1, stride):
        new_density_counts.fill(0)
        space = np.linspace(0, i, num=nbins + 1)
        digitized_space = np.digitize(range(i), space) - 1
        digitized_space[bins[:i] == 0] = -1
        for idx, digitized in enumerate(digitized_space):
            if digitized != -1:
                new_density_counts[digitized] += bins[idx]
        counter = Counter(digitized_space)
        for key, val in counter.items():
            if key != -1:
                new_density_counts[key] = new_density_counts[key] / val
        new_density = np.zeros(i, dtype=np.float64)
        for idx, digitized in enumerate(digitized_space):
            if digitized != -1:
                new_density[idx] = new_density_counts[digitized]
        reference_density = np.array(bins[: len(digitized_space)])
        reference_density[-1] += np.sum(bins[i:])
        divergences.append(_entropy(reference_density, new_density))
    divergences = np.array(divergences)
    last_argmin = len(divergences) - 1 - np.argmin(divergences[::-1])
    return float(calib_bin_edges[last_argmin * stride + starting])


def test_entropy_amax_is_the_reference_entropy_calibration():
    rng = np.random.default_rng(0)
    x = np.abs(np.concatenate([rng.normal(0, 1, 200_000), [40.0]]))     # Gaussian plus one outlier
    hist, edges = np.histogram(x, bins=2048, range=(0, x.max()))
    want = _reference_entropy_amax(hist, edges)
    assert amax_entropy(hist, x.max()) == pytest.approx(want, rel=1e-12)
    assert want == pytest.approx(4.2773, abs=1e-4)   # where adding 20*p for P > 0, Q = 0 picked 5.31
    for seed, kind in enumerate(["outliers", "relu", "heavy", "t3", "outliers", "relu"]):   # smaller histograms
        r = np.random.default_rng(seed)
        v = {"outliers": lambda: np.concatenate([np.abs(r.normal(0, 1, 20000)), r.uniform(5, 30, 3)]),
             "relu": lambda: np.maximum(r.normal(0, 1, 20000), 0),
             "heavy": lambda: r.exponential(1, 5000) ** 2, "t3": lambda: np.abs(r.standard_t(3, 3000))}[kind]()
        h, e = np.histogram(v, bins=256 + 64 * seed, range=(0, v.max()))
        for stride in (1, 3):
            assert amax_entropy(h, v.max(), stride=stride) == pytest.approx(
                _reference_entropy_amax(h, e, stride=stride), rel=1e-12), (kind, seed, stride)


def test_drift_is_reported_and_int8_stays_close(engines_dir: Path):
    rep = json.loads((engines_dir / "ghostnet.quant.json").read_text())
    d = rep["drift"]
    assert d["n"] > 0 and 0 <= d["agreement"] <= 100 and d["cosine"] > 0.9
    assert "ONNX Runtime" in rep["measured_with"]


def test_max_drop_search_tries_the_measured_most_damaging_layers(tmp_path: Path, tiny_weights: Path,
                                                                 image_folder: Path, monkeypatch: pytest.MonkeyPatch):
    import ghostedge.quantize as qz
    from ghostedge.drift import GateVerdict

    # the tiny random model agrees 100% with FP32, so the gate is made to fail throughout: the search must
    # try the ranked layers in order (at most MAX_SEARCH_TRIES), keep those that bring the drift images
    # closer to FP32, and the result must say the gate still fails
    monkeypatch.setattr(qz, "judge", lambda d, budget: GateVerdict(True, True, "forced"))
    monkeypatch.setattr(qz, "MAX_SEARCH_TRIES", 3)
    res = quantize(QuantizeConfig(calib=image_folder, out=tmp_path, weights=tiny_weights, num_images=12, batch=4,
                                  holdout=6, threads=1, max_drop=1.0))
    fp32 = onnx.load(str(tmp_path / "ghostnet.onnx"))
    ranked = [r["node"] for r in res.sensitivity]
    assert ranked and set(ranked) <= set(qz.quantizable_nodes(fp32)) and not any("/se/" in n for n in ranked)
    gains = [r["kl_gain"] for r in res.sensitivity]
    assert gains == sorted(gains, reverse=True)
    tried = [s["node"] for s in res.mixed_precision_steps[1:]]
    assert tried == [r["node"] for r in res.sensitivity if r["kl_gain"] > 0][:3]
    kl = res.mixed_precision_steps[0]["kl"]
    kept = []
    for st in res.mixed_precision_steps[1:]:
        assert st["kept"] == (st["kl"] < kl)
        if st["kept"]:
            kl = st["kl"]
            kept.append(st["node"])
    assert res.gate["fails"] and [n for n in res.excluded if "/se/" not in n] == kept
    # the layers were chosen on one half of the 6 held-out images, the verdict judged on the other half
    assert res.mixed_precision_steps[0]["images"] == 6
    assert all(st["images"] == 3 for st in res.mixed_precision_steps[1:])
    sr = res.gate["search"]
    assert sr["search_images"] == 3
    if kept:
        assert res.drift.n == 3 and sr["verdict_images"] == 3 and sr["held_out"]
        assert "3 verdict images" in res.drift_set and "the other 3 chose" in res.drift_set
    else:                                        # nothing chosen: the first graph, judged on every image
        assert res.drift.n == 6 and not sr["held_out"]
    m = onnx.load(str(tmp_path / INT8_NAME))
    by_name = {n.name: n for n in m.graph.node}
    for node in kept:
        assert not any(t.endswith("_dequantized") for t in by_name[node].input), node


def test_search_and_verdict_halves_are_disjoint_and_balanced():
    from ghostedge.quantize import search_verdict_split

    labels = np.repeat(np.arange(10), [50, 51, 49, 50, 50, 10, 90, 50, 50, 50])
    s, v = search_verdict_split(len(labels), labels, seed=0)
    assert not set(s) & set(v) and set(s) | set(v) == set(range(len(labels)))
    assert abs(len(s) - len(v)) <= 1
    for c in range(10):                          # each class split evenly between the halves
        assert abs(int((labels[s] == c).sum()) - int((labels[v] == c).sum())) <= 1
    s2, v2 = search_verdict_split(len(labels), labels, seed=0)
    assert (s == s2).all() and (v == v2).all()   # deterministic per seed
    s, v = search_verdict_split(7, None, seed=1)
    assert sorted(np.concatenate([s, v])) == list(range(7))


@pytest.mark.parametrize("case", ["missing", "empty", "no_images", "too_few", "bad_eval"])
def test_bad_calibration_input_is_one_clear_error_and_writes_nothing(tmp_path: Path, tiny_weights: Path,
                                                                     image_folder: Path, case: str):
    out = tmp_path / "out"
    calib = tmp_path / "calib"
    eval_dir = None
    if case == "missing":
        calib = tmp_path / "nope"
    elif case == "empty":
        calib.mkdir()
    elif case == "no_images":
        calib.mkdir()
        (calib / "notes.txt").write_text("hi")
    elif case == "too_few":
        make_image_folder(calib, per_class=1)
    elif case == "bad_eval":
        calib = image_folder
        eval_dir = make_image_folder(tmp_path / "ev", per_class=1, classes=["n99999999"])
    with pytest.raises(GhostedgeError) as e:
        quantize(QuantizeConfig(calib=calib, out=out, weights=tiny_weights, num_images=12, batch=8, eval_dir=eval_dir,
                                threads=1))
    assert e.value.exit_code == 2
    assert not out.exists() or not any(out.iterdir())


def test_unreadable_images_are_skipped_and_counted(tmp_path: Path, tiny_weights: Path):
    calib = make_image_folder(tmp_path / "calib", per_class=8)
    (calib / WN0 / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    with pytest.warns(UserWarning, match="skipped 1 unreadable"):
        res = quantize(QuantizeConfig(calib=calib, out=tmp_path / "o", weights=tiny_weights, num_images=25, batch=4,
                                      holdout=0, threads=1))
    assert res.skipped_images == 1 and res.num_images == 24


WN0 = "n01440764"


def test_build_refuses_a_record_made_for_other_weights(engines_copy: Path):
    from ghostedge.build import Backend, BuildConfig, Precision, build

    rec_path = engines_copy / RECORD_NAME
    rec = json.loads(rec_path.read_text())
    rec["model"]["fingerprint"] = "0123456789abcdef"
    rec_path.write_text(json.dumps(rec))
    for be in (Backend.onnxruntime, Backend.openvino, Backend.auto):
        with pytest.raises(GhostedgeError, match="calibrated for other weights"):
            build(BuildConfig(engines=engines_copy, precision=Precision.int8, backend=be))
    assert not [p for p in engines_copy.iterdir() if ".ort." in p.name or ".ov." in p.name]


def test_implicit_int8_is_the_measured_model(engines_dir: Path):
    """Issue 18 item 4: the implicit-INT8 path (legacy cache) builds from ghostnet.implicit.onnx, the Q/DQ graph's
    float twin: its quantized weights are the Q/DQ graph's int8 grid points, its float layers (SE, --max-drop
    exclusions) keep the Q/DQ graph's float weights, and the cache names no tensor of a float layer."""
    from ghostedge.qdq import QMAX
    from ghostedge.quantize import IMPLICIT_NAME

    q = onnx.load(str(engines_dir / "ghostnet.int8.onnx"))
    imp = onnx.load(str(engines_dir / IMPLICIT_NAME))
    assert not [n for n in imp.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    qi = {i.name: numpy_helper.to_array(i) for i in q.graph.initializer}
    ii = {i.name: numpy_helper.to_array(i) for i in imp.graph.initializer}
    prod = {o: n for n in q.graph.node for o in n.output}
    checked = off = total = 0
    for n in q.graph.node:
        if n.op_type not in ("Conv", "Gemm"):
            continue
        w_src = n.input[1]
        dq = prod.get(w_src)
        if dq is not None and dq.op_type == "DequantizeLinear":
            w_name = prod[dq.input[0]].input[0]
            scale = qi[dq.input[1]].reshape(-1, *([1] * (qi[w_name].ndim - 1)))
            want = np.clip(np.round(qi[w_name] / scale), -QMAX, QMAX) * scale
            np.testing.assert_allclose(ii[w_name], want, rtol=0, atol=1e-7)
            # TensorRT's implicit per-channel scale (max |w| / 127) gives the same grid where a channel reaches 127;
            # the record says in how many it does not (not the same engine there)
            off += int((np.abs(np.round(ii[w_name] / scale)).reshape(len(scale), -1).max(1) < QMAX).sum())
            total += len(scale)
            checked += 1
        else:   # a float layer: the very weights the Q/DQ graph runs in float
            np.testing.assert_array_equal(ii[w_src], qi[w_src])
    assert checked
    rec = json.loads((engines_dir / RECORD_NAME).read_text())["implicit_int8"]
    assert rec["onnx"] == IMPLICIT_NAME and rec["weight_channels_off_grid"] == [off, total] and "not the same" in rec["note"]
    # and quantize's FP32 export differs from it (the refined weights are what was measured)
    f = onnx.load(str(engines_dir / "ghostnet.onnx"))
    fi = {i.name: numpy_helper.to_array(i) for i in f.graph.initializer}
    fw = {n.name: fi[n.input[1]] for n in f.graph.node if n.op_type == "Conv"}
    iw = {n.name: ii[n.input[1]] for n in imp.graph.node if n.op_type == "Conv"}
    assert set(fw) == set(iw) and any(not np.array_equal(fw[k], iw[k]) for k in fw)
