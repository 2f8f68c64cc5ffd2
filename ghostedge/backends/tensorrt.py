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
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from ..errors import GhostedgeError, write_bytes_atomic
from .base import BaseRunner

HINT_NO_TRT = ("build on the target board (JetPack ships TensorRT; on x86 GPU hosts: pip install "
               "'ghostedge[tensorrt]'), after copying engines/*.onnx and engines/ghostnet.calib.* there; "
               "or use --backend onnxruntime on this machine")


def import_tensorrt() -> ModuleType:
    try:
        import tensorrt as trt  # noqa: PLC0415
    except ImportError:
        raise GhostedgeError(f"TensorRT is not installed here: {HINT_NO_TRT}") from None
    return trt


def version_tuple(trt: ModuleType) -> tuple[int, int, int]:
    parts = (str(getattr(trt, "__version__", "0.0.0")).split(".") + ["0", "0"])[:3]
    return tuple(int("".join(ch for ch in p if ch.isdigit()) or 0) for p in parts)  # type: ignore[return-value]


def has_flag(trt: ModuleType, name: str) -> bool:
    """Whether BuilderFlag has ``name`` (looked up in ``__members__``, so probing is not using)."""
    members = getattr(trt.BuilderFlag, "__members__", None)
    return name in members if members is not None else hasattr(trt.BuilderFlag, name)


def use_strong_typing(trt: ModuleType, precision: str, calib_cache: bool, dla: bool) -> bool:
    """Strongly typed where the precision flags are gone (11) or deprecated (10.12+)."""
    if calib_cache:
        return False  # implicit INT8 needs a weakly typed network
    major, minor, _ = version_tuple(trt)
    if not has_flag(trt, "FP16"):
        return True
    if dla:
        return False  # DLA builds on JetPack 5/6 want the precision flags
    return (major, minor) >= (10, 12) and precision != "fp32"


@dataclass
class TrtBuildSettings:
    precision: str = "fp16"                 # fp32 | fp16 | int8
    input_name: str = "input"
    batch: tuple[int, int, int] = (1, 8, 32)
    img_size: int = 224
    workspace: int | None = None             # bytes
    dla_core: int | None = None
    gpu_fallback: bool = False
    timing_cache: Path | None = None
    opt_level: int | None = None
    hardware_compat: bool = False
    version_compatible: bool = False
    calib_cache: bytes | None = None         # legacy cache content: implicit INT8 (TensorRT < 11)


@dataclass
class TrtBuildReport:
    version: str
    strongly_typed: bool
    flags: list[str] = field(default_factory=list)
    dla_fallback_layers: list[str] = field(default_factory=list)
    parser_warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0


class _Logger:
    """Factory for a trt.ILogger subclass that keeps messages (for error reports)."""

    @staticmethod
    def make(trt: ModuleType) -> Any:
        class GhostedgeLogger(trt.ILogger):
            def __init__(self) -> None:
                trt.ILogger.__init__(self)
                self.messages: list[tuple[Any, str]] = []

            def log(self, severity: Any, msg: str) -> None:  # noqa: D401
                self.messages.append((severity, msg))

        return GhostedgeLogger()


def make_cache_calibrator(trt: ModuleType, cache: bytes, batch: int) -> Any:
    """An IInt8EntropyCalibrator2 that serves a calibration cache and no images (TensorRT < 11)."""
    if not hasattr(trt, "IInt8EntropyCalibrator2"):
        raise GhostedgeError(f"TensorRT {trt.__version__} has no implicit INT8 calibration (removed in 11): "
                             "build INT8 from the Q/DQ ONNX instead (leave out --calib-cache)")

    class CacheCalibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self) -> None:
            trt.IInt8EntropyCalibrator2.__init__(self)

        def get_batch_size(self) -> int:
            return batch

        def get_batch(self, names: list[str]) -> None:
            return None   # everything comes from the cache

        def read_calibration_cache(self) -> bytes:
            return cache

        def write_calibration_cache(self, cache: bytes) -> None:
            return None

    return CacheCalibrator()


