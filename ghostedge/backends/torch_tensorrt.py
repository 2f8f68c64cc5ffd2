"""The torch-tensorrt frontend: compile the PyTorch model directly to a serialized TensorRT engine.

FP32 / FP16 through ``torch_tensorrt.convert_method_to_trt_engine``; the engine gets the same manifest
as an ONNX-built one. INT8 goes through the Q/DQ ONNX (the default frontend), which is the artifact
that serves TensorRT 8.5-11 alike.
"""

from __future__ import annotations

import time
from typing import Callable

from ..errors import GhostedgeError, write_bytes_atomic
from ..manifest import write_manifest


def build_torch_tensorrt(cfg, say: Callable[[str], None]):  # noqa: ANN001 (BuildConfig; avoids a cycle)
    from ..build import BuildResult, Precision
    from ..export import onnx_metadata
    from ..model import load_model
    from .tensorrt import gpu_info

    if cfg.precision == Precision.int8:
        raise GhostedgeError("--frontend torch-tensorrt builds FP32/FP16 engines; for INT8 use the default "
                             "--frontend onnx, which builds from the Q/DQ ONNX of ghostedge quantize")
    try:
        import torch
        import torch_tensorrt
    except ImportError:
        raise GhostedgeError("torch-tensorrt is not installed: pip install 'ghostedge[torch-tensorrt]' on a "
                             "GPU host, or use the default --frontend onnx") from None
    gpu = gpu_info()
    if gpu is None or not torch.cuda.is_available():
        raise GhostedgeError("--frontend torch-tensorrt needs a CUDA device and a CUDA build of PyTorch")
    t0 = time.time()
    model, info = load_model(cfg.weights)
    img = cfg.img_size or info.preprocess.input_size
    b0, b1, b2 = cfg.batch
    inp = torch_tensorrt.Input(min_shape=(b0, 3, img, img), opt_shape=(b1, 3, img, img),
                               max_shape=(b2, 3, img, img), dtype=torch.float32, name="input")
    precisions = {torch.float32} | ({torch.float16} if cfg.precision == Precision.fp16 else set())
    data = torch_tensorrt.convert_method_to_trt_engine(model.cuda().eval(), inputs=[inp],
                                                       enabled_precisions=precisions, ir="dynamo")
    out = cfg.out or cfg.engines / "ghostnet.plan"
    write_bytes_atomic(out, bytes(data))
    import tensorrt

    mp = write_manifest(out, {
        "backend": "tensorrt", "frontend": "torch-tensorrt", "torch_tensorrt": torch_tensorrt.__version__,
        "tensorrt": tensorrt.__version__, "precision": cfg.precision.value, "gpu": gpu, "img_size": img,
        "batch": list(cfg.batch), "model": info.to_dict(), "metadata": onnx_metadata(info),
    })
    return BuildResult(out, mp, "tensorrt", cfg.precision.value, round(time.time() - t0, 1))
