"""TensorRT: one code path for TensorRT 8.5/8.6 (JetPack 5/6.0), 10.x (JetPack 6.1+/7, PyPI) and 11.x.

Nothing here imports ``tensorrt`` at module load: every function takes the module (``trt``) or imports
it lazily, so ``import ghostedge`` works where TensorRT is absent, and contract tests can pass a
module built from a real version's API surface. Names are chosen by feature (``hasattr``), never by
hard-coded enum integers, because those move between majors.

Precision, per version:
- 8.5 - 10.11 (weakly typed): FP16 via ``BuilderFlag.FP16``; INT8 from the Q/DQ ONNX with
  ``BuilderFlag.INT8`` (+FP16 for the layers left in float), or implicit INT8 from the legacy
  calibration cache (``--calib-cache``).
- 10.12+ (precision flags deprecated) and 11.x (flags removed, always strongly typed): the network
  is strongly typed; FP16 comes from an FP16-typed ONNX, INT8 from an FP16-typed Q/DQ ONNX (opset 19,
  FP16 scales), both written by ``fp16_onnx`` before parsing. I/O stays FP32.

Rooms (as Polygraphy's ``backend/trt/``): ``version`` (release rules), ``builder`` (ONNX -> plan), ``runner``
(plan -> logits), ``inspect`` (per-layer view); CUDA lives apart in ``backends/cuda.py``.
"""

from __future__ import annotations

from ..base import Backend
from .builder import TrtBuildReport, TrtBuildSettings, build_serialized, make_cache_calibrator
from .inspect import datatype_precision, inspect_engine, inspect_plan, layer_rows, tensor_precision
from .loader import open_engine
from .runner import TensorRTRunner
from .version import (HINT_NO_TRT, check_plan_manifest, dla_explicit_int8, dla_supported, gpu_can_load, has_flag,
                      import_tensorrt, runtime_can_load, use_strong_typing, version_tuple)

__all__ = ["HINT_NO_TRT", "TensorRTRunner", "TrtBuildReport", "TrtBuildSettings", "build_serialized",
           "check_plan_manifest", "datatype_precision", "dla_explicit_int8", "dla_supported", "gpu_can_load",
           "has_flag", "import_tensorrt", "inspect_engine", "inspect_plan", "layer_rows", "make_cache_calibrator",
           "open_engine", "runtime_can_load", "tensor_precision", "use_strong_typing", "version_tuple"]

BACKEND = Backend(name="tensorrt", label="trt", suffixes=(".plan", ".engine"), loads=("onnx", "qdq-onnx"),
                  open_runner=open_engine, build=build_serialized, inspect=inspect_plan)
