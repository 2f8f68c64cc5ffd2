"""``build --input uint8``: the graph takes uint8 pixels and normalises them itself, exactly as data.normalize."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from ghostedge.build import Backend, BuildConfig, Precision, build
from ghostedge.card import InputSpec, ModelCard, read_onnx_card
from ghostedge.data import decode_images, find_images, normalize
from ghostedge.errors import GhostedgeError
from ghostedge.export import ort_session, to_onnx_proto
from ghostedge.input_uint8 import (
    NORMALISED,
    InputFormat,
    PixelFeed,
    engine_batch,
    input_format,
    pixels,
    uint8_input,
)

from .conftest import IMAGENETTE, needs_data, tiny_ghostnet
from .test_cli import ge

PRE = InputSpec(input_size=32, mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3))
U8 = InputFormat("uint8", "nchw")
NHWC = InputFormat("uint8", "nhwc")


def _pixels(n: int = 4, size: int = 32) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def fp32_proto() -> onnx.ModelProto:
    return to_onnx_proto(tiny_ghostnet(0), ModelCard(width=0.5, num_classes=3, input=PRE), 32)


@pytest.mark.parametrize("fmt", [U8, NHWC])
def test_uint8_graph_gives_the_float_graphs_logits(fp32_proto: onnx.ModelProto, fmt: InputFormat):
    u8 = _pixels()
    ref = ort_session(fp32_proto).run(None, {"input": normalize(u8, PRE)})[0]
    m = uint8_input(fp32_proto, PRE, fmt.layout)
    inp = m.graph.input[0]
    assert inp.name == "input" and inp.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    dims = [d.dim_value or d.dim_param for d in inp.type.tensor_type.shape.dim]
    assert dims == (["batch", "height", "width", 3] if fmt.layout == "nhwc" else ["batch", 3, "height", "width"])
    x = engine_batch(u8, PRE, fmt)
    assert x.dtype == np.uint8 and x.shape == fmt.shape(4, 32)
    got = ort_session(m).run(None, {"input": x})[0]
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)
    assert input_format(read_onnx_card(m)) == fmt           # the description records it
    assert input_format(read_onnx_card(fp32_proto)).uint8 is False


def test_the_prelude_is_cast_then_mean_std_before_the_stem_conv_not_folded_into_it(fp32_proto: onnx.ModelProto):
    """The stem conv pads with zeros: folded, a padded zero would mean pixel 0; before the conv it means the mean."""
    m = uint8_input(fp32_proto, PRE)
    ops = [n.op_type for n in m.graph.node[:3]]
    assert ops == ["Cast", "Sub", "Mul"]
    stem_w = {t.name: t for t in fp32_proto.graph.initializer}
    stem = next(n for n in m.graph.node if n.op_type == "Conv")
    assert stem.input[0] == NORMALISED
    # the stem's weights are the exported ones, unchanged
    np.testing.assert_array_equal(numpy_helper.to_array({t.name: t for t in m.graph.initializer}[stem.input[1]]),
                                  numpy_helper.to_array(stem_w[stem.input[1]]))
    inits = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}
    np.testing.assert_allclose(inits["input_mean_255"].ravel(), np.asarray(PRE.mean) * 255, rtol=1e-6)
    np.testing.assert_allclose(inits["input_inv_std_255"].ravel(), 1 / (np.asarray(PRE.std) * 255), rtol=1e-6)


def test_uint8_refuses_a_graph_that_already_takes_uint8(fp32_proto: onnx.ModelProto):
    with pytest.raises(GhostedgeError, match="not float32"):
        uint8_input(uint8_input(fp32_proto, PRE), PRE)
    with pytest.raises(GhostedgeError, match="layout"):
        InputFormat("uint8", "chw").check()


def test_qdq_graph_keeps_its_qdq_and_the_first_q_quantizes_the_normalised_tensor(engines_dir: Path):
    qdq = onnx.load(str(engines_dir / "ghostnet.int8.onnx"))
    pre = read_onnx_card(qdq).preprocess
    m = uint8_input(qdq, pre)
    q_before = [(n.name, list(n.input)) for n in qdq.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    q_after = [(n.name, list(n.input)) for n in m.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    first_q = next(n for n in qdq.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == "input")
    assert [(a, [NORMALISED if t == "input" else t for t in i]) for a, i in q_before] == q_after
    assert next(n for n in m.graph.node if n.name == first_q.name).input[0] == NORMALISED
    # the same function: the float-semantics Q/DQ session gives the same logits on the same pixels
    files = find_images(Path(json.loads((engines_dir / "ghostnet.calib.json").read_text())["data"]["folder"]))
    u8, _, _ = decode_images(files[:8], pre)
    a = ort_session(qdq, float_qdq=True).run(None, {"input": normalize(u8, pre)})[0]
    b = ort_session(m, float_qdq=True).run(None, {"input": engine_batch(u8, pre, U8)})[0]
    assert (a.argmax(1) == b.argmax(1)).all()
    np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-3 * float(np.abs(a).max()))


def test_pixels_undoes_normalize_exactly():
    u8 = _pixels(2)
    assert np.array_equal(pixels(normalize(u8, PRE), PRE), u8)


@pytest.mark.parametrize("backend,precision,fmt", [("onnxruntime", "fp32", U8), ("onnxruntime", "int8", NHWC),
                                                   ("openvino", "int8", NHWC), ("openvino", "fp32", U8)])
def test_cpu_engines_with_uint8_input(engines_copy: Path, image_folder: Path, backend: str, precision: str,
                                      fmt: InputFormat):
    from ghostedge.bench import open_runner

    kw = dict(engines=engines_copy, precision=Precision(precision), backend=Backend(backend), threads=1)
    flt = build(BuildConfig(**kw, out=engines_copy / f"f.{precision}.{'ort.onnx' if backend == 'onnxruntime' else 'ov.xml'}"))
    r = build(BuildConfig(**kw, input_format=fmt))
    man = json.loads(r.manifest.read_text())
    assert man["model"]["extra"]["input"] == fmt.to_dict()
    assert input_format(json.loads(flt.manifest.read_text())["model"]).uint8 is False
    pre = read_onnx_card(engines_copy / "ghostnet.onnx").preprocess
    u8, _, _ = decode_images(find_images(image_folder), pre)
    (fr, _), (ur, _) = open_runner(flt.engine, threads=1), open_runner(r.engine, threads=1)
    with fr, ur:
        a = fr.infer(normalize(u8, pre))
        b = ur.infer(engine_batch(u8, pre, fmt))
        c = PixelFeed(ur, pre, fmt).activate().infer(normalize(u8, pre))   # what bench feeds it
    assert (a.argmax(1) == b.argmax(1)).mean() >= 0.99 and np.array_equal(b, c)
    if precision == "fp32":
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_cpu_engine_choice_measures_uint8_candidates_on_pixels(engines_copy: Path):
    r = build(BuildConfig(engines=engines_copy, precision=Precision.fp32, backend=Backend.auto, batch=(1, 2, 2),
                          threads=1, input_format=NHWC))
    man = json.loads(r.manifest.read_text())
    assert man["model"]["extra"]["input"] == NHWC.to_dict()
    cands = man["selection"]["candidates"]
    assert cands and all(c["error"] is None and c["agreement_fp32"] == 100.0 for c in cands)


def test_bench_and_predict_feed_uint8_engines(engines_copy: Path, image_folder: Path):
    r = build(BuildConfig(engines=engines_copy, precision=Precision.fp32, backend=Backend.onnxruntime, threads=1,
                          input_format=NHWC))
    res = ge("bench", str(engines_copy / "ghostnet.onnx"), str(r.engine), "--batch", "1,4", "--iters", "2",
             "--warmup", "1", "--eval", str(image_folder), "--threads", "1", "--json")
    assert res.returncode == 0, res.stderr
    eng = json.loads(res.stdout)["engines"]
    assert eng[1]["agreement"] == 100.0 and eng[1]["throughput"]["4"] > 0
    a = json.loads(ge("predict", str(engines_copy / "ghostnet.onnx"), str(image_folder), "--json").stdout)
    b = json.loads(ge("predict", str(r.engine), str(image_folder), "--json").stdout)
    assert b["input"] == NHWC.to_dict() and a["input"]["dtype"] == "float32"
    assert [p["top"][0]["index"] for p in a["predictions"]] == [p["top"][0]["index"] for p in b["predictions"]]


def test_predict_refuses_an_engine_whose_input_is_not_what_its_description_says(engines_copy: Path,
                                                                                image_folder: Path, tmp_path: Path):
    from ghostedge.predict import PredictConfig, predict

    m = uint8_input(onnx.load(str(engines_copy / "ghostnet.onnx")), read_onnx_card(engines_copy / "ghostnet.onnx")
                    .preprocess)
    for p in m.metadata_props:   # an edited description: says float32
        if p.key == "ghostedge":
            d = json.loads(p.value)
            d["extra"].pop("input")
            p.value = json.dumps(d)
    bad = tmp_path / "lying.onnx"
    onnx.save(m, str(bad))
    with pytest.raises(GhostedgeError, match="takes a uint8 input .* description says float32"):
        predict(PredictConfig(model=bad, images=[image_folder]), lambda p: None)


def test_build_cli_input_options(engines_copy: Path):
    res = ge("build", "--engines", str(engines_copy), "--input", "float32", "--input-layout", "nhwc", "--fp32",
             "--backend", "onnxruntime")
    assert res.returncode == 2 and "--input-layout nhwc is for --input uint8" in res.stderr
    res = ge("build", "--engines", str(engines_copy), "--input", "int8", "--fp32", "--backend", "onnxruntime")
    assert res.returncode == 2 and "'int8': use float32 or uint8" in res.stderr
    res = ge("build", "--engines", str(engines_copy), "--input", "uint8", "--fp32", "--backend", "onnxruntime",
             "--frontend", "torch-tensorrt")
    assert res.returncode == 2 and "not by torch-tensorrt" in res.stderr


@needs_data
@pytest.mark.data
@pytest.mark.slow
def test_uint8_engine_agrees_with_the_float_engine_on_imagenette_val(tmp_path: Path):
    """The reference model's INT8 engine (ONNX Runtime, forced), uint8 vs float input, on every val image (FP32
    engines are compared to 1e-5 above: the prelude is normalize's arithmetic)."""
    from ghostedge.bench import open_runner
    from ghostedge.checkpoint import reference_weights_path
    from ghostedge.quantize import QuantizeConfig, quantize
    from ghostedge.stream import ImageSet, stream_logits

    calib = Path(__file__).resolve().parents[1] / "calib"
    eng = tmp_path / "e"
    quantize(QuantizeConfig(calib=calib, out=eng, weights=reference_weights_path(), num_images=32, batch=16,
                            threads=2))
    val = sorted((IMAGENETTE / "val").rglob("*.JPEG"))
    pre = read_onnx_card(eng / "ghostnet.onnx").preprocess
    for prec in (Precision.int8,):
        kw = dict(engines=eng, precision=prec, backend=Backend.onnxruntime, threads=2)
        flt = build(BuildConfig(**kw, out=eng / f"f.{prec.value}.ort.onnx"))
        u8 = build(BuildConfig(**kw, input_format=U8))
        (fr, _), (ur, _) = open_runner(flt.engine, threads=2), open_runner(u8.engine, threads=2)
        with fr, ur:
            res = stream_logits(ImageSet(val, None, "val"), pre, pre.input_size,
                                {"float": fr.infer, "uint8": PixelFeed(ur, pre, U8).activate().infer})
        agree = float((res.logits["float"].argmax(1) == res.logits["uint8"].argmax(1)).mean() * 100)
        print(f"{prec.value}: uint8-input agrees with float-input on {agree:.3f}% of {len(res.kept)} val images")
        assert len(res.kept) == len(val) and agree >= 99.9