def _parse(trt: ModuleType, network: Any, logger: Any, onnx_bytes: bytes) -> None:
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_bytes):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        listing = "; ".join(f"[{i + 1}] {e}" for i, e in enumerate(errors)) or "no detail given"
        raise GhostedgeError(f"TensorRT's ONNX parser rejected the model ({len(errors)} error(s)): {listing}: "
                             "re-export with ghostedge quantize / export, or report the listed node")


def build_serialized(trt: ModuleType, onnx_bytes: bytes, s: TrtBuildSettings) -> tuple[bytes, TrtBuildReport]:
    """Parse ONNX, configure, build. Returns the serialized engine and what was done."""
    t0 = time.time()
    major, _, _ = version_tuple(trt)
    dla = s.dla_core is not None
    if dla and s.precision == "fp32":
        raise GhostedgeError("DLA runs FP16 or INT8 only: pass --fp16 or --int8 with --dla-core")
    if s.calib_cache is not None and not hasattr(trt, "IInt8EntropyCalibrator2"):
        raise GhostedgeError(f"--calib-cache: TensorRT {trt.__version__} removed implicit INT8 calibration: "
                             "leave out --calib-cache to build from the Q/DQ ONNX")
    strong = use_strong_typing(trt, s.precision, s.calib_cache is not None, dla)
    rep = TrtBuildReport(version=str(trt.__version__), strongly_typed=strong)
    logger = _Logger.make(trt)
    builder = trt.Builder(logger)
    flags = 0
    ncf = trt.NetworkDefinitionCreationFlag
    if major < 10 and hasattr(ncf, "EXPLICIT_BATCH"):
        flags |= 1 << int(ncf.EXPLICIT_BATCH)
    if strong and major < 11 and hasattr(ncf, "STRONGLY_TYPED"):
        flags |= 1 << int(ncf.STRONGLY_TYPED)
    network = builder.create_network(flags)
    _parse(trt, network, logger, onnx_bytes)

    config = builder.create_builder_config()
    if s.workspace:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(s.workspace))
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
    profile = builder.create_optimization_profile()
    b0, b1, b2 = s.batch
    shp = lambda b: (b, 3, s.img_size, s.img_size)  # noqa: E731
    profile.set_shape(s.input_name, shp(b0), shp(b1), shp(b2))
    config.add_optimization_profile(profile)
    if s.opt_level is not None:
        config.builder_optimization_level = int(s.opt_level)
    if s.hardware_compat:
        config.hardware_compatibility_level = trt.HardwareCompatibilityLevel.AMPERE_PLUS
    if s.version_compatible:
        config.set_flag(trt.BuilderFlag.VERSION_COMPATIBLE)
        rep.flags.append("VERSION_COMPATIBLE")

    def flag(name: str) -> None:
        config.set_flag(getattr(trt.BuilderFlag, name))
        rep.flags.append(name)

    if not strong:
        if s.precision in ("fp16", "int8"):
            flag("FP16")
        if s.precision == "int8":
            flag("INT8")
    if s.calib_cache is not None:
        config.int8_calibrator = make_cache_calibrator(trt, s.calib_cache, b1)
        if hasattr(config, "set_calibration_profile"):
            config.set_calibration_profile(profile)

    if dla:
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = int(s.dla_core)
        if s.gpu_fallback:
            flag("GPU_FALLBACK")
        for i in range(network.num_layers):
            layer = network.get_layer(i)
            if not config.can_run_on_DLA(layer):
                rep.dla_fallback_layers.append(layer.name)
        if rep.dla_fallback_layers and not s.gpu_fallback:
            shown = ", ".join(rep.dla_fallback_layers[:5])
            raise GhostedgeError(f"{len(rep.dla_fallback_layers)} layer(s) cannot run on DLA ({shown}): pass "
                                 "--gpu-fallback to run them on the GPU, or build without --dla-core")

    cache = None
    if s.timing_cache is not None:
        data = s.timing_cache.read_bytes() if s.timing_cache.is_file() else b""
        cache = config.create_timing_cache(data)
        config.set_timing_cache(cache, False)

    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        errs = [m for sev, m in logger.messages if "ERROR" in str(sev)]
        raise GhostedgeError("TensorRT could not build the engine" + (f" ({'; '.join(errs[-3:])})" if errs else "")
                             + ": lower --workspace demands, try --opt-level 3, or rerun with --debug")
    if cache is not None and s.timing_cache is not None:
        write_bytes_atomic(s.timing_cache, bytes(config.get_timing_cache().serialize()))
    rep.seconds = round(time.time() - t0, 1)
    return bytes(serialized), rep


