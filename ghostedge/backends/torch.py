"""The FP32 PyTorch model as a runner: the baseline every engine is measured against."""

from __future__ import annotations

import numpy as np

from .base import BaseRunner


class TorchRunner(BaseRunner):
    """Eager FP32, eval mode, inference mode, default memory format (what a user's PyTorch does)."""

    backend = "torch"

    def __init__(self, model, name: str = "pytorch-fp32", threads: int = 0):  # noqa: ANN001
        super().__init__(name)
        self.model = model
        self.threads = threads

    def activate_impl(self) -> None:
        import torch

        self._prev_threads = torch.get_num_threads()
        if self.threads:
            torch.set_num_threads(self.threads)
        self.model.eval()

    def infer_impl(self, x: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            return self.model(torch.from_numpy(x)).numpy()

    def deactivate_impl(self) -> None:
        import torch

        torch.set_num_threads(self._prev_threads)
