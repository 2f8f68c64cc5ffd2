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

import time
from pathlib import Path
from typing import Any, Callable

from ..errors import GhostedgeError, write_bytes_atomic
from ..manifest import write_manifest
from .common import BuildResult, Precision


def _calibration_batches(folder: Path, info, n: int = 512, batch: int = 32):  # noqa: ANN001,ANN202
    from ..data import batches, load_images, normalize, sample_images

    u8, _, _ = load_images(sample_images(folder, n), info.preprocess, what=f"calibration images in {folder}",
                           needed=1)
    return list(batches(normalize(u8, info.preprocess), batch))


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


def build_torch_tensorrt(cfg, say: Callable[[str], None]) -> BuildResult:  # noqa: ANN001 (BuildConfig)
    from ..model import load_model

    try:
        import torch
        import torch_tensorrt
    except ImportError:
        raise GhostedgeError("torch-tensorrt is not installed: pip install 'ghostedge[torch-tensorrt]' on a "
                             "GPU host, or use the default --frontend onnx") from None
    mtq = export_torch_mode = None
    if cfg.precision == Precision.int8:
        try:
            import modelopt.torch.quantization as mtq
            from modelopt.torch.quantization.utils import export_torch_mode
        except ImportError:
            raise GhostedgeError("--frontend torch-tensorrt --int8 quantizes with NVIDIA ModelOpt: pip install "
                                 "nvidia-modelopt, or use the default --frontend onnx (Q/DQ ONNX)") from None
    if not torch.cuda.is_available():
        raise GhostedgeError("--frontend torch-tensorrt needs a CUDA device and a CUDA build of PyTorch")
    gpu = device_info()
    t0 = time.time()
    kwargs, dtype_name = precision_plan(torch_tensorrt.__version__, cfg.precision.value)
    dtypes = {"float32": torch.float32, "float16": torch.float16, "int8": torch.int8}
    if "enabled_precisions" in kwargs:
        kwargs["enabled_precisions"] = {dtypes[d] for d in kwargs["enabled_precisions"]}
    dtype = dtypes[dtype_name]
    model, info = load_model(cfg.weights, spec=cfg.spec)
    model = model.cuda().eval().to(dtype)
    img = cfg.img_size or info.preprocess.input_size
    b0, b1, b2 = cfg.batch  # resolved by build() (1:8:32 unless --batch)
    example = torch.randn(b1, 3, img, img, device="cuda", dtype=dtype)
    dims = {"x": {0: torch.export.Dim("batch", min=b0, max=b2)}} if b0 != b2 else None
    inp = torch_tensorrt.Input(min_shape=(b0, 3, img, img), opt_shape=(b1, 3, img, img),
                               max_shape=(b2, 3, img, img), dtype=dtype, name="input")
    calib_note = None
    if cfg.precision == Precision.int8:
        folder = cfg.calib or Path("calib")
        xs = _calibration_batches(folder, info)

        def forward_loop(m):  # noqa: ANN001,ANN202
            with torch.no_grad():
                for xb in xs:
                    m(torch.from_numpy(xb).cuda().to(dtype))

        mtq.quantize(model, mtq.INT8_DEFAULT_CFG, forward_loop=forward_loop)
        calib_note = {"folder": str(folder), "images": sum(len(b) for b in xs), "tool": "modelopt INT8_DEFAULT_CFG"}
    with torch.no_grad():
        if export_torch_mode is not None:
            with export_torch_mode():
                ep = torch.export.export(model, (example,), dynamic_shapes=dims)
        else:
            ep = torch.export.export(model, (example,), dynamic_shapes=dims)
        data = torch_tensorrt.dynamo.convert_exported_program_to_serialized_trt_engine(ep, arg_inputs=[inp], **kwargs)
    out = cfg.out or cfg.engines / "ghostnet.plan"
    write_bytes_atomic(out, bytes(data))
    import tensorrt

    mp = write_manifest(out, {
        "backend": "tensorrt", "frontend": "torch-tensorrt", "torch_tensorrt": torch_tensorrt.__version__,
        "tensorrt": tensorrt.__version__, "precision": cfg.precision.value, "gpu": gpu, "img_size": img,
        "batch": [b0, b1, b2], "model": info.to_dict(), "calibration": calib_note,
        "io_dtype": dtype_name, "compile_kwargs": sorted(kwargs),
    })
    say(f"compiled with torch-tensorrt {torch_tensorrt.__version__} in {time.time() - t0:.0f}s")
    return BuildResult(out, mp, "tensorrt", cfg.precision.value, round(time.time() - t0, 1))
