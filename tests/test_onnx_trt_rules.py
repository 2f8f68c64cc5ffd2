"""Every ONNX handed to TensorRT obeys onnx-tensorrt's documented rules for the versions it targets.

Rules (onnx-tensorrt's operator support notes and TensorRT's "Working with quantized types"):
- the opset is inside the parser's range: TensorRT 8.5 / 8.6 read opsets 7-17; the FP16-typed graphs
  (opset 17, or 19 with Q/DQ for FP16 scales) go only to TensorRT 10.12+ (strongly typed), whose parser
  reads opsets up to 20;
- the IR version matches the opset (opset 17 -> IR 8, 19 -> IR 9);
- Q/DQ scales are constant initializers and strictly positive, and in FP16-typed graphs no smaller than
  FP16's smallest normal (2**-14), so they cannot underflow to zero;
- zero points are 0 and int8 (symmetric);
- per-channel Q/DQ (a scale vector) names its axis explicitly; per-tensor ones have a scalar scale;
- in a strongly typed (FP16) graph no FP32 tensor meets an FP16 one: strict ONNX type inference passes
  and every float tensor between the two Casts is FP16 (but a Resize's roi / scales, which ONNX types
  tensor(float) in every opset: parameters, not activations);
- Resize (GhostNetV2 / V3's attention gate): nearest, asymmetric, floor, with constant scales and no
  shape-computed sizes: the form every parser from 8.5 on imports as a static IResizeLayer;
- a uint8-input graph (``build --input uint8``; TensorRT 8.6+ casts uint8) has its uint8 input feed only a
  Cast to float, then the mean/std as constant Sub/Mul, before and outside every Q/DQ pair.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from ghostedge.export import FP16_MIN_NORMAL, fp16_onnx, resize_parameters

from .conftest import tiny_ghostnet

#: (first opset, last opset) each TensorRT ONNX parser reads; IR version per opset
PARSER_OPSETS = {"8.5": (7, 17), "8.6": (7, 17), "10.x": (9, 20), "11.x": (9, 20)}
IR_FOR_OPSET = {17: 8, 18: 8, 19: 9, 20: 9}


def _opset(m: onnx.ModelProto) -> int:
    return next(o.version for o in m.opset_import if o.domain in ("", "ai.onnx"))


def check_trt_rules(m: onnx.ModelProto, targets: tuple[str, ...], fp16_typed: bool) -> None:
    op = _opset(m)
    for t in targets:
        lo, hi = PARSER_OPSETS[t]
        assert lo <= op <= hi, f"opset {op} outside TensorRT {t}'s parser range {lo}-{hi}"
    assert m.ir_version >= IR_FOR_OPSET[op], f"IR version {m.ir_version} too old for opset {op}"
    inits = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}
    for n in m.graph.node:
        if n.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            continue
        assert n.input[1] in inits, f"{n.name}: scale is not a constant initializer"
        scale = inits[n.input[1]]
        assert (scale > 0).all(), f"{n.name}: scale not strictly positive"
        if fp16_typed:
            assert scale.dtype == np.float16 and (scale >= np.float16(FP16_MIN_NORMAL)).all(), n.name
        assert len(n.input) == 3 and n.input[2] in inits, f"{n.name}: zero point must be an initializer"
        zp = inits[n.input[2]]
        assert zp.dtype == np.int8 and not zp.any(), f"{n.name}: zero point must be int8 zeros"
        axis = {a.name: a.i for a in n.attribute}.get("axis")
        if scale.ndim == 1 and scale.size > 1:
            assert axis is not None, f"{n.name}: per-channel Q/DQ without an explicit axis"
        else:
            assert scale.ndim == 0, f"{n.name}: per-tensor scale must be a scalar"
    for n in m.graph.node:
        if n.op_type != "Resize":
            continue
        attrs = {a.name: (a.s.decode() if a.type == onnx.AttributeProto.STRING else a.i) for a in n.attribute}
        assert attrs.get("mode") == "nearest" and attrs.get("coordinate_transformation_mode") == "asymmetric" \
            and attrs.get("nearest_mode") == "floor", f"{n.name}: not PyTorch's nearest ({attrs})"
        assert len(n.input) >= 3 and n.input[2] in inits and (len(n.input) < 4 or not n.input[3]), \
            f"{n.name}: scales must be a constant initializer, sizes absent (no shape-computed resize)"
        assert inits[n.input[2]].dtype == np.float32 and (inits[n.input[2]] > 0).all(), n.name
    if fp16_typed:
        inferred = onnx.shape_inference.infer_shapes(m, check_type=True, strict_mode=True)
        types = {v.name: v.type.tensor_type.elem_type for v in
                 list(inferred.graph.value_info) + list(inferred.graph.output) + list(inferred.graph.input)}
        types.update({t.name: t.data_type for t in m.graph.initializer})
        inp, outp = m.graph.input[0].name, m.graph.output[0].name
        params = resize_parameters(m)
        float32 = [k for k, v in types.items() if v == onnx.TensorProto.FLOAT and k not in (inp, outp, *params)]
        assert not float32, f"FP32 tensors inside a strongly typed FP16 graph: {float32[:5]}"


def check_uint8_prelude(m: onnx.ModelProto, layout: str) -> None:
    """A uint8-input graph (``build --input uint8``): the uint8 input feeds one Cast to float and nothing else;
    the prelude is Cast -> (Transpose) -> Sub -> Mul with constant per-channel initializers, outside every Q/DQ
    pair, so every QuantizeLinear still takes a float tensor and the placement is the float graph's."""
    inp = m.graph.input[0]
    assert inp.type.tensor_type.elem_type == onnx.TensorProto.UINT8, "input is not uint8"
    dims = [d.dim_value for d in inp.type.tensor_type.shape.dim]
    assert (dims[3] if layout == "nhwc" else dims[1]) == 3, f"channels not where {layout} puts them: {dims}"
    users = [n for n in m.graph.node if inp.name in n.input]
    assert [n.op_type for n in users] == ["Cast"], f"the uint8 input feeds {[n.op_type for n in users]}"
    to = {a.name: a.i for a in users[0].attribute}["to"]
    assert to in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16), "the Cast does not go to float"
    ops = [n.op_type for n in m.graph.node[:4]]
    want = ["Cast", "Transpose", "Sub", "Mul"] if layout == "nhwc" else ["Cast", "Sub", "Mul"]
    assert ops[:len(want)] == want, f"prelude is {ops}"
    inits = {t.name for t in m.graph.initializer}
    for n in m.graph.node[1:len(want)]:
        if n.op_type in ("Sub", "Mul"):
            assert n.input[1] in inits, f"{n.name}: mean/std is not a constant initializer"
    inferred = onnx.shape_inference.infer_shapes(m, check_type=True, strict_mode=True)
    types = {v.name: v.type.tensor_type.elem_type for v in inferred.graph.value_info}
    for n in m.graph.node:
        if n.op_type == "QuantizeLinear":
            assert types.get(n.input[0], onnx.TensorProto.FLOAT) != onnx.TensorProto.UINT8, n.name


