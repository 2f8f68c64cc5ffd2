"""uint8 pixels in, the model's normalisation inside the graph (``ghostedge build --input uint8``).

An application that feeds camera frames sends uint8 RGB, already resized and center-cropped to the model's
input, and the engine does the float conversion and the per-channel mean/std itself, so no float pass runs
on the host. The graph gets a prelude before its first node:

    uint8 [N,3,S,S] (or [N,S,S,3]) -> Cast -> (Transpose NHWC->NCHW) -> Sub 255*mean -> Mul 1/(255*std)

which is ``data.normalize`` up to float rounding, whatever the first layer is. It is *not* folded into the stem
conv: that conv pads with zeros, and after folding a padded zero would stand for the pixel value 0 instead of
the normalised 0 (the mean colour), so every border output would change.

On the Q/DQ ONNX the prelude goes in front of the first QuantizeLinear, which then quantizes the normalised
float tensor exactly as before: the Q/DQ placement TensorRT's rules ask for is untouched (the prelude's ops run
in float, outside every Q/DQ pair). On an FP16-typed graph (``export.fp16_onnx``) it replaces the input Cast
and computes in FP16, so no FP32 tensor meets an FP16 one.

The input format travels in the model description (``extra["input"]``, in the ONNX metadata and in the
engine manifest's ``model``), so predict and bench feed uint8 to such engines.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx

from .backends.base import BaseRunner
from .card import InputSpec, ModelCard
from .errors import GhostedgeError

DTYPES = ("float32", "uint8")
LAYOUTS = ("nchw", "nhwc")
#: where the input format sits in a model description's ``extra``
EXTRA_KEY = "input"
#: the tensor the prelude hands to the original graph (the normalised NCHW input)
NORMALISED = "input_normalised"


@dataclass(frozen=True)
class InputFormat:
    """What an engine's input tensor takes: normalised float32 NCHW (ghostedge's default) or uint8 pixels."""

    dtype: str = "float32"
    layout: str = "nchw"

    def check(self) -> "InputFormat":
        if self.dtype not in DTYPES:
            raise GhostedgeError(f"input dtype {self.dtype!r} is unknown: use one of {', '.join(DTYPES)}")
        if self.layout not in LAYOUTS:
            raise GhostedgeError(f"input layout {self.layout!r} is unknown: use one of {', '.join(LAYOUTS)}")
        if self.dtype == "float32" and self.layout != "nchw":
            raise GhostedgeError("a float32 input is NCHW (the exported model's): an NHWC layout is for uint8 "
                                 "pixel input only")
        return self

    @property
    def uint8(self) -> bool:
        return self.dtype == "uint8"

    def shape(self, batch: int, size: int) -> tuple[int, int, int, int]:
        return (batch, size, size, 3) if self.layout == "nhwc" else (batch, 3, size, size)

    def describe(self) -> str:
        return "float32 NCHW, normalised" if not self.uint8 else f"uint8 RGB {self.layout.upper()}, 0-255"

    def to_dict(self) -> dict:
        return {"dtype": self.dtype, "layout": self.layout}

    @classmethod
    def from_dict(cls, d: dict | None) -> "InputFormat":
        d = d or {}
        return cls(str(d.get("dtype", "float32")), str(d.get("layout", "nchw"))).check()


FLOAT32 = InputFormat()


def input_format(info: ModelCard | dict | None) -> InputFormat:
    """The input format a model description records (float32 NCHW when it records none)."""
    if info is None:
        return FLOAT32
    extra = info.get("extra") if isinstance(info, dict) else info.extra
    return InputFormat.from_dict((extra or {}).get(EXTRA_KEY))


def record_format(model_dict: dict | None, fmt: InputFormat) -> dict | None:
    """A model card's JSON (``ModelCard.to_dict()``) with ``fmt`` recorded; float32 NCHW leaves it as it is."""
    if model_dict is None or not fmt.uint8:
        return model_dict
    d = dict(model_dict)
    d["extra"] = {**(d.get("extra") or {}), EXTRA_KEY: fmt.to_dict()}
    return d


