"""Runs a serialized TensorRT engine (name-based I/O, the binding API where only it exists)."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from ...errors import GhostedgeError
from ..base import BaseRunner, TensorInfo
from ..cuda import Cuda
from .logger import make_logger
from .version import import_tensorrt

class TensorRTRunner(BaseRunner):
    """Runs a serialized engine with name-based I/O (execute_async_v3), the binding API where only it exists.

    Device buffers are allocated once, at the profile's largest shape, so their addresses never change:
    a captured CUDA graph replays the addresses it was captured with (``--cuda-graph``).
    """

    backend = "tensorrt"

    def __init__(self, path: str | Path, name: str | None = None, trt: ModuleType | None = None,
                 cuda: Any = None, cuda_graph: bool = False, dla_core: int | None = None,
                 version_compatible: bool = False):
        super().__init__(name or Path(path).name)
        self.path = Path(path)
        self._trt = trt
        self._cuda = cuda
        self.cuda_graph = cuda_graph
        self.dla_core = dla_core
        self.version_compatible = version_compatible
        self._graphs: dict[tuple, Any] = {}
        self._no_graph: set[tuple] = set()   # shapes whose capture failed: they run without a graph
        self.warnings: list[str] = []
        self.gpu_ms: list[float] = []     # GPU compute time of each infer (CUDA events)

    def activate_impl(self) -> None:
        trt = self._trt or import_tensorrt()
        self.trt = trt
        self.cu = self._cuda or Cuda()
        if self.cu.device_count() < 1:
            raise GhostedgeError("no CUDA device found: run TensorRT engines on the GPU they were built for")
        self.logger = make_logger(trt)
        self.runtime = trt.Runtime(self.logger)
        if self.dla_core is not None:  # before deserializing: the runtime's core (default -1) is where it runs
            self.runtime.DLA_core = int(self.dla_core)
        if self.version_compatible:  # the lean runtime inside the plan is host code (as Polygraphy allows it)
            if not hasattr(type(self.runtime), "engine_host_code_allowed"):
                raise GhostedgeError(f"{self.path} is version-compatible, which TensorRT {trt.__version__} cannot "
                                     "run (needs 8.6 or later): rebuild it here with ghostedge build")
            self.runtime.engine_host_code_allowed = True
        self.engine = self.runtime.deserialize_cuda_engine(self.path.read_bytes())
        if self.engine is None:
            raise GhostedgeError(f"{self.path}: TensorRT could not deserialize it (built by another TensorRT "
                                 "version or GPU?): rebuild here with ghostedge build")
        self.context = self.engine.create_execution_context()
        self.v3 = hasattr(self.context, "execute_async_v3") and hasattr(self.engine, "num_io_tensors")
        if self.v3:
            names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
            self.inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
            self.outputs = [n for n in names if n not in self.inputs]
            prof = self.engine.get_tensor_profile_shape(self.inputs[0], 0)
        else:  # the binding-index API (TensorRT 8.x only)
            self.inputs = [self.engine.get_binding_name(i) for i in range(self.engine.num_bindings)
                           if self.engine.binding_is_input(i)]
            self.outputs = [self.engine.get_binding_name(i) for i in range(self.engine.num_bindings)
                            if not self.engine.binding_is_input(i)]
            prof = self.engine.get_profile_shape(0, 0)
        self.min_shape, self.max_shape = tuple(prof[0]), tuple(prof[2])
        # an engine compiled from an FP16 model (torch-tensorrt >= 2.10) has FP16 I/O; one built with
        # --input uint8 takes uint8 pixels
        half, u8 = getattr(trt.DataType, "HALF", None), getattr(trt.DataType, "UINT8", None)

        def np_of(n: str) -> type:
            dt = self.engine.get_tensor_dtype(n) if self.v3 else None   # the binding API: float32 I/O only
            return np.float16 if half is not None and dt == half else np.uint8 if u8 is not None and dt == u8 \
                else np.float32
        self.in_dtype, self.out_dtype = np_of(self.inputs[0]), np_of(self.outputs[0])
        self.stream = self.cu.stream()
        self.ev = (self.cu.event(), self.cu.event())
        # buffers at the largest shape, once: stable addresses for CUDA-graph replay
        self._set_shape(self.max_shape)
        self._in_bytes = int(np.prod(self.max_shape)) * np.dtype(self.in_dtype).itemsize
        self._out_bytes = int(np.prod(self._out_shape())) * np.dtype(self.out_dtype).itemsize
        self.d_in = self.cu.malloc(self._in_bytes)
        self.d_out = self.cu.malloc(self._out_bytes)

    def io_impl(self) -> tuple[list[TensorInfo], list[TensorInfo]]:
        """Names and dtypes as the engine declares them; a batch the profile lets vary is -1."""
        dyn = self.min_shape[0] != self.max_shape[0]
        self._set_shape(self.max_shape)
        out = self._out_shape()
        in_shape = ((-1,) if dyn else (int(self.max_shape[0]),)) + tuple(int(d) for d in self.max_shape[1:])
        out_shape = ((-1,) if dyn else (int(out[0]),)) + tuple(out[1:])
        return ([TensorInfo(n, np.dtype(self.in_dtype).name, in_shape) for n in self.inputs],
                [TensorInfo(n, np.dtype(self.out_dtype).name, out_shape) for n in self.outputs])

    def max_batch(self) -> int | None:
        return int(self.max_shape[0])

    def min_batch(self) -> int | None:
        return int(self.min_shape[0])

    def _set_shape(self, shape: tuple) -> None:
        ok = self.context.set_input_shape(self.inputs[0], tuple(shape)) if self.v3 else \
            self.context.set_binding_shape(0, tuple(shape))
        if ok is False:
            raise GhostedgeError(f"TensorRT refused input shape {tuple(shape)} (profile {self.min_shape} .. "
                                 f"{self.max_shape}): bench a batch inside the engine's profile")

    def _out_shape(self) -> tuple:
        shape = self.context.get_tensor_shape(self.outputs[0]) if self.v3 else self.context.get_binding_shape(1)
        return tuple(int(d) for d in shape)

    def infer_impl(self, x: np.ndarray) -> np.ndarray:
        if not self.min_shape[0] <= x.shape[0] <= self.max_shape[0]:
            raise GhostedgeError(f"batch {x.shape[0]} is outside the engine's profile (batch {self.min_shape[0]}.."
                                 f"{self.max_shape[0]}): rebuild with --batch {min(x.shape[0], self.min_shape[0])}:"
                                 f"{x.shape[0]}:{max(x.shape[0], self.max_shape[0])} or bench batches inside it")
        cu, st = self.cu, self.stream
        x = np.ascontiguousarray(x, dtype=self.in_dtype)
        self._set_shape(x.shape)
        y = np.empty(self._out_shape(), self.out_dtype)
        if x.nbytes > self._in_bytes or y.nbytes > self._out_bytes:
            raise GhostedgeError(f"input {x.shape} does not fit the engine's profile {self.max_shape}")
        cu.h2d(self.d_in, x, st)
        cu.record(self.ev[0], st)
        ok = True
        if self.v3:
            self.context.set_tensor_address(self.inputs[0], int(self.d_in))
            self.context.set_tensor_address(self.outputs[0], int(self.d_out))
            key = tuple(x.shape)
            if self.cuda_graph and key in self._graphs:
                cu.launch_graph(self._graphs[key], st)
            else:
                ok = self.context.execute_async_v3(cu.stream_handle(st))
                if self.cuda_graph and ok and key not in self._no_graph:
                    # capture after a first plain run (TensorRT's recommendation); the enqueue's result under
                    # capture decides: a failed one gives no graph, and this shape runs without one
                    g = cu.capture(st, lambda: bool(self.context.execute_async_v3(cu.stream_handle(st))))
                    if g is None:
                        self._no_graph.add(key)
                        self.warnings.append(f"CUDA graph capture failed for input {key}: running it without a "
                                             "graph (as trtexec --useCudaGraph does)")
                    else:
                        self._graphs[key] = g
        else:
            ok = self.context.execute_async_v2([int(self.d_in), int(self.d_out)], cu.stream_handle(st))
        cu.record(self.ev[1], st)
        cu.d2h(y, self.d_out, st)
        cu.sync(st)
        if not ok:
            raise GhostedgeError("TensorRT execution failed: rerun with --debug and check the TensorRT log")
        self.gpu_ms.append(cu.elapsed_ms(*self.ev))
        return y.astype(np.float32, copy=False)

    def deactivate_impl(self) -> None:
        for g in self._graphs.values():
            if hasattr(self.cu, "destroy_graph"):
                self.cu.destroy_graph(g)
        self._graphs.clear()
        for b in (getattr(self, "d_in", None), getattr(self, "d_out", None)):
            if b is not None:
                self.cu.free(b)
        self.d_in = self.d_out = None
        for ev in getattr(self, "ev", None) or ():
            self.cu.destroy_event(ev)
        if getattr(self, "stream", None) is not None:
            self.cu.destroy_stream(self.stream)
        self.ev, self.stream = (), None
        self.context = self.engine = self.runtime = None
