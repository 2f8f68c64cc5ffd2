"""A trt.ILogger that keeps TensorRT's messages, for error reports (builder and runtime share it)."""

from __future__ import annotations

from types import ModuleType
from typing import Any


def make_logger(trt: ModuleType) -> Any:
    """A trt.ILogger subclass instance that keeps messages (defined here so nothing touches trt before use)."""

    class GhostedgeLogger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.messages: list[tuple[Any, str]] = []

        def log(self, severity: Any, msg: str) -> None:  # noqa: D401
            self.messages.append((severity, msg))

    return GhostedgeLogger()
