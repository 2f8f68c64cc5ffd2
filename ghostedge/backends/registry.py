"""The backends ghostedge knows, one ``Backend`` descriptor per ``backends/<name>`` (its ``BACKEND``).

Every stage asks this registry which runtime an engine file belongs to (``backend_for_path``), how to open,
build or inspect it, and what to call it in a table; nothing else matches file suffixes. Adding a backend is
its own module (with a ``BACKEND``) plus one line in ``_modules``.
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

from ..errors import GhostedgeError
from .base import Backend

__all__ = ["Backend", "all_backends", "backend_for_path", "get", "engine_suffixes", "strip_engine_suffix"]


def _modules() -> tuple[ModuleType, ...]:
    from . import onnxruntime, openvino, tensorrt, torch, torch_tensorrt

    return (tensorrt, torch_tensorrt, onnxruntime, openvino, torch)


def all_backends() -> dict[str, Backend]:
    """name -> descriptor, in the order above."""
    return {m.BACKEND.name: m.BACKEND for m in _modules()}


def get(name: str) -> Backend:
    """The descriptor called ``name`` ("tensorrt", "onnxruntime", ...)."""
    known = all_backends()
    try:
        return known[str(getattr(name, "value", name))]
    except KeyError:
        raise GhostedgeError(f"unknown backend {name!r}: ghostedge knows {', '.join(known)}") from None


def engine_suffixes() -> list[str]:
    """Every engine suffix some backend runs, longest first."""
    return sorted({s for b in all_backends().values() for s in b.suffixes}, key=len, reverse=True)


def backend_for_path(path: Path | str) -> Backend:
    """The backend whose engines end like ``path`` (the longest matching suffix wins: .ort.onnx before .onnx)."""
    hits = [(len(s), b) for b in all_backends().values() if b.open_runner is not None and (s := b.matches(path))]
    if not hits:
        kinds = ", ".join(f"{b.name} {'/'.join(b.suffixes)}" for b in all_backends().values() if b.suffixes)
        raise GhostedgeError(f"{path}: unknown engine kind {Path(path).suffix!r}: pass an engine file of one of "
                             f"ghostedge's backends ({kinds})")
    return max(hits, key=lambda h: h[0])[1]


def strip_engine_suffix(name: str) -> str:
    """A file name without its engine suffix ('ghostnet.int8.ort.onnx' -> 'ghostnet.int8')."""
    for s in engine_suffixes():
        if name.endswith(s):
            return name[: -len(s)]
    return name
