"""One runner interface for every backend (PyTorch, ONNX Runtime, TensorRT).

Subclasses override only the ``*_impl`` methods; ``infer`` takes and returns numpy arrays (NCHW float32
in, or uint8 pixels for a uint8-input engine; logits out), so the harness and the drift code never see a
backend's own types.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np


@dataclass(frozen=True)
class TensorInfo:
    """One input or output of an engine as the engine itself declares it: its name, numpy dtype name and shape
    (-1 or a symbol name for a dynamic dimension, as the runtime reports it)."""

    name: str
    dtype: str
    shape: tuple[int | str, ...]


@dataclass(frozen=True)
class Backend:
    """What ghostedge knows about one runtime (one ``backends/<name>``), listed in ``backends.registry``.

    ``suffixes``: the engine files it runs, the one ``build`` writes first; ``loads``: what its builder takes
    ("onnx": the FP32 ONNX, "qdq-onnx": the Q/DQ ONNX, "calibration": the record's ranges, "checkpoint": the
    PyTorch weights); ``open_runner(path, threads=, cuda_graph=, precision_hint=) -> (runner, manifest | None)``;
    ``build``: its builder (the library call that makes an engine; the build stage around it reads the inputs
    and writes the manifest); ``inspect(path) -> per-layer rows``; ``label``: a short name for tables;
    ``produces``: for a builder of another runtime's engines (torch-tensorrt -> tensorrt), that runtime;
    ``fixed_shape`` False: its engines take any batch and image size."""

    name: str
    label: str
    suffixes: tuple[str, ...] = ()
    loads: tuple[str, ...] = ()
    open_runner: Callable[..., tuple["BaseRunner", dict | None]] | None = None
    build: Callable[..., object] | None = None
    inspect: Callable[[Path], list[dict]] | None = None
    produces: str | None = None
    companions: tuple[str, ...] = ()   # files beside the engine that belong to it (OpenVINO's .bin)
    fixed_shape: bool = True     # its engines keep the batch profile / image size their manifest records
    onnx_engine: bool = False    # its engines are ONNX files (carrying ghostedge's ONNX metadata)

    @property
    def engine_suffix(self) -> str:
        """The suffix an engine this backend builds gets (``ghostnet.int8`` + it)."""
        return self.suffixes[0]

    def matches(self, path: Path | str) -> str | None:
        """The longest of its suffixes ``path`` ends with, or None."""
        name = Path(path).name
        hits = [s for s in self.suffixes if name.endswith(s)]
        return max(hits, key=len) if hits else None


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
        # uint8 pixels go to uint8-input engines as they are (``build --input uint8``); all else is float32
        return self.infer_impl(np.ascontiguousarray(x, dtype=np.uint8 if x.dtype == np.uint8 else np.float32))

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

    def inputs_info(self) -> list[TensorInfo]:
        """The engine's inputs (name, dtype, shape) as it declares them; after ``activate``."""
        self._need_active()
        return self.io_impl()[0]

    def outputs_info(self) -> list[TensorInfo]:
        """The engine's outputs (name, dtype, shape) as it declares them; after ``activate``."""
        self._need_active()
        return self.io_impl()[1]

    def _need_active(self) -> None:
        if not self.active:
            raise RuntimeError(f"runner {self.name} used before activate()")

    def io_impl(self) -> tuple[list[TensorInfo], list[TensorInfo]]:
        raise NotImplementedError

    def max_batch(self) -> int | None:
        """The largest batch the engine accepts (None: unbounded)."""
        return None

    def min_batch(self) -> int | None:
        """The smallest batch the engine accepts (None: any)."""
        return None


def logits_in_batches(runner: BaseRunner, x: np.ndarray, batch: int) -> np.ndarray:
    """All of x in chunks the engine accepts; a last chunk below the profile minimum (a static engine,
    a DLA engine) is padded to it with copies of its last image and trimmed afterwards."""
    b = min(batch, runner.max_batch() or batch)
    lo = runner.min_batch() or 1
    b = max(b, lo)
    outs = []
    for i in range(0, len(x), b):
        xb = x[i:i + b]
        n = len(xb)
        if n < lo:
            xb = np.concatenate([xb, np.repeat(xb[-1:], lo - n, axis=0)])
        outs.append(runner.infer(xb)[:n])
    return np.concatenate(outs)