# ---------------------------------------------------------------------------------------------
# the graph transform

def _float_type_after_input(g: onnx.GraphProto, name: str) -> tuple[int, onnx.NodeProto | None]:
    """FLOAT, or FLOAT16 with the Cast node ``fp16_onnx`` put after the input (which the prelude replaces)."""
    users = [n for n in g.node if name in n.input]
    if len(users) == 1 and users[0].op_type == "Cast":
        to = next((a.i for a in users[0].attribute if a.name == "to"), None)
        if to == onnx.TensorProto.FLOAT16:
            return onnx.TensorProto.FLOAT16, users[0]
    return onnx.TensorProto.FLOAT, None


def uint8_input(model: onnx.ModelProto, pre: InputSpec, layout: str = "nchw") -> onnx.ModelProto:
    """A copy of ``model`` whose input is uint8 pixels (``layout``), normalised with ``pre``'s mean/std in the
    graph. The input keeps its name (trtexec shapes, runners and deploy configs name it as before)."""
    from onnx import helper, numpy_helper

    fmt = InputFormat("uint8", layout).check()
    if len(model.graph.input) != 1:
        raise GhostedgeError(f"the model has {len(model.graph.input)} inputs: a uint8 input is for one-image-input "
                             "classifiers")
    m = onnx.ModelProto()
    m.CopyFrom(model)
    g = m.graph
    inp = g.input[0]
    tt = inp.type.tensor_type
    if tt.elem_type != onnx.TensorProto.FLOAT:
        raise GhostedgeError(f"the model's input {inp.name} is not float32 "
                             f"({onnx.TensorProto.DataType.Name(tt.elem_type)}): is it a uint8-input model already?")
    dims = list(tt.shape.dim)
    if len(dims) != 4 or (dims[1].HasField("dim_value") and dims[1].dim_value != 3):
        raise GhostedgeError(f"the model's input {inp.name} is not [N, 3, H, W]: a uint8 input is for RGB image "
                             "classifiers")
    ftype, cast16 = _float_type_after_input(g, inp.name)
    np_t = np.float16 if ftype == onnx.TensorProto.FLOAT16 else np.float32
    name = inp.name
    target = cast16.output[0] if cast16 is not None else NORMALISED
    if cast16 is not None:
        g.node.remove(cast16)
    else:
        for n in g.node:
            for k, t in enumerate(n.input):
                if t == name:
                    n.input[k] = target
    mean = np.asarray(pre.mean, np.float64) * 255.0
    inv = 1.0 / (np.asarray(pre.std, np.float64) * 255.0)
    g.initializer.extend([numpy_helper.from_array(mean.astype(np_t).reshape(1, 3, 1, 1), "input_mean_255"),
                          numpy_helper.from_array(inv.astype(np_t).reshape(1, 3, 1, 1), "input_inv_std_255")])
    nodes = [helper.make_node("Cast", [name], ["input_as_float"], name="input_uint8_to_float", to=ftype)]
    src = "input_as_float"
    if fmt.layout == "nhwc":
        nodes.append(helper.make_node("Transpose", [src], ["input_nchw"], name="input_nhwc_to_nchw",
                                      perm=[0, 3, 1, 2]))
        src = "input_nchw"
    nodes += [helper.make_node("Sub", [src, "input_mean_255"], ["input_centred"], name="input_sub_mean"),
              helper.make_node("Mul", ["input_centred", "input_inv_std_255"], [target], name="input_div_std")]
    for k, n in enumerate(nodes):
        g.node.insert(k, n)
    shape = [dims[0], dims[2], dims[3], dims[1]] if fmt.layout == "nhwc" else dims
    new_in = helper.make_tensor_value_info(name, onnx.TensorProto.UINT8, None)
    for d in shape:
        new_in.type.tensor_type.shape.dim.add().CopyFrom(d)
    g.input.remove(inp)
    g.input.insert(0, new_in)
    _record_in_metadata(m, fmt)
    onnx.checker.check_model(m)
    return m


