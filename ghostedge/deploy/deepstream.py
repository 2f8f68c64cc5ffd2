"""DeepStream: a Gst-nvinfer config (primary or secondary classifier) for a ghostedge engine.

Keys and values are those of the Gst-nvinfer documentation, "Gst-nvinfer File Configuration
Specifications" (https://docs.nvidia.com/metropolis/deepstream/dev-guide/text/DS_plugin_gst-nvinfer.html),
read against DeepStream's own sources where the table is terse:

- preprocessing is ``y = net-scale-factor * (x - offsets[c])`` on 0..255 pixels, ONE scale for all channels;
  nvinfer hands TensorRT planar float32 (``NvDsInferConvert_C*ToP3Float``), never uint8;
- ``model-color-format`` 0 RGB / 1 BGR / 2 GRAY; ``network-mode`` 0 FP32 / 1 INT8 / 2 FP16; ``network-type``
  1 classifier; ``process-mode`` 1 primary (full frame) / 2 secondary (objects of ``operate-on-gie-id``);
  ``infer-dims`` channel;height;width; ``scaling-filter`` an ``NvBufSurfTransform_Inter`` (0 nearest,
  1 bilinear, 2 GPU cubic, 4 GPU Lanczos), ``scaling-compute-hw`` 1 = GPU (on Jetson the default, VIC, reads
  the same numbers as other filters); relative paths are resolved against the config file's folder;
- ``labelfile-path``: for a classifier one line per output layer, its labels separated by ``;``
  (``NvDsInferContextImpl::parseLabelsFile`` splits each line on ';');
- the default classifier parser (``parseAttributesFromSoftmaxLayers``) reads each output as softmax
  probabilities and keeps the top class when it exceeds ``classifier-threshold``; ghostedge's graphs end in
  logits, so the ONNX written here ends in a Softmax (output ``probs``);
- ``network-mode=1`` without an ``int8-calib-file`` makes nvinfer drop to FP16 ("INT8 calibration file not
  specified. Trying FP16 mode", nvdsinfer_model_builder.cpp), so INT8 configs always name the calibration
  cache: implicit INT8 takes its scales from it; for the Q/DQ ONNX TensorRT takes the scales from the graph
  and ignores the cache, which only makes nvinfer set TensorRT's INT8 flag.
- nvinfer builds the engine from ``onnx-file`` on the first run and saves it as
  ``<onnx-file>_b<batch-size>_<gpu<gpu-id>|dla<core>>_<fp32|int8|fp16>.engine``; ``model-engine-file`` names that file, so
  later runs load it. (A ghostedge ``.plan`` ends in logits, so it is not used directly: its source ONNX is.)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

import numpy as np

from .. import __version__
from ..card import InputSpec
from ..errors import GhostedgeError
from .engine import EngineInfo, EngineKind, atomic_dir, describe_engine, labels

DOCS = "https://docs.nvidia.com/metropolis/deepstream/dev-guide/text/DS_plugin_gst-nvinfer.html"
NETWORK_MODE = {"fp32": 0, "int8": 1, "fp16": 2}
ENGINE_MODE_NAME = {0: "fp32", 1: "int8", 2: "fp16"}
#: the card's interpolation -> NvBufSurfTransform_Inter on the GPU
SCALING_FILTER = {"nearest": 0, "bilinear": 1, "bicubic": 2, "lanczos": 4}
PROBS = "probs"
CHANNEL_SCALE = "ghostedge_nvinfer_channel_scale"


class Mode(str, Enum):
    primary = "primary"
    secondary = "secondary"


@dataclass
class DeepStreamSettings:
    out: Path = Path("deploy/deepstream")
    mode: Mode = Mode.primary
    batch: int | None = None            # batch-size: 1 (primary) / 16 (secondary) unless given
    threshold: float = 0.5              # classifier-threshold, a softmax probability
    gie_id: int | None = None           # gie-unique-id: 1 (primary) / 2 (secondary) unless given
    operate_on_gie_id: int = 1
    operate_on_class_ids: tuple[int, ...] = ()   # secondary: the detector's classes to classify (all if empty)
    gpu_id: int = 0
    fp16: bool = False                  # an FP32 ONNX built as FP16 (network-mode=2)
    frame: tuple[int, int] | None = None     # primary: the frame size, to state the card's crop in pixels
    tensorrt_version: str | None = None      # restamp the calibration cache for this TensorRT


@dataclass
class Normalisation:
    """nvinfer's ``y = net_scale_factor * (x - offsets[c])``, then ``channel_scale[c]`` inside the ONNX."""

    net_scale_factor: float
    offsets: tuple[float, float, float]
    channel_scale: tuple[float, float, float] | None   # None: the config alone is the card's normalisation
    max_error_config_only: float        # max |config-only y - card y| over pixels 0..255
    how: str

    def apply(self, hwc_u8: np.ndarray) -> np.ndarray:
        """One resized/cropped HWC uint8 image -> the (1, 3, H, W) tensor the network's first layer sees."""
        x = hwc_u8.astype(np.float32).transpose(2, 0, 1)[None]
        y = np.float32(self.net_scale_factor) * (x - np.asarray(self.offsets, np.float32)[None, :, None, None])
        if self.channel_scale is not None:
            y = y * np.asarray(self.channel_scale, np.float32)[None, :, None, None]
        return y


