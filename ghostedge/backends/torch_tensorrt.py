"""The torch-tensorrt frontend: compile the PyTorch model directly to a serialized TensorRT engine.

``torch.export`` then ``torch_tensorrt.dynamo.convert_exported_program_to_serialized_trt_engine``. How
precision is asked for changed under it (read from the released wheels' ``dynamo/_compiler.py``):

- <= 2.9: weakly typed by default; FP16 / INT8 are ``enabled_precisions``.
- 2.10 - 2.12: ``use_explicit_typing`` defaults to True and an ``enabled_precisions`` other than FP32
  fails its check; precision comes from the model's own dtypes.
- 2.13+: neither argument exists (``enabled_precisions`` would fall into ``**kwargs`` and be ignored,
  so an "FP16" engine would silently be FP32): always explicitly typed.

So from 2.10 on FP16 is made explicit (the model and its input in float16) and INT8 is carried by
NVIDIA ModelOpt's Q/DQ (``mtq.INT8_DEFAULT_CFG``: per-channel weights, per-tensor activations,
calibrated on the calibration images) around an FP16 model. The device is asked from ``torch.cuda``:
torch-tensorrt needs a CUDA PyTorch anyway, and brings no cuda-python.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..errors import GhostedgeError
from .base import Backend
from .common import Precision


def tt_version(version: str) -> tuple[int, int]:
    from ..manifest import version_tuple

    return version_tuple(version)[:2]


def precision_plan(version: str, precision: str) -> tuple[dict[str, Any], str]:
    """(keyword arguments for convert_exported_program_to_serialized_trt_engine, model dtype) for this
    torch-tensorrt version. Precisions are dtype names here ("float32", "float16", "int8") so the plan is
    testable without torch; the caller maps them to torch dtypes."""
    v = tt_version(version)
    if v <= (2, 9):
        precisions = {"float32"} | ({"float16"} if precision in ("fp16", "int8") else set()) | \
            ({"int8"} if precision == "int8" else set())
        return {"enabled_precisions": precisions}, "float32"
    dtype = "float16" if precision in ("fp16", "int8") else "float32"
    if v <= (2, 12):
        return {"use_explicit_typing": True}, dtype
    return {}, dtype


#: BuildConfig fields the torch-tensorrt frontend does not pass on (it builds a GPU engine with the compiler's
#: defaults): field -> the option's name. Refused, never dropped silently.
UNSUPPORTED_OPTIONS = {
    "dla_core": "--dla-core", "gpu_fallback": "--gpu-fallback", "version_compatible": "--version-compatible",
    "hardware_compat": "--hardware-compat", "opt_level": "--opt-level", "workspace_mib": "--workspace",
    "timing_cache": "--timing-cache", "calib_cache": "--calib-cache",
}


def check_torch_tensorrt_options(cfg) -> None:  # cfg: BuildConfig (not imported: build imports this module)
    """Refuse the build options this frontend cannot honour, before anything is imported or built."""
    asked = [opt for f, opt in UNSUPPORTED_OPTIONS.items()
             if getattr(cfg, f, None) is not None and getattr(cfg, f) is not False]
    if asked:
        raise GhostedgeError(f"--frontend torch-tensorrt does not support {', '.join(asked)} (it compiles a GPU "
                             "engine with torch-tensorrt's own settings): leave them out, or use the default "
                             "--frontend onnx, which honours them")


def device_info() -> dict:
    import torch

    i = torch.cuda.current_device()
    p = torch.cuda.get_device_properties(i)
    return {"gpu": p.name, "compute_capability": f"{p.major}.{p.minor}", "cuda_runtime": torch.version.cuda,
            "cuda_driver": None}


@dataclass
class TorchTrtSettings:
    """What the torch-tensorrt builder is asked for (built by the build stage from its config)."""

    precision: str                                   # fp32 | fp16 | int8
    batch: tuple[int, int, int]                      # min, opt, max
    img_size: int                                    # the model card's input size (or the build's own)


@dataclass
class TorchTrtEngine:
    """A compiled engine and what it was compiled with."""

    data: bytes
    gpu: dict
    torch_tensorrt: str
    tensorrt: str
    io_dtype: str
    compile_kwargs: list[str]
    calibration: dict | None = None


def check_available(precision: str) -> None:
    """torch-tensorrt (and ModelOpt for INT8) importable and a CUDA device present, before any model is loaded."""
    try:
        import torch
        import torch_tensorrt  # noqa: F401
    except ImportError:
        raise GhostedgeError("torch-tensorrt is not installed: pip install 'ghostedge[torch-tensorrt]' on a "
                             "GPU host, or use the default --frontend onnx") from None
    if precision == Precision.int8:
        try:
            import modelopt.torch.quantization  # noqa: F401
            from modelopt.torch.quantization.utils import export_torch_mode  # noqa: F401
        except ImportError:
            raise GhostedgeError("--frontend torch-tensorrt --int8 quantizes with NVIDIA ModelOpt: pip install "
                                 "nvidia-modelopt, or use the default --frontend onnx (Q/DQ ONNX)") from None
    if not torch.cuda.is_available():
        raise GhostedgeError("--frontend torch-tensorrt needs a CUDA device and a CUDA build of PyTorch")


def compile_engine(model, s: TorchTrtSettings, calib: list | None = None,  # noqa: ANN001 (nn.Module)
                   calib_note: dict | None = None) -> TorchTrtEngine:
    """``torch.export`` then torch-tensorrt's serialized engine, the precision asked for as this torch-tensorrt
    version wants it (``precision_plan``); INT8: ModelOpt Q/DQ calibrated on ``calib`` (NCHW float batches)."""
    import torch
    import torch_tensorrt

    mtq = export_torch_mode = None
    if s.precision == Precision.int8:
        import modelopt.torch.quantization as mtq
        from modelopt.torch.quantization.utils import export_torch_mode
    check_available(s.precision)
    gpu = device_info()
    kwargs, dtype_name = precision_plan(torch_tensorrt.__version__, str(getattr(s.precision, "value", s.precision)))
    dtypes = {"float32": torch.float32, "float16": torch.float16, "int8": torch.int8}
    if "enabled_precisions" in kwargs:
        kwargs["enabled_precisions"] = {dtypes[d] for d in kwargs["enabled_precisions"]}
    dtype = dtypes[dtype_name]
    model = model.cuda().eval().to(dtype)
    img = s.img_size
    b0, b1, b2 = s.batch
    example = torch.randn(b1, 3, img, img, device="cuda", dtype=dtype)
    dims = {"x": {0: torch.export.Dim("batch", min=b0, max=b2)}} if b0 != b2 else None
    inp = torch_tensorrt.Input(min_shape=(b0, 3, img, img), opt_shape=(b1, 3, img, img),
                               max_shape=(b2, 3, img, img), dtype=dtype, name="input")
    if s.precision == Precision.int8:
        xs = calib or []

        def forward_loop(m):  # noqa: ANN001,ANN202
            with torch.no_grad():
                for xb in xs:
                    m(torch.from_numpy(xb).cuda().to(dtype))

        mtq.quantize(model, mtq.INT8_DEFAULT_CFG, forward_loop=forward_loop)
        calib_note = {**(calib_note or {}), "images": sum(len(b) for b in xs), "tool": "modelopt INT8_DEFAULT_CFG"}
    with torch.no_grad():
        if export_torch_mode is not None:
            with export_torch_mode():
                ep = torch.export.export(model, (example,), dynamic_shapes=dims)
        else:
            ep = torch.export.export(model, (example,), dynamic_shapes=dims)
        data = torch_tensorrt.dynamo.convert_exported_program_to_serialized_trt_engine(ep, arg_inputs=[inp], **kwargs)
    import tensorrt

    return TorchTrtEngine(bytes(data), gpu, torch_tensorrt.__version__, tensorrt.__version__, dtype_name,
                          sorted(kwargs), calib_note if s.precision == Precision.int8 else None)


#: a builder of TensorRT engines from the PyTorch checkpoint (no runner of its own: its plans run on tensorrt)
BACKEND = Backend(name="torch_tensorrt", label="trt", loads=("checkpoint",), build=compile_engine,
                  produces="tensorrt")