def _record_in_metadata(m: onnx.ModelProto, fmt: InputFormat) -> None:
    from .card import ONNX_KEY

    for p in m.metadata_props:
        if p.key == ONNX_KEY:
            p.value = json.dumps(record_format(json.loads(p.value), fmt))


# ---------------------------------------------------------------------------------------------
# feeding engines

def engine_batch(u8: np.ndarray, pre: InputSpec, fmt: InputFormat) -> np.ndarray:
    """Decoded NHWC uint8 images (``data.decode_images``) as the engine takes them."""
    from .data import normalize

    if not fmt.uint8:
        return normalize(u8, pre)
    return np.ascontiguousarray(u8 if fmt.layout == "nhwc" else u8.transpose(0, 3, 1, 2))


def pixels(x: np.ndarray, pre: InputSpec) -> np.ndarray:
    """Normalised NCHW float32 (``data.normalize``) back to the NHWC uint8 pixels it was made from: exact for
    images, since normalising moves a pixel by far less than half a step; clipped for other inputs."""
    mean = np.asarray(pre.mean, np.float32).reshape(1, 3, 1, 1)
    std = np.asarray(pre.std, np.float32).reshape(1, 3, 1, 1)
    u = np.rint((x * std + mean) * 255.0)
    return np.clip(u, 0, 255).astype(np.uint8).transpose(0, 2, 3, 1)


def timing_input(fmt: InputFormat, batch: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """A random batch of the engine's input type, for timing."""
    if fmt.uint8:
        return rng.integers(0, 256, fmt.shape(batch, size), dtype=np.uint8)
    return rng.standard_normal(fmt.shape(batch, size), dtype=np.float32)


class PixelFeed(BaseRunner):
    """A uint8-input engine behind the float interface every harness feeds (normalised NCHW float32 in):
    the batch goes back to its uint8 pixels first. uint8 batches pass straight through (timing)."""

    def __init__(self, runner: BaseRunner, pre: InputSpec, fmt: InputFormat):
        super().__init__(runner.name)
        self.runner, self.pre, self.fmt = runner, pre, fmt
        self.backend, self.precision = runner.backend, runner.precision

    def infer(self, x: np.ndarray) -> np.ndarray:
        if not self.active:
            raise RuntimeError(f"runner {self.name} used before activate()")
        if x.dtype != np.uint8:
            x = engine_batch(pixels(x, self.pre), self.pre, self.fmt)
        return self.runner.infer(x)

    def activate_impl(self) -> None:
        self.runner.activate()

    def deactivate_impl(self) -> None:
        self.runner.deactivate()

    def max_batch(self) -> int | None:
        return self.runner.max_batch()

    def min_batch(self) -> int | None:
        return self.runner.min_batch()

    def __getattr__(self, name: str) -> Any:   # warnings, gpu_ms, layers() of the engine's runner
        if name == "runner":
            raise AttributeError(name)
        return getattr(self.runner, name)


def feed_for(runner: BaseRunner, pre: InputSpec, fmt: InputFormat) -> BaseRunner:
    """``runner`` as harnesses feed it (normalised float32): wrapped in a PixelFeed for a uint8-input engine."""
    return PixelFeed(runner, pre, fmt) if fmt.uint8 else runner


def engine_format(path, manifest: dict | None) -> InputFormat:  # noqa: ANN001 (str | Path)
    """What an engine file takes: its manifest's model description, else (an .onnx) its ONNX metadata."""
    from .backends.registry import backend_for_path

    if manifest and manifest.get("model"):
        return input_format(manifest["model"])
    if backend_for_path(path).onnx_engine:
        from .card import read_onnx_card

        return input_format(read_onnx_card(path))
    return FLOAT32


def check_engine_input(runner: BaseRunner, fmt: InputFormat, what: str) -> None:
    """The active engine's own input tensor agrees with the format its description records."""
    real = runner.inputs_info()[0]
    if (real.dtype == "uint8") != fmt.uint8:
        raise GhostedgeError(f"{what} takes a {real.dtype} input {list(real.shape)}, but its description says "
                             f"{fmt.describe()}: rebuild it with ghostedge build")
