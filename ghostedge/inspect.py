"""Per-layer view of an engine, from its backend's inspector (``backends.registry``): TensorRT's engine inspector
for .plan, the graph for ONNX Runtime engines, the compiled model for OpenVINO."""

from __future__ import annotations

from pathlib import Path

from .backends.registry import backend_for_path
from .errors import GhostedgeError


def inspect_path(path: Path) -> list[dict]:
    if not path.is_file():
        raise GhostedgeError(f"engine {path} not found: build it with ghostedge build")
    kind = backend_for_path(path)
    if kind.inspect is None:
        raise GhostedgeError(f"{path}: ghostedge cannot inspect {kind.name} engines")
    return kind.inspect(path)
