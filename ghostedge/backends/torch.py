"""The FP32 PyTorch model as a runner: the baseline every engine is measured against."""

from __future__ import annotations

import numpy as np

from .base import Backend, BaseRunner, TensorInfo


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

    def io_impl(self) -> tuple[list[TensorInfo], list[TensorInfo]]:
        """Eager PyTorch takes any batch and image size: those dimensions are -1."""
        classes = int(getattr(self.model, "num_classes", -1))
        return [TensorInfo("x", "float32", (-1, 3, -1, -1))], [TensorInfo("logits", "float32", (-1, classes))]


def torch_logits(model, x: np.ndarray, batch: int = 64) -> np.ndarray:  # noqa: ANN001 (nn.Module)
    """The model's logits for all of x, ``batch`` images at a time, under inference mode."""
    import torch

    outs = []
    with torch.inference_mode():
        for i in range(0, len(x), batch):
            outs.append(model(torch.from_numpy(x[i:i + batch])).numpy())
    return np.concatenate(outs) if outs else np.zeros((0, model.num_classes), np.float32)


#: the FP32 baseline: no engine file, no builder (the model itself)
BACKEND = Backend(name="torch", label="pytorch", loads=("checkpoint",))
