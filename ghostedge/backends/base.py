"""One runner interface for every backend (PyTorch, ONNX Runtime, TensorRT).

Subclasses override only the ``*_impl`` methods; ``infer`` takes and returns numpy arrays (NCHW float32
in, logits out), so the harness and the drift code never see a backend's own types.
"""

from __future__ import annotations

import numpy as np


class BaseRunner:
    backend = "base"
    precision = "fp32"

    def __init__(self, name: str):
        self.name = name
        self.active = False

    def activate(self) -> "BaseRunner":
        if not self.active:
            self.activate_impl()
            self.active = True
        return self

    def infer(self, x: np.ndarray) -> np.ndarray:
        if not self.active:
            raise RuntimeError(f"runner {self.name} used before activate()")
        return self.infer_impl(np.ascontiguousarray(x, dtype=np.float32))

    def deactivate(self) -> None:
        if self.active:
            self.deactivate_impl()
            self.active = False

    def __enter__(self) -> "BaseRunner":
        return self.activate()

    def __exit__(self, *exc: object) -> None:
        self.deactivate()

    # --- to override
    def activate_impl(self) -> None:
        raise NotImplementedError

    def infer_impl(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def deactivate_impl(self) -> None:
        pass

    def max_batch(self) -> int | None:
        """The largest batch the engine accepts (None: unbounded)."""
        return None

    def min_batch(self) -> int | None:
        """The smallest batch the engine accepts (None: any)."""
        return None
