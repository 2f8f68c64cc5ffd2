"""Types the build stage and every backend share; below both, so backends import nothing above them."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path


class Backend(str, Enum):
    auto = "auto"
    tensorrt = "tensorrt"
    onnxruntime = "onnxruntime"
    openvino = "openvino"


class Frontend(str, Enum):
    """What a TensorRT engine is compiled from."""
    onnx = "onnx"                        # the (Q/DQ) ONNX, TensorRT's parser
    torch_tensorrt = "torch-tensorrt"    # the PyTorch model, torch-tensorrt's compiler


class Precision(str, Enum):
    fp32 = "fp32"
    fp16 = "fp16"
    int8 = "int8"


@dataclass
class BuildResult:
    engine: Path
    manifest: Path
    backend: str
    precision: str
    seconds: float
    notes: list[str] = field(default_factory=list)
    trtexec: str | None = None
    dla_fallback_layers: list[str] = field(default_factory=list)