@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
def test_uint8_input_graphs_obey_the_rules(engines_dir: Path, layout: str):
    """The uint8-input variants of every graph TensorRT gets: the same rules, plus a well-formed prelude."""
    from ghostedge.card import read_onnx_card
    from ghostedge.input_uint8 import uint8_input

    fp32 = onnx.load(str(engines_dir / "ghostnet.onnx"))
    int8 = onnx.load(str(engines_dir / "ghostnet.int8.onnx"))
    pre = read_onnx_card(fp32).preprocess
    for m, targets, f16 in ((fp32, ("8.6", "10.x"), False), (int8, ("8.6", "10.x"), False),
                            (fp16_onnx(fp32), ("10.x", "11.x"), True), (fp16_onnx(int8), ("10.x", "11.x"), True)):
        u8 = uint8_input(m, pre, layout)
        check_trt_rules(u8, targets, fp16_typed=f16)
        check_uint8_prelude(u8, layout)
        q = lambda g: [(n.op_type, n.input[1:], [(a.name, a.i) for a in n.attribute])  # noqa: E731
                       for n in g.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
        assert q(u8) == q(m)   # the same Q/DQ nodes, scales and axes: TensorRT's placement is untouched


def test_uint8_prelude_check_catches_what_it_claims(engines_dir: Path):
    from ghostedge.card import read_onnx_card
    from ghostedge.input_uint8 import uint8_input

    fp32 = onnx.load(str(engines_dir / "ghostnet.onnx"))
    u8 = uint8_input(fp32, read_onnx_card(fp32).preprocess)
    with pytest.raises(AssertionError, match="input is not uint8"):
        check_uint8_prelude(fp32, "nchw")
    with pytest.raises(AssertionError, match="channels not where nhwc"):
        check_uint8_prelude(u8, "nhwc")
    bad = onnx.ModelProto()
    bad.CopyFrom(u8)
    for n in bad.graph.node:
        if n.op_type == "Cast":
            n.attribute[0].i = onnx.TensorProto.INT32
            break
    with pytest.raises(AssertionError, match="does not go to float"):
        check_uint8_prelude(bad, "nchw")


def test_every_onnx_ghostedge_hands_tensorrt(engines_dir: Path):
    fp32 = onnx.load(str(engines_dir / "ghostnet.onnx"))
    int8 = onnx.load(str(engines_dir / "ghostnet.int8.onnx"))
    check_trt_rules(fp32, ("8.5", "8.6", "10.x"), fp16_typed=False)      # weakly typed builds, implicit INT8
    check_trt_rules(int8, ("8.5", "8.6", "10.x"), fp16_typed=False)      # weakly typed Q/DQ builds
    check_trt_rules(fp16_onnx(fp32), ("10.x", "11.x"), fp16_typed=True)  # strongly typed FP16
    check_trt_rules(fp16_onnx(int8), ("10.x", "11.x"), fp16_typed=True)  # strongly typed INT8


def test_d12_a_dead_channel_does_not_underflow_to_a_zero_scale(tmp_path: Path, image_folder: Path):
    """A user's model with an all-zero conv filter: its weight scale is 1e-8/127 in FP32, 0 in FP16 unless floored."""
    from ghostedge.card import InputSpec, ModelCard
    from ghostedge.checkpoint import save_checkpoint
    from ghostedge.quantize import QuantizeConfig, quantize

    m = tiny_ghostnet(1)
    with torch.no_grad():
        m.blocks[3][0].ghost1.primary_conv[0].weight[2].zero_()   # a dead output channel
    w = tmp_path / "dead.safetensors"
    save_checkpoint(m.eval(), ModelCard(width=0.5, num_classes=3, input=InputSpec(input_size=32)), w,
                    half=False)
    out = tmp_path / "e"
    quantize(QuantizeConfig(calib=image_folder, out=out, weights=w, num_images=8, batch=4, holdout=4, threads=1))
    int8 = onnx.load(str(out / "ghostnet.int8.onnx"))
    scales = [numpy_helper.to_array(t) for t in int8.graph.initializer if t.name.endswith("scale")]
    assert min(float(s.min()) for s in scales) < FP16_MIN_NORMAL   # the FP32 graph has the tiny scale ...
    check_trt_rules(fp16_onnx(int8), ("10.x", "11.x"), fp16_typed=True)   # ... the FP16-typed one a positive one


def test_checker_catches_what_it_claims(engines_dir: Path):
    """The rule check itself fails on a broken graph (so the test above can fail)."""
    int8 = fp16_onnx(onnx.load(str(engines_dir / "ghostnet.int8.onnx")))
    bad = onnx.ModelProto()
    bad.CopyFrom(int8)
    bad.ir_version = 8
    with pytest.raises(AssertionError, match="IR version"):
        check_trt_rules(bad, ("10.x",), fp16_typed=True)
    bad.CopyFrom(int8)
    for n in bad.graph.node:
        if n.op_type == "QuantizeLinear" and any(a.name == "axis" for a in n.attribute):
            del n.attribute[:]
            break
    with pytest.raises(AssertionError, match="explicit axis"):
        check_trt_rules(bad, ("10.x",), fp16_typed=True)
    with pytest.raises(AssertionError, match="opset 19"):
        check_trt_rules(int8, ("8.6",), fp16_typed=True)


@pytest.fixture(scope="module", params=["ghostnetv2", "ghostnetv3"])
def v2v3_engines(request, tmp_path_factory: pytest.TempPathFactory, image_folder: Path) -> tuple[str, Path]:
    """`ghostedge quantize` on a random 0.5x GhostNetV2 / V3 (3 classes, 64 px: the smallest size whose last
    attention stage is 2x2) with non-trivial BN statistics."""
    from ghostedge.card import InputSpec, ModelCard
    from ghostedge.checkpoint import save_checkpoint
    from ghostedge.model import architecture
    from ghostedge.quantize import QuantizeConfig, quantize

    from .test_ghostnet_v2v3 import randomise

    name = request.param
    torch.manual_seed(0)
    m = randomise(architecture(name).build(0.5, 3))
    d = tmp_path_factory.mktemp(name)
    w = d / f"{name}.safetensors"
    save_checkpoint(m, ModelCard(family=name, width=0.5, num_classes=3, input=InputSpec(input_size=64)), w,
                    half=False)
    quantize(QuantizeConfig(calib=image_folder, out=d / "e", weights=w, num_images=12, batch=4, holdout=6,
                            threads=1))
    return name, d / "e"


def test_v2_v3_graphs_obey_the_rules_and_quantize_the_dfc_branch_by_them(v2v3_engines):
    """The DFC branch (AveragePool -> 1x1 conv -> dw 1x5 -> dw 5x1 -> Sigmoid -> Resize -> Mul) under TensorRT's
    Q/DQ placement rules: Q/DQ at the input (and weights) of every one of its convs, so they run INT8; none at
    Sigmoid, Resize or Mul, which have no INT8 benefit in TensorRT's fusions and stay FP16 / FP32 between the
    quantized convs (a pair there would run as standalone scale layers); AveragePool's input stays float (its
    output is the next conv's quantized input, TensorRT moves the scale across the pooling itself)."""
    name, eng = v2v3_engines
    fp32 = onnx.load(str(eng / "ghostnet.onnx"))
    int8 = onnx.load(str(eng / "ghostnet.int8.onnx"))
    check_trt_rules(fp32, ("8.5", "8.6", "10.x"), fp16_typed=False)
    check_trt_rules(int8, ("8.5", "8.6", "10.x"), fp16_typed=False)
    check_trt_rules(fp16_onnx(fp32), ("10.x", "11.x"), fp16_typed=True)
    check_trt_rules(fp16_onnx(int8), ("10.x", "11.x"), fp16_typed=True)
    producer = {o: n for n in int8.graph.node for o in n.output}
    dq = lambda t: t in producer and producer[t].op_type == "DequantizeLinear"  # noqa: E731
    dfc = [n for n in int8.graph.node if "short_conv" in n.name and n.op_type == "Conv"]
    assert len(dfc) == 14 * 3
    assert all(dq(n.input[0]) and dq(n.input[1]) for n in dfc)
    for op in ("Sigmoid", "Resize", "Mul", "AveragePool"):
        nodes = [n for n in int8.graph.node if n.op_type == op]
        assert nodes and not any(dq(t) for n in nodes for t in n.input), op
    q_at = [producer[n.input[0]].op_type for n in int8.graph.node if n.op_type == "QuantizeLinear"
            and n.input[0] in producer]
    assert "Sigmoid" not in q_at and "Resize" not in q_at
    assert not any("_rpr_" in n.name for n in int8.graph.node)      # V3: re-parameterized before export


def test_the_refinement_interpreter_runs_the_v2_v3_graphs(v2v3_engines):
    """GPTQ rounding and bias correction run on refine.TorchGraph: it must run the attention gate's Resize as
    ONNX Runtime does (else V2 / V3 would get plain mse ranges only)."""
    from ghostedge.export import INPUT_NAME, ort_session
    from ghostedge.refine import TorchGraph

    _, eng = v2v3_engines
    fp32 = onnx.load(str(eng / "ghostnet.onnx"))
    x = np.random.default_rng(3).standard_normal((2, 3, 64, 64)).astype(np.float32)
    want = ort_session(fp32).run(None, {INPUT_NAME: x})[0]
    with torch.no_grad():
        got = TorchGraph(fp32).forward(torch.from_numpy(x)).numpy()
    assert np.abs(got - want).max() <= 1e-5 * max(1.0, float(np.abs(want).max()))
    refinement = json.loads((eng / "ghostnet.quant.json").read_text())["refinement"]
    assert refinement["weights_rounded"] > 0 and refinement["biases_corrected"] > 0, refinement