# ---------------------------------------------------------------------------------------------
# engine inspection

def inspect_engine(trt: ModuleType, engine: Any) -> list[dict]:
    """Per-layer records from the engine inspector (needs ProfilingVerbosity.DETAILED at build)."""
    import json as _json

    insp = engine.create_engine_inspector()
    raw = insp.get_engine_information(trt.LayerInformationFormat.JSON)
    info = _json.loads(raw) if raw else {}
    rows = []
    for layer in info.get("Layers", []):
        if isinstance(layer, str):  # built without DETAILED verbosity: names only
            rows.append({"name": layer, "type": "?", "precision": "?", "device": "?", "tactic": "?"})
            continue
        outs = layer.get("Outputs") or [{}]
        prec = str(outs[0].get("Format/Datatype", "?"))
        rows.append({
            "name": layer.get("Name", "?"),
            "type": layer.get("LayerType", "?"),
            "precision": prec,
            "device": "DLA" if "DLA" in str(layer.get("LayerType", "")) or "ForeignNode" in str(layer.get("LayerType", "")) else "GPU",
            "tactic": str(layer.get("TacticName", layer.get("TacticValue", "?"))),
        })
    return annotate_layers(rows)


def annotate_layers(rows: list[dict]) -> list[dict]:
    """Flag FP32 fallbacks, reformat layers and (for DLA engines) GPU-resident layers."""
    any_dla = any(r["device"] == "DLA" for r in rows)
    for r in rows:
        flags = []
        p = r["precision"].lower()
        if ("float" in p or "fp32" in p) and "half" not in p and r["type"] not in ("Reformat", "Shuffle"):
            flags.append("fp32")
        if r["type"] == "Reformat" or "reformat" in r["name"].lower():
            flags.append("reformat")
        if any_dla and r["device"] == "GPU":
            flags.append("dla->gpu")
        r["flags"] = flags
    return rows


# ---------------------------------------------------------------------------------------------
# CUDA: cuda-python first, pycuda where that is what the board has

