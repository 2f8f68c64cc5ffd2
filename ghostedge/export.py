"""PyTorch GhostNet -> one self-contained FP32 ONNX file (opset 17, BN folded, dynamic batch).

Opset 17 because TensorRT 8.5 (JetPack 5) reads opset <= 17. The TorchScript exporter writes it in one
file; torch's dynamo exporter would write opset >= 18 and a separate ``.data`` file.
"""

from __future__ import annotations

import copy
import io
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch
import torch.nn as nn

from .arch.ghostnetv2 import bind_input_size
from .backends.onnxruntime import ort_session  # noqa: F401 (calibrate, estimate, quantize open sessions with it)
from .errors import CheckFailed, GhostedgeError, atomic_path
from .card import ModelCard, read_onnx_card, write_onnx_card
from .model import GhostNet

OPSET = 17
INPUT_NAME = "input"
OUTPUT_NAME = "logits"
PARITY_ATOL = 1e-4
#: FP16's smallest normal number (2**-14): the floor for Q/DQ scales in FP16-typed graphs
FP16_MIN_NORMAL = 2.0 ** -14


@dataclass
class ExportResult:
    path: Path
    opset: int
    parity_random: float                 # max |logit diff| vs PyTorch on random inputs
    parity_real: float | None = None     # ... on real images, where given
    nodes: int = 0

    @property
    def passed(self) -> bool:
        worst = max(self.parity_random, self.parity_real or 0.0)
        return worst <= PARITY_ATOL


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """A copy of the model with every BatchNorm that follows a Conv folded into the Conv."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    m = copy.deepcopy(model).eval()

    def fold(parent: nn.Module) -> None:
        names = list(parent._modules)
        for i, name in enumerate(names):
            child = parent._modules[name]
            if child is None:
                continue
            if isinstance(child, nn.BatchNorm2d) and i > 0 and isinstance(parent._modules[names[i - 1]], nn.Conv2d):
                parent._modules[names[i - 1]] = fuse_conv_bn_eval(parent._modules[names[i - 1]], child)
                parent._modules[name] = nn.Identity()
            else:
                fold(child)
        # GhostBottleneck keeps conv_dw / bn_dw as attributes, not in a Sequential
        if hasattr(parent, "conv_dw") and isinstance(getattr(parent, "bn_dw", None), nn.BatchNorm2d):
            parent.conv_dw = fuse_conv_bn_eval(parent.conv_dw, parent.bn_dw)
            parent.bn_dw = nn.Identity()
        if isinstance(parent, GhostNet) and isinstance(parent.bn1, nn.BatchNorm2d):
            parent.conv_stem = fuse_conv_bn_eval(parent.conv_stem, parent.bn1)
            parent.bn1 = nn.Identity()
        if hasattr(parent, "conv") and isinstance(getattr(parent, "bn1", None), nn.BatchNorm2d) and \
                isinstance(parent.conv, nn.Conv2d):
            parent.conv = fuse_conv_bn_eval(parent.conv, parent.bn1)
            parent.bn1 = nn.Identity()

    fold(m)
    return m


def constants_to_initializers(proto: onnx.ModelProto) -> None:
    """Turn Constant nodes into initializers, so every node output is an activation."""
    keep = []
    for n in proto.graph.node:
        if n.op_type == "Constant" and len(n.attribute) == 1 and n.attribute[0].name == "value":
            t = onnx.TensorProto()
            t.CopyFrom(n.attribute[0].t)
            t.name = n.output[0]
            proto.graph.initializer.append(t)
        else:
            keep.append(n)
    del proto.graph.node[:]
    proto.graph.node.extend(keep)


def unshare_initializers(proto: onnx.ModelProto) -> None:
    """Give every node its own copy of an initializer the exporter shared between nodes (it dedupes equal
    tensors through Identity nodes, e.g. the all-zero folded biases of BatchNorms with zero mean):
    quantizers rewrite weights and biases per node and expect them as initializers."""
    inits = {t.name: t for t in proto.graph.initializer}
    keep = []
    for n in proto.graph.node:  # the exporter's dedup: Identity(shared initializer) -> a weight name
        if n.op_type == "Identity" and n.input[0] in inits:
            t = onnx.TensorProto()
            t.CopyFrom(inits[n.input[0]])
            t.name = n.output[0]
            proto.graph.initializer.append(t)
            inits[t.name] = t
        else:
            keep.append(n)
    del proto.graph.node[:]
    proto.graph.node.extend(keep)
    seen: set[str] = set()
    for n in proto.graph.node:
        for k, name in enumerate(n.input):
            if name not in inits:
                continue
            if name in seen:
                t = onnx.TensorProto()
                t.CopyFrom(inits[name])
                t.name = f"{name}__{n.name or len(proto.graph.initializer)}"
                proto.graph.initializer.append(t)
                n.input[k] = t.name
            else:
                seen.add(name)


def to_onnx_proto(model: GhostNet, info: ModelCard, img_size: int | None = None) -> onnx.ModelProto:
    size = img_size or info.input.input_size
    folded = fold_batchnorm(model)
    try:  # V2 / V3's attention gates: a constant-scale Resize for this input size, the graph fixed to it
        fixed = bind_input_size(folded, size)
    except ValueError as e:
        raise GhostedgeError(f"cannot export at {size} px: {e}: use a larger input size") from None
    dummy = torch.randn(1, 3, size, size)
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(folded, (dummy,), buf, dynamo=False, opset_version=OPSET,
                          input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], do_constant_folding=True,
                          dynamic_axes={INPUT_NAME: {0: "batch"} if fixed else {0: "batch", 2: "height", 3: "width"},
                                        OUTPUT_NAME: {0: "batch"}})
    proto = onnx.load_from_string(buf.getvalue())
    constants_to_initializers(proto)
    unshare_initializers(proto)
    proto.producer_name = "ghostedge"
    write_onnx_card(proto, info)
    onnx.checker.check_model(proto)
    return proto


def parity(model: GhostNet, proto: onnx.ModelProto, x: np.ndarray) -> float:
    sess = ort_session(proto)
    with torch.inference_mode():
        ref = model.eval()(torch.from_numpy(x)).numpy()
    got = sess.run(None, {INPUT_NAME: x})[0]
    return float(np.abs(ref - got).max())


def export_onnx(model: GhostNet, info: ModelCard, dst: str | Path, img_size: int | None = None,
                real_inputs: np.ndarray | None = None, check: bool = True) -> ExportResult:
    """Export, check parity with PyTorch (random + real inputs), write atomically."""
    size = img_size or info.input.input_size
    if size < 32:
        raise GhostedgeError(f"--img-size {size} is too small: GhostNet downsamples 32x, use >= 32")
    proto = to_onnx_proto(model, info, size)
    rng = np.random.default_rng(0)
    xr = rng.standard_normal((2, 3, size, size)).astype(np.float32)
    res = ExportResult(Path(dst), OPSET, parity(model, proto, xr), nodes=len(proto.graph.node))
    if real_inputs is not None and len(real_inputs):
        res.parity_real = parity(model, proto, real_inputs.astype(np.float32))
    if not np.isfinite([res.parity_random, res.parity_real or 0.0]).all():
        raise GhostedgeError("the model's outputs are not finite (NaN/Inf) on ordinary inputs: your checkpoint "
                             "overflows in FP32 (check its BatchNorm statistics and weights); nothing written")
    if check and not res.passed:
        raise CheckFailed(f"ONNX export differs from PyTorch by {max(res.parity_random, res.parity_real or 0):.2e} "
                          f"(> {PARITY_ATOL}): nothing written; report this with --debug output")
    with atomic_path(dst) as tmp:
        onnx.save_model(proto, str(tmp))
    return res


def onnx_is_current(path: str | Path, info: ModelCard) -> bool:
    """True when path is a ghostedge export of these very weights with this very description."""
    p = Path(path)
    if not p.is_file():
        return False
    try:
        stored = read_onnx_card(p)
    except Exception:
        return False
    # the ONNX has dynamic H/W, but its metadata (the description every later stage reads) must match
    return stored is not None and stored.fingerprint == info.fingerprint and stored.classes == info.classes \
        and stored.wnids == info.wnids and stored.input.same_as(info.input)


def resize_parameters(model: onnx.ModelProto) -> set[str]:
    """The roi / scales inputs of the Resize nodes (V2's attention gates), which stay FP32 in an FP16 graph."""
    return {t for n in model.graph.node if n.op_type == "Resize" for t in n.input[1:3] if t}


def fp16_onnx(model: onnx.ModelProto) -> onnx.ModelProto:
    """An FP16-typed copy for strongly typed TensorRT builds: weights and activations FP16, I/O FP32.

    Float initializers become FP16; a Cast follows the input and precedes the output. Q/DQ graphs
    need FP16 scales, which QuantizeLinear accepts from opset 19 on (TensorRT 10+ reads it).
    """
    from onnx import helper, numpy_helper

    m = onnx.ModelProto()
    m.CopyFrom(model)
    g = m.graph
    scales = {n.input[1] for n in g.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")}
    keep = resize_parameters(m)   # a Resize's roi / scales are tensor(float) in every opset: not activations
    for i, init in enumerate(g.initializer):
        if init.data_type == onnx.TensorProto.FLOAT and init.name not in keep:
            arr = numpy_helper.to_array(init).astype(np.float16)
            if init.name in scales:
                # TensorRT needs strictly positive scales; a dead channel's scale (1e-8/127 in FP32) would
                # underflow to 0 in FP16: floor it at FP16's smallest normal (its weights are ~0 anyway)
                arr = np.maximum(arr, np.float16(FP16_MIN_NORMAL))
            g.initializer[i].CopyFrom(numpy_helper.from_array(arr, init.name))
    del g.value_info[:]
    inp, outp = g.input[0].name, g.output[0].name
    cast_in, cast_out = f"{inp}_fp16", f"{outp}_fp16"
    for n in g.node:
        for k, t in enumerate(n.input):
            if t == inp:
                n.input[k] = cast_in
        for k, t in enumerate(n.output):
            if t == outp:
                n.output[k] = cast_out
    g.node.insert(0, helper.make_node("Cast", [inp], [cast_in], name="input_to_fp16", to=onnx.TensorProto.FLOAT16))
    g.node.append(helper.make_node("Cast", [cast_out], [outp], name="output_to_fp32", to=onnx.TensorProto.FLOAT))
    if scales:
        for op in m.opset_import:
            if op.domain in ("", "ai.onnx"):
                op.version = max(op.version, 19)
        m.ir_version = max(m.ir_version, 9)  # opset 19 belongs to IR version 9
    onnx.checker.check_model(m)
    onnx.shape_inference.infer_shapes(m, check_type=True, strict_mode=True)
    return m
