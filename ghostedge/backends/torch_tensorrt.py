"""The torch-tensorrt frontend: compile the PyTorch model directly to a serialized TensorRT engine.

FP32 / FP16: ``torch.export`` then ``torch_tensorrt.dynamo.convert_exported_program_to_serialized_trt_engine``.
INT8 goes through Q/DQ as Torch-TensorRT documents it: NVIDIA ModelOpt (``mtq.INT8_DEFAULT_CFG``:
per-channel weights, per-tensor activations) inserts and calibrates Q/DQ on the calibration images,
then the exported program is compiled with ``torch.int8`` enabled. The engine stays raw and gets the
same manifest as an ONNX-built one.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

from ..errors import GhostedgeError, write_bytes_atomic
from ..manifest import write_manifest


def _calibration_batches(folder: Path, info, n: int = 512, batch: int = 32):  # noqa: ANN001,ANN202
    from ..data import batches, load_images, normalize, sample_images

    u8, _, _ = load_images(sample_images(folder, n), info.preprocess, what=f"calibration images in {folder}",
                           needed=1)
    return list(batches(normalize(u8, info.preprocess), batch))


def build_torch_tensorrt(cfg, say: Callable[[str], None]):  # noqa: ANN001 (BuildConfig; avoids a cycle)
    from ..build import BuildResult, Precision
    from ..model import load_model
    from .tensorrt import gpu_info

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
    gpu = gpu_info()
    if gpu is None or not torch.cuda.is_available():
        raise GhostedgeError("--frontend torch-tensorrt needs a CUDA device and a CUDA build of PyTorch")
    t0 = time.time()
    model, info = load_model(cfg.weights, spec=cfg.spec)
    model = model.cuda().eval()
    img = cfg.img_size or info.preprocess.input_size
    b0, b1, b2 = cfg.batch
    example = torch.randn(b1, 3, img, img, device="cuda")
    dims = {"x": {0: torch.export.Dim("batch", min=b0, max=b2)}} if b0 != b2 else None
    inp = torch_tensorrt.Input(min_shape=(b0, 3, img, img), opt_shape=(b1, 3, img, img),
                               max_shape=(b2, 3, img, img), dtype=torch.float32, name="input")
    precisions = {torch.float32}
    if cfg.precision == Precision.fp16:
        precisions.add(torch.float16)
    calib_note = None
    if cfg.precision == Precision.int8:
        folder = cfg.calib or Path("calib")
        xs = _calibration_batches(folder, info)

        def forward_loop(m):  # noqa: ANN001,ANN202
            with torch.no_grad():
                for xb in xs:
                    m(torch.from_numpy(xb).cuda())

        mtq.quantize(model, mtq.INT8_DEFAULT_CFG, forward_loop=forward_loop)
        precisions |= {torch.int8, torch.float16}
        calib_note = {"folder": str(folder), "images": sum(len(b) for b in xs), "tool": "modelopt INT8_DEFAULT_CFG"}
    with torch.no_grad():
        if export_torch_mode is not None:
            with export_torch_mode():
                ep = torch.export.export(model, (example,), dynamic_shapes=dims)
        else:
            ep = torch.export.export(model, (example,), dynamic_shapes=dims)
        data = torch_tensorrt.dynamo.convert_exported_program_to_serialized_trt_engine(
            ep, arg_inputs=[inp], enabled_precisions=precisions)
    out = cfg.out or cfg.engines / "ghostnet.plan"
    write_bytes_atomic(out, bytes(data))
    import tensorrt

    mp = write_manifest(out, {
        "backend": "tensorrt", "frontend": "torch-tensorrt", "torch_tensorrt": torch_tensorrt.__version__,
        "tensorrt": tensorrt.__version__, "precision": cfg.precision.value, "gpu": gpu, "img_size": img,
        "batch": list(cfg.batch), "model": info.to_dict(), "calibration": calib_note,
    })
    say(f"compiled with torch-tensorrt {torch_tensorrt.__version__} in {time.time() - t0:.0f}s")
    return BuildResult(out, mp, "tensorrt", cfg.precision.value, round(time.time() - t0, 1))