class _Cuda:
    """The few CUDA runtime calls a runner needs, over cuda-python (cudart) or pycuda."""

    def __init__(self) -> None:
        self.cudart = None
        self.pycuda = None
        try:
            try:
                from cuda.bindings import runtime as cudart  # cuda-python >= 12.6
            except ImportError:
                from cuda import cudart  # older cuda-python
            self.cudart = cudart
        except ImportError:
            try:
                import pycuda.autoinit  # noqa: F401
                import pycuda.driver as drv
                self.pycuda = drv
            except ImportError:
                raise GhostedgeError("no CUDA Python binding: pip install cuda-python (or use the board's "
                                     "pycuda) to run TensorRT engines") from None

    def _ck(self, res: Any) -> Any:
        err = res[0] if isinstance(res, tuple) else res
        if int(err) != 0:
            raise GhostedgeError(f"CUDA call failed ({err}): check the GPU with nvidia-smi / tegrastats")
        if isinstance(res, tuple):
            return res[1] if len(res) == 2 else res[1:]
        return None

    def device_count(self) -> int:
        if self.cudart is not None:
            err, n = self.cudart.cudaGetDeviceCount()
            return int(n) if int(err) == 0 else 0
        return self.pycuda.Device.count()

    def malloc(self, nbytes: int) -> int:
        if self.cudart is not None:
            return int(self._ck(self.cudart.cudaMalloc(nbytes)))
        return self.pycuda.mem_alloc(nbytes)

    def free(self, ptr: Any) -> None:
        if self.cudart is not None:
            self.cudart.cudaFree(ptr)
        else:
            ptr.free()

    def stream(self) -> Any:
        if self.cudart is not None:
            return self._ck(self.cudart.cudaStreamCreate())
        return self.pycuda.Stream()

    def stream_handle(self, st: Any) -> int:
        return int(st) if self.cudart is not None else st.handle

    def h2d(self, dst: Any, arr: np.ndarray, st: Any) -> None:
        if self.cudart is not None:
            self._ck(self.cudart.cudaMemcpyAsync(dst, arr.ctypes.data, arr.nbytes,
                                                 self.cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, st))
        else:
            self.pycuda.memcpy_htod_async(dst, arr, st)

    def d2h(self, arr: np.ndarray, src: Any, st: Any) -> None:
        if self.cudart is not None:
            self._ck(self.cudart.cudaMemcpyAsync(arr.ctypes.data, src, arr.nbytes,
                                                 self.cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost, st))
        else:
            self.pycuda.memcpy_dtoh_async(arr, src, st)

    def sync(self, st: Any) -> None:
        if self.cudart is not None:
            self._ck(self.cudart.cudaStreamSynchronize(st))
        else:
            st.synchronize()

    def event(self) -> Any:
        if self.cudart is not None:
            return self._ck(self.cudart.cudaEventCreate())
        return self.pycuda.Event()

    def record(self, ev: Any, st: Any) -> None:
        if self.cudart is not None:
            self._ck(self.cudart.cudaEventRecord(ev, st))
        else:
            ev.record(st)

    def elapsed_ms(self, a: Any, b: Any) -> float:
        if self.cudart is not None:
            self._ck(self.cudart.cudaEventSynchronize(b))
            return float(self._ck(self.cudart.cudaEventElapsedTime(a, b)))
        b.synchronize()
        return float(b.time_since(a))

    def capture(self, st: Any, launch: Any) -> Any:
        """Record what ``launch()`` enqueues on ``st`` into an executable CUDA graph (cuda-python only)."""
        if self.cudart is None:
            raise GhostedgeError("--cuda-graph needs cuda-python (pycuda has no stream capture here)")
        rt = self.cudart
        self._ck(rt.cudaStreamBeginCapture(st, rt.cudaStreamCaptureMode.cudaStreamCaptureModeGlobal))
        launch()
        graph = self._ck(rt.cudaStreamEndCapture(st))
        return self._ck(rt.cudaGraphInstantiate(graph, 0))

    def launch_graph(self, g: Any, st: Any) -> None:
        self._ck(self.cudart.cudaGraphLaunch(g, st))

    def device_info(self) -> dict:
        if self.cudart is not None:
            props = self._ck(self.cudart.cudaGetDeviceProperties(0))
            name = props.name.decode() if isinstance(props.name, bytes) else str(props.name)
            _, drv = self.cudart.cudaDriverGetVersion()
            _, rt = self.cudart.cudaRuntimeGetVersion()
            return {"gpu": name.strip("\x00 "), "compute_capability": f"{props.major}.{props.minor}",
                    "cuda_driver": _cuda_ver(drv), "cuda_runtime": _cuda_ver(rt)}
        d = self.pycuda.Device(0)
        cc = d.compute_capability()
        return {"gpu": d.name(), "compute_capability": f"{cc[0]}.{cc[1]}",
                "cuda_driver": _cuda_ver(self.pycuda.get_driver_version()), "cuda_runtime": None}


def _cuda_ver(v: int) -> str:
    return f"{v // 1000}.{(v % 1000) // 10}"


def gpu_info() -> dict | None:
    """The first CUDA device, or None when there is none (or no binding to ask)."""
    try:
        cu = _Cuda()
        if cu.device_count() < 1:
            return None
        return cu.device_info()
    except (GhostedgeError, ImportError, OSError, RuntimeError):
        return None