@dataclass
class DeepStreamResult:
    out: Path
    config: Path
    labels: Path
    model: Path
    calib_cache: Path | None
    network_mode: int
    normalisation: Normalisation
    notes: list[str] = field(default_factory=list)


def nvinfer_normalisation(pre: InputSpec, uint8_input: bool = False) -> Normalisation:
    """The card's ``(x/255 - mean[c]) / std[c]`` as nvinfer's single scale and per-channel offsets.

    With one std for all channels that is exact: scale 1/(255 std), offsets 255 mean[c]. With per-channel
    std (ImageNet's 0.229/0.224/0.225) one scale cannot be exact: the config uses the mean std (nvinfer's
    best single scale) and the deployed ONNX multiplies channel c by mean_std/std[c] first thing (a Mul on
    the input, in float, before any Q/DQ), which makes the two together the card's tensor; the error of the
    config alone is reported. A uint8-input engine normalises inside: nvinfer passes 0..255 through.
    """
    if uint8_input:
        return Normalisation(1.0, (0.0, 0.0, 0.0), None, 0.0,
                             "the engine normalises inside (uint8-input build): nvinfer passes the 0..255 pixels "
                             "through (net-scale-factor=1, offsets=0)")
    mean, std = [float(m) for m in pre.mean], [float(s) for s in pre.std]
    offsets = tuple(255.0 * m for m in mean)
    if max(std) - min(std) <= 1e-9 * max(std):
        return Normalisation(1.0 / (255.0 * std[0]), offsets, None, 0.0,  # type: ignore[arg-type]
                             f"one std ({std[0]:g}) for all channels: net-scale-factor=1/(255*std), "
                             "offsets=255*mean, exact")
    s = sum(std) / 3.0
    # |config-only - card| = |x/255 - mean[c]| * |1/s - 1/std[c]|, largest at x = 0 or 255
    err = max(max(m, 1.0 - m) * abs(1.0 / s - 1.0 / sd) for m, sd in zip(mean, std))
    scale = tuple(s / sd for sd in std)
    return Normalisation(1.0 / (255.0 * s), offsets, scale, err,  # type: ignore[arg-type]
                         f"per-channel std {'/'.join(f'{v:g}' for v in std)}: nvinfer has one scale, so "
                         f"net-scale-factor uses the mean std {s:.6g} and model.onnx multiplies channel c by "
                         f"{s:.4g}/std[c] ({', '.join(f'{v:.5f}' for v in scale)}) before its first layer; "
                         f"together exact; the config alone would be off by up to {err:.4f}")