class TensorRTRunner(BaseRunner):
    """Runs a serialized engine with name-based I/O (execute_async_v3), the binding API where only it exists."""

    backend = "tensorrt"

    def __init__(self, path: str | Path, name: str | None = None, trt: ModuleType | None = None,
                 cuda: Any = None, cuda_graph: bool = False):
        super().__init__(name or Path(path).name)
        self.path = Path(path)
        self._trt = trt
        self._cuda = cuda
        self.cuda_graph = cuda_graph
        self._graphs: dict[tuple, Any] = {}
        self.gpu_ms: list[float] = []     # GPU compute time of each infer (CUDA events)

    def activate_impl(self) -> None:
        trt = self._trt or import_tensorrt()
        self.trt = trt
        self.cu = self._cuda or _Cuda()
        if self.cu.device_count() < 1:
            raise GhostedgeError("no CUDA device found: run TensorRT engines on the GPU they were built for")
        self.logger = _Logger.make(trt)
        self.runtime = trt.Runtime(self.logger)
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
            shape = tuple(self.engine.get_tensor_profile_shape(self.inputs[0], 0)[2])
        else:  # the binding-index API (TensorRT 8.x only)
            self.inputs = [self.engine.get_binding_name(i) for i in range(self.engine.num_bindings)
                           if self.engine.binding_is_input(i)]
            self.outputs = [self.engine.get_binding_name(i) for i in range(self.engine.num_bindings)
                            if not self.engine.binding_is_input(i)]
            shape = tuple(self.engine.get_profile_shape(0, 0)[2])
        self.max_shape = shape
        self.stream = self.cu.stream()
        self.ev = (self.cu.event(), self.cu.event())
        self._bufs: dict[str, Any] = {}
        self._cap: dict[str, int] = {}

    def max_batch(self) -> int | None:
        return int(self.max_shape[0])

    def _buf(self, name: str, nbytes: int) -> Any:
        if self._cap.get(name, 0) < nbytes:
            if name in self._bufs:
                self.cu.free(self._bufs[name])
            self._bufs[name] = self.cu.malloc(nbytes)
            self._cap[name] = nbytes
        return self._bufs[name]

    def infer_impl(self, x: np.ndarray) -> np.ndarray:
        if x.shape[0] > self.max_shape[0]:
            raise GhostedgeError(f"batch {x.shape[0]} exceeds the engine's profile (max {self.max_shape[0]}): "
                                 f"rebuild with --batch 1:{x.shape[0]}:{x.shape[0]} or use a smaller --batch")
        cu, st = self.cu, self.stream
        inp, out = self.inputs[0], self.outputs[0]
        d_in = self._buf(inp, x.nbytes)
        if self.v3:
            self.context.set_input_shape(inp, tuple(x.shape))
            out_shape = tuple(self.context.get_tensor_shape(out))
        else:
            self.context.set_binding_shape(0, tuple(x.shape))
            out_shape = tuple(self.context.get_binding_shape(1))
        y = np.empty(out_shape, np.float32)
        d_out = self._buf(out, y.nbytes)
        cu.h2d(d_in, x, st)
        cu.record(self.ev[0], st)
        ok = True
        if self.v3:
            self.context.set_tensor_address(inp, int(d_in))
            self.context.set_tensor_address(out, int(d_out))
            key = tuple(x.shape)
            if self.cuda_graph and key in self._graphs:
                cu.launch_graph(self._graphs[key], st)
            else:
                ok = self.context.execute_async_v3(cu.stream_handle(st))
                if self.cuda_graph and ok:  # capture after a first plain run (TensorRT's recommendation)
                    self._graphs[key] = cu.capture(st, lambda: self.context.execute_async_v3(cu.stream_handle(st)))
        else:
            ok = self.context.execute_async_v2([int(d_in), int(d_out)], cu.stream_handle(st))
        cu.record(self.ev[1], st)
        cu.d2h(y, d_out, st)
        cu.sync(st)
        if not ok:
            raise GhostedgeError("TensorRT execution failed: rerun with --debug and check the TensorRT log")
        self.gpu_ms.append(cu.elapsed_ms(*self.ev))
        return y

    def deactivate_impl(self) -> None:
        for b in self._bufs.values():
            self.cu.free(b)
        self._bufs.clear()
        self.context = self.engine = self.runtime = None