def card_crop(frame: tuple[int, int], pre: InputSpec) -> tuple[int, int, int]:
    """The card's center crop in frame pixels: (left, top, side) of the square that resize+crop keeps."""
    w, h = frame
    side = round(min(w, h) * pre.input_size / pre.resize)
    return (w - side) // 2, (h - side) // 2, side


def load_source(info: EngineInfo):
    """The ONNX nvinfer builds from: the ONNX itself, or the one a plan was built from before ghostedge build."""
    import onnx

    src = info.source_onnx or info.onnx_path
    try:
        model = onnx.load(str(src))
    except Exception as e:  # noqa: BLE001
        raise GhostedgeError(f"{src} is not a readable ONNX model ({type(e).__name__}): rebuild it with ghostedge "
                             "quantize") from None
    g = model.graph
    if len(g.input) != 1 or len(g.output) != 1:
        raise GhostedgeError(f"{src}: nvinfer's classifier path needs one input and one output; this graph has "
                             f"{len(g.input)} and {len(g.output)}")
    return model


def takes_uint8(model) -> bool:
    return model.graph.input[0].type.tensor_type.elem_type == 2   # TensorProto.UINT8


def deepstream_onnx(model, norm: Normalisation):
    """The ONNX nvinfer builds: ``model`` taking nvinfer's float input, ending in a Softmax."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    g = model.graph
    inp = g.input[0]
    if takes_uint8(model):
        dims = [d.dim_value for d in inp.type.tensor_type.shape.dim]
        if len(dims) == 4 and dims[-1] == 3 and dims[1] != 3:
            raise GhostedgeError("this engine takes NHWC uint8: nvinfer feeds planar (NCHW) float; deploy the NCHW "
                                 "uint8-input engine (ghostedge build --input uint8) or the float one")
        # nvinfer feeds float 0..255 (scale 1, offsets 0): a Cast uint8 -> float32 goes, a Cast to float16 (an
        # FP16-typed graph) stays and casts float32 -> float16 instead (exact for 0..255)
        to = lambda n: next((helper.get_attribute_value(a) for a in n.attribute if a.name == "to"), None)
        casts = [n for n in g.node if inp.name in n.input]
        if not casts or any(n.op_type != "Cast" or to(n) not in (TensorProto.FLOAT, TensorProto.FLOAT16)
                            for n in casts):
            raise GhostedgeError("this engine's uint8 input is not only read by a Cast to float: nvinfer feeds "
                                 "float, so deploy the float-input engine instead")
        for c in casts:
            if to(c) != TensorProto.FLOAT:
                continue
            for n in g.node:
                n.input[:] = [inp.name if i == c.output[0] else i for i in n.input]
            g.node.remove(c)
        inp.type.tensor_type.elem_type = TensorProto.FLOAT
    elif norm.channel_scale is not None:
        scaled = f"{inp.name}_channel_scaled"
        for n in g.node:
            n.input[:] = [scaled if i == inp.name else i for i in n.input]
        g.initializer.append(numpy_helper.from_array(
            np.asarray(norm.channel_scale, np.float32).reshape(1, 3, 1, 1), CHANNEL_SCALE))
        g.node.insert(0, helper.make_node("Mul", [inp.name, CHANNEL_SCALE], [scaled], name="ghostedge/channel_scale"))
    out = g.output[0]
    rank = len(out.type.tensor_type.shape.dim)
    g.node.append(helper.make_node("Softmax", [out.name], [PROBS], axis=rank - 1, name="ghostedge/softmax"))
    probs = onnx.ValueInfoProto()
    probs.CopyFrom(out)
    probs.name = PROBS
    g.output.pop()
    g.output.append(probs)
    onnx.checker.check_model(model)
    return model


def _restamped_cache(cache: Path, version: str | None) -> tuple[bytes, str]:
    from ..qdq import QMAX
    from ..quantize import calib_cache_text, parse_calib_cache

    text = cache.read_text()
    header, scales = parse_calib_cache(text)
    if version is None:
        return text.encode(), header
    restamped = calib_cache_text({k: v * QMAX for k, v in scales.items()}, version)
    return restamped.encode(), restamped.splitlines()[0]


def _config_lines(info: EngineInfo, s: DeepStreamSettings, norm: Normalisation, mode: int, batch: int,
                  cache: str | None, notes: list[str]) -> list[str]:
    pre = info.pre
    size = pre.input_size
    primary = s.mode == Mode.primary
    gie = s.gie_id or (1 if primary else 2)
    f = lambda v: f"{v:.10g}"
    device = f"dla{info.dla_core}" if info.dla_core is not None else f"gpu{s.gpu_id}"   # nvinfer's engine file name
    lines = [
        (f"# Gst-nvinfer config written by ghostedge {__version__} from {info.path.name} ({info.kind.value}, "
         f"{info.precision}); keys: {DOCS}"),
        *(f"# {n}" for n in notes),
        "[property]",
        f"gpu-id={s.gpu_id}",
        "onnx-file=model.onnx",
        f"model-engine-file=model.onnx_b{batch}_{device}_{ENGINE_MODE_NAME[mode]}.engine",
    ]
    if cache:
        lines.append(f"int8-calib-file={cache}")
    lines += [
        "labelfile-path=labels.txt",
        f"batch-size={batch}",
        f"network-mode={mode}",
        "network-type=1",
        f"process-mode={1 if primary else 2}",
        f"gie-unique-id={gie}",
    ]
    if not primary:
        lines.append(f"operate-on-gie-id={s.operate_on_gie_id}")
        if s.operate_on_class_ids:
            lines.append("operate-on-class-ids=" + ";".join(str(c) for c in s.operate_on_class_ids))
    lines += [
        f"infer-dims=3;{size};{size}",
        "model-color-format=0",
        f"net-scale-factor={f(norm.net_scale_factor)}",
        "offsets=" + ";".join(f(o) for o in norm.offsets),
        "maintain-aspect-ratio=1",
        "symmetric-padding=1",
        f"scaling-filter={SCALING_FILTER.get(pre.interpolation, 1)}",
        "scaling-compute-hw=1",
        f"output-blob-names={PROBS}",
        f"classifier-threshold={f(s.threshold)}",
    ]
    if info.dla_core is not None:
        lines += ["enable-dla=1", f"use-dla-core={info.dla_core}"]
    return lines


def deploy_deepstream(engine: str | Path, s: DeepStreamSettings) -> DeepStreamResult:
    """Write ``s.out/`` = config_infer_<mode>.txt + labels.txt + model.onnx (+ the calibration cache)."""
    info = describe_engine(engine)
    if info.kind in (EngineKind.onnxruntime, EngineKind.openvino):
        raise GhostedgeError(f"{info.path} is a CPU engine ({info.kind.value}); DeepStream's nvinfer runs TensorRT: "
                             "pass the TensorRT ONNX (engines/ghostnet.int8.onnx) or a .plan that ghostedge build "
                             "wrote")
    if not 0.0 <= s.threshold <= 1.0:
        raise GhostedgeError(f"classifier threshold {s.threshold} is not a probability in [0, 1]")
    for what, v in (("batch size", s.batch), ("gie id", s.gie_id), ("operate-on gie id", s.operate_on_gie_id)):
        if v is not None and v < 1:
            raise GhostedgeError(f"{what} {v} must be at least 1")
    if s.operate_on_class_ids and s.mode == Mode.primary:
        raise GhostedgeError("operate-on class ids are for a secondary classifier (objects of a detector)")
    precision = info.precision
    if s.fp16:
        if precision != "fp32":
            raise GhostedgeError(f"{info.path.name} is {precision}: FP16 is for an FP32 ONNX (engines/ghostnet.onnx)")
        precision = "fp16"
    mode = NETWORK_MODE[precision]
    batch = s.batch or (1 if s.mode == Mode.primary else 16)
    source = load_source(info)
    norm = nvinfer_normalisation(info.pre, takes_uint8(source))
    pre = info.pre
    notes = [f"normalisation: {norm.how}"]
    geom = (f"geometry: the card resizes the short side to {pre.resize} and center-crops {pre.input_size}x"
            f"{pre.input_size} ({pre.interpolation}); nvinfer cannot crop a fixed fraction: it scales the whole "
            f"{'frame' if s.mode == Mode.primary else 'object box'} to {pre.input_size}x{pre.input_size}; this "
            "config keeps the aspect ratio and centres the padding (maintain-aspect-ratio=1, symmetric-padding=1), "
            f"so nothing is distorted, but the network sees the {100 * (1 - pre.crop_pct):.1f}% margin the crop "
            "removes and black padding on a non-square input")
    if s.frame is not None and s.mode == Mode.primary:
        left, top, side = card_crop(s.frame, pre)
        geom += (f"; for the card's crop on {s.frame[0]}x{s.frame[1]} frames put `nvvideoconvert src-crop={left}:"
                 f"{top}:{side}:{side}` before nvstreammux (nvinfer then scales that square)")
    notes.append(geom)
    cache_src = info.calib_cache
    if precision == "int8" and cache_src is None:
        from ..quantize import CACHE_NAME

        cand = Path(info.source_onnx or info.onnx_path or info.path).with_name(CACHE_NAME)
        cache_src = cand if cand.is_file() else None
    if info.implicit_int8 and cache_src is None:
        raise GhostedgeError(f"{info.path.name} takes INT8 from the calibration cache, which is not beside it: copy "
                             "ghostnet.calib.cache there (ghostedge quantize writes it)")
    if precision == "int8" and cache_src is None:
        raise GhostedgeError(f"network-mode=1 needs an int8-calib-file or nvinfer falls back to FP16: copy "
                             f"ghostnet.calib.cache (ghostedge quantize writes it) beside {info.path.name}")
    cache_bytes = cache_header = None
    if cache_src is not None and precision == "int8":
        cache_bytes, cache_header = _restamped_cache(cache_src, s.tensorrt_version)
        if info.implicit_int8:
            notes.append(f"INT8 scales from {cache_src.name} ({cache_header}" + (
                f", restamped for TensorRT {s.tensorrt_version}): " if s.tensorrt_version else "): ")
                + "TensorRT ignores a cache stamped for another version (NVIDIA/TensorRT#1378) and then calibrates "
                "without images, so its stamp must be the TensorRT DeepStream runs on")
        else:
            notes.append("INT8 from the Q/DQ graph's own scales; the calibration cache is named only so that "
                         "nvinfer sets TensorRT's INT8 flag (TensorRT ignores it for a Q/DQ network)")
    if info.kind == EngineKind.tensorrt:
        notes.append(f"{info.path.name} ends in logits; nvinfer builds its engine from {Path(info.source_onnx).name} "
                     "+ Softmax (model.onnx) on the first run, with the same precision")
    onnx_model = deepstream_onnx(source, norm)
    names = labels(info.card)
    if any(";" in n or "\n" in n for n in names):
        names = [n.replace(";", ",").replace("\n", " ") for n in names]
        notes.append("';' in class names replaced by ',' (nvinfer splits labels on ';')")
    import onnx

    config_name = f"config_infer_{s.mode.value}.txt"
    cache_name = cache_src.name if cache_bytes is not None else None  # type: ignore[union-attr]
    with atomic_dir(s.out) as tmp:
        onnx.save_model(onnx_model, str(tmp / "model.onnx"))
        (tmp / "labels.txt").write_text(";".join(names) + "\n")
        if cache_bytes is not None:
            (tmp / cache_name).write_bytes(cache_bytes)  # type: ignore[operator]
        lines = _config_lines(info, s, norm, mode, batch, cache_name, notes)
        (tmp / config_name).write_text("\n".join(lines) + "\n")
    out = Path(s.out)
    return DeepStreamResult(out, out / config_name, out / "labels.txt", out / "model.onnx",
                            out / cache_name if cache_name else None, mode, norm, notes)
