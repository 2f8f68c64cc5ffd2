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

import re
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
    from ..manifest import version_tuple as parse

    return parse(str(getattr(trt, "__version__", "0.0.0")))


def has_flag(trt: ModuleType, name: str) -> bool:
    """Whether BuilderFlag has ``name`` (looked up in ``__members__``, so probing is not using)."""
    members = getattr(trt.BuilderFlag, "__members__", None)
    return name in members if members is not None else hasattr(trt.BuilderFlag, name)


def dla_supported(ver: tuple[int, ...]) -> bool:
    """Which TensorRT releases can build for DLA on Linux / JetPack (TensorRT 11.4.1 "Working with DLA": 10.7 was
    the last 10.x release with DLA; 11.0-11.3 have none; 11.4.0 has DLA only on Windows on ARM, which ghostedge
    does not target; 11.4.1 restores it on Jetson AGX Orin with JetPack >= 7.2.2, strongly typed). JetPack 7
    on Orin ships 10.13+ and so has no DLA path; which board 11.4.1 allows is checked by ``build``."""
    v = tuple(ver[:3]) + (0,) * (3 - len(ver[:3]))
    return (8, 5) <= v[:2] <= (10, 7) or v >= (11, 4, 1)


def dla_explicit_int8(ver: tuple[int, ...]) -> bool:
    """DLA INT8 from explicit Q/DQ: only on TensorRT 11.4.1+, whose DLA builds are strongly typed (11.4.1
    "Strongly Typed Networks for DLA"). Before that DLA takes INT8 from implicit calibration: TensorRT's own
    docs call IInt8EntropyCalibrator2 "the required calibrator for DLA" (10.x API reference), NVIDIA/TensorRT#2222
    says so for 8.x and NVIDIA/Model-Optimizer PR #1661 "DLA still only supports IQ"; no source confirms Q/DQ
    INT8 on DLA for 10.0-10.7, so those use the calibration cache too."""
    return tuple(ver[:3]) >= (11, 4, 1)


#: builder features TensorRT 8.6 added (absent on JetPack 5.1's 8.5.2): option -> what to check
_TRT86_FEATURES = {
    "--opt-level": ("IBuilderConfig", "builder_optimization_level"),
    "--hardware-compat": ("IBuilderConfig", "hardware_compatibility_level"),
    "--version-compatible": ("BuilderFlag", "VERSION_COMPATIBLE"),
}


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
    warn: Any = None                          # callable(str) for warnings (timing cache)


@dataclass
class TrtBuildReport:
    version: str
    strongly_typed: bool
    flags: list[str] = field(default_factory=list)
    dla_fallback_layers: list[str] = field(default_factory=list)
    parser_warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0
    num_dla_cores: int | None = None
    timing_cache: str | None = None          # "loaded" | "new" | "rejected: ..." | None


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


def _require_86(trt: ModuleType, config: Any, s: TrtBuildSettings) -> None:
    """--opt-level / --hardware-compat / --version-compatible exist from TensorRT 8.6 on (not 8.5)."""
    asked = {"--opt-level": s.opt_level is not None, "--hardware-compat": s.hardware_compat,
             "--version-compatible": s.version_compatible}
    for opt, (owner, name) in _TRT86_FEATURES.items():
        if not asked[opt]:
            continue
        have = has_flag(trt, name) if owner == "BuilderFlag" else hasattr(type(config), name) or hasattr(config, name)
        if not have:
            raise GhostedgeError(f"{opt} needs TensorRT 8.6 or later; this is TensorRT {trt.__version__} "
                                 "(JetPack 5.1 ships 8.5.2): leave it out, or build on JetPack 6+")


def _timing_cache(config: Any, path: Path | None, rep: TrtBuildReport, warn: Any) -> Any:
    """Load (or start) a timing cache; one from another GPU or TensorRT is replaced by an empty one with a
    warning, as NVIDIA's cacheUtils.cpp and Polygraphy do (setTimingCache returns false for it)."""
    if path is None:
        return None
    data = path.read_bytes() if path.is_file() else b""
    try:
        cache = config.create_timing_cache(data)
    except Exception as e:  # a corrupt file: the binding raises
        cache, why = None, str(e).splitlines()[0] if str(e) else type(e).__name__
    else:
        why = "TensorRT could not read it"
    ok = cache is not None and bool(config.set_timing_cache(cache, False))
    if ok:
        rep.timing_cache = "loaded" if data else "new"
        return cache
    if data:
        warn(f"--timing-cache {path}: not usable here ({why}; made by another GPU or TensorRT?): building with "
             "an empty cache and overwriting it")
    cache = config.create_timing_cache(b"")
    if cache is None or not config.set_timing_cache(cache, False):
        rep.timing_cache = "rejected"
        warn(f"--timing-cache {path}: TensorRT refused even an empty cache: building without one")
        return None
    rep.timing_cache = f"rejected old ({why}), new" if data else "new"
    return cache


def build_serialized(trt: ModuleType, onnx_bytes: bytes, s: TrtBuildSettings) -> tuple[bytes, TrtBuildReport]:
    """Parse ONNX, configure, build. Returns the serialized engine and what was done."""
    t0 = time.time()
    ver = version_tuple(trt)
    major = ver[0]
    warn = s.warn or (lambda m: None)
    dla = s.dla_core is not None
    if dla and s.precision == "fp32":
        raise GhostedgeError("DLA runs FP16 or INT8 only: pass --fp16 or --int8 with --dla-core")
    if dla and not dla_supported(ver):
        raise GhostedgeError(f"--dla-core: TensorRT {trt.__version__} cannot build for DLA (10.7 was the last 10.x "
                             "release with DLA; 11.0-11.3 have none; 11.4.0 only on Windows on ARM): build for the "
                             "GPU, or use JetPack 6 (TensorRT 10.3) / JetPack 5 (8.5) for DLA engines")
    if dla and len(set(s.batch)) != 1:
        raise GhostedgeError(f"--dla-core needs a static shape (DLA restrictions: min = opt = max), not "
                             f"{':'.join(map(str, s.batch))}: pass --batch N")
    if s.calib_cache is not None and not hasattr(trt, "IInt8EntropyCalibrator2"):
        raise GhostedgeError(f"--calib-cache: TensorRT {trt.__version__} removed implicit INT8 calibration: "
                             "leave out --calib-cache to build from the Q/DQ ONNX")
    strong = use_strong_typing(trt, s.precision, s.calib_cache is not None, dla)
    rep = TrtBuildReport(version=str(trt.__version__), strongly_typed=strong)
    logger = _Logger.make(trt)
    builder = trt.Builder(logger)
    if dla:
        n = int(builder.num_DLA_cores)
        rep.num_dla_cores = n
        if not 0 <= int(s.dla_core) < n:
            raise GhostedgeError(f"--dla-core {s.dla_core}: this device has {n} DLA core(s)"
                                 + (f" (0..{n - 1})" if n else "") + ": pick one of those, or build for the GPU")
    flags = 0
    ncf = trt.NetworkDefinitionCreationFlag
    if major < 10 and hasattr(ncf, "EXPLICIT_BATCH"):
        flags |= 1 << int(ncf.EXPLICIT_BATCH)
    if strong and major < 11 and hasattr(ncf, "STRONGLY_TYPED"):
        flags |= 1 << int(ncf.STRONGLY_TYPED)
    network = builder.create_network(flags)
    _parse(trt, network, logger, onnx_bytes)

    config = builder.create_builder_config()
    _require_86(trt, config, s)
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

    cache = _timing_cache(config, s.timing_cache, rep, warn)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        errs = [m for sev, m in logger.messages if "ERROR" in str(sev)]
        raise GhostedgeError("TensorRT could not build the engine" + (f" ({'; '.join(errs[-3:])})" if errs else "")
                             + ": lower --workspace demands, try --opt-level 3, or rerun with --debug")
    if cache is not None and s.timing_cache is not None:
        # the engine is built: a cache that cannot be saved costs a warning, never the engine
        try:
            updated = config.get_timing_cache()
            if updated is None:
                raise ValueError("get_timing_cache() returned None")
            write_bytes_atomic(s.timing_cache, bytes(updated.serialize()))
        except Exception as e:  # noqa: BLE001
            warn(f"--timing-cache {s.timing_cache}: not saved ({e}); the engine itself is fine")
    rep.seconds = round(time.time() - t0, 1)
    return bytes(serialized), rep


# ---------------------------------------------------------------------------------------------
# engine inspection

#: the long format strings of the inspector's raw JSON (``trtexec --exportLayerInfo``, IEngineInspector) name the
#: data type inside the sentence: "Thirty-two wide channel vectorized row major Int8 format", "Row major linear
#: FP32", "Channel major FP16 format where channel % 8 == 0", "Row major linear BFloat16 format"; TensorRT 11 adds a
#: "(kCHW32)"-style suffix. NVIDIA's trex translates them with a table (tools/experimental/trt-engine-explorer/
#: trex/activations.py, ``_regionFormatDict``) whose data-type words are these; kgen layers print the bare names
#: ("Half", "Float", "Int8"), as the 11.x "DataType" field does (TensorRT 10.x -> 11.x IEngineInspector migration
#: page: "I/O Tensors" entries carry "DataType": "Float" beside "Format": "Row major linear FP32 format (kLINEAR)").
_DTYPE_WORDS = {
    "int8": "int8", "fp32": "fp32", "float": "fp32", "fp16": "fp16", "half": "fp16", "bfloat16": "bf16",
    "bf16": "bf16", "fp8": "fp8", "int4": "int4", "fp4": "fp4", "int32": "int32", "int64": "int64",
    "bool": "bool", "uint8": "uint8", "double": "fp64", "int16": "int16",
}


def datatype_precision(fmt: str) -> str:
    """The precision a tensor description names, from any TensorRT release's inspector JSON: the word of the
    description that is a data type ('Thirty-two wide channel vectorized row major Int8 format' -> int8,
    'Row major linear FP32' -> fp32, 'Half' -> fp16, 'BFloat16' -> bf16; a whole word, so 'BFloat16' is not
    'Float'); '?' when it names none."""
    for word in re.findall(r"[A-Za-z]+[0-9]*", fmt or ""):
        p = _DTYPE_WORDS.get(word.lower())
        if p:
            return p
    return "?"


def tensor_precision(t: dict) -> str:
    """One tensor of a layer's Inputs/Outputs: 11.x's "DataType" first, else the 8.x-10.x "Format/Datatype"
    sentence, else 11.x's "Format"."""
    for key in ("DataType", "Format/Datatype", "Format"):
        if t.get(key):
            p = datatype_precision(str(t[key]))
            if p != "?":
                return p
    return "?"


def layer_rows(info: dict) -> list[dict]:
    """Per-layer records from the inspector's parsed JSON (``{"Layers": [...]}``, any version).

    As NVIDIA's trex reads it: the kind is ``ParameterType`` (``LayerType`` is the kernel family, e.g.
    CaskConvolution), the precision is that of ``Inputs[0]`` (an INT8 conv may write a float output); a layer
    fused with a residual add has the add's other operand as a further input."""
    rows = []
    for layer in info.get("Layers", []):
        if isinstance(layer, str):  # built without DETAILED verbosity: names only
            rows.append({"name": layer, "type": "?", "precision": "?", "device": "?", "tactic": "?"})
            continue
        ins = layer.get("Inputs") or layer.get("Outputs") or [{}]
        kind = str(layer.get("ParameterType") or layer.get("LayerType", "?"))
        impl = str(layer.get("LayerType", ""))
        rows.append({
            "name": layer.get("Name", "?"),
            "type": kind,
            "precision": tensor_precision(ins[0] if isinstance(ins[0], dict) else {}),
            "inputs": [tensor_precision(t) for t in ins if isinstance(t, dict)],
            "device": "DLA" if "DLA" in impl or "ForeignNode" in impl or "DLA" in kind else "GPU",
            "tactic": str(layer.get("TacticName", layer.get("TacticValue", "?"))),
        })
    return annotate_layers(rows)


def inspect_engine(trt: ModuleType, engine: Any) -> list[dict]:
    """Per-layer records from the engine inspector (needs ProfilingVerbosity.DETAILED at build)."""
    import json as _json

    insp = engine.create_engine_inspector()
    raw = insp.get_engine_information(trt.LayerInformationFormat.JSON)
    return layer_rows(_json.loads(raw) if raw else {})


#: layer kinds that move data or shapes: their float precision is not a compute fallback
_NO_COMPUTE = ("Reformat", "Shuffle", "Slice", "Concatenation", "Constant", "Identity", "NoOp", "Cast")


def annotate_layers(rows: list[dict]) -> list[dict]:
    """Flag FP32 fallbacks, reformat layers and (for DLA engines) GPU-resident layers."""
    any_dla = any(r["device"] == "DLA" for r in rows)
    for r in rows:
        flags = []
        if r["precision"] == "fp32" and r["type"] not in _NO_COMPUTE:
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
    """The few CUDA runtime calls a runner needs, over cuda-python (cudart) or pycuda.

    cudart calls use the signatures shared by cuda-python 11.8 (JetPack 5), 12.x and 13.x
    (``tests/test_cuda_python.py`` calls each against the real packages).
    """

    def __init__(self, cudart: Any = None) -> None:
        self.cudart = cudart
        self.pycuda = None
        if cudart is not None:
            return
        try:
            try:
                from cuda.bindings import runtime as cudart  # cuda-python >= 12.6 (and 11.8.7)
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
            except Exception as e:  # pycuda.autoinit raises its own errors without a device / driver
                raise GhostedgeError(f"pycuda could not start CUDA ({e}): check the driver with nvidia-smi / "
                                     "tegrastats") from None

    def _call(self, name: str, *args: Any) -> Any:
        try:
            return getattr(self.cudart, name)(*args)
        except RuntimeError as e:
            # cuda-python 11.8 without a driver: "Failed to dlopen libcuda.so.1" on the first call, then
            # 'Function "cuInit" not found' (a driver-API symbol missing: there is no libcuda)
            if re.search(r'libcuda|Function "cu\w+" not found', str(e)):
                raise CudaAbsent(f"{NO_DRIVER} ({name}: {e})") from None
            raise GhostedgeError(f"CUDA is unusable here ({name}: {e}): install the NVIDIA driver, or run on the "
                                 "GPU machine / Jetson") from None

    def _ck(self, res: Any, what: str = "CUDA call") -> Any:
        err = res[0] if isinstance(res, tuple) else res
        if int(err) != 0:
            raise GhostedgeError(f"{what} failed: {_err_name(err)}: {_cuda_hint(err)}")
        if isinstance(res, tuple):
            return res[1] if len(res) == 2 else res[1:]
        return None

    def device_count(self) -> int:
        """0 when there is no device; ``CudaAbsent`` when no NVIDIA driver is loaded at all; any other CUDA error
        is raised with its name (a driver too old for this cuda-python is not "no GPU").

        Without a driver the real cuda-bindings 12.9.4 / 13.4.4 return cudaErrorInsufficientDriver from
        cudaGetDeviceCount while cudaDriverGetVersion returns (cudaSuccess, 0) (observed here, on a machine with
        no driver); 11.8.7 raises RuntimeError "Failed to dlopen libcuda.so.1" (``tests/test_cuda_python.py``).
        Only a non-zero driver version makes InsufficientDriver a too-old driver."""
        if self.cudart is not None:
            err, n = self._call("cudaGetDeviceCount")
            if int(err) == 0:
                return int(n)
            if "NoDevice" in _err_name(err):
                return 0
            if "InsufficientDriver" in _err_name(err):
                derr, drv = self._call("cudaDriverGetVersion")
                if int(derr) == 0 and not drv:
                    raise CudaAbsent(f"{NO_DRIVER} (cudaGetDeviceCount: {_err_name(err)}, driver version 0)")
                raise GhostedgeError(f"cudaGetDeviceCount failed: {_err_name(err)}: the driver supports CUDA "
                                     f"{_cuda_ver(int(drv or 0))}; {_cuda_hint(err)}")
            raise GhostedgeError(f"cudaGetDeviceCount failed: {_err_name(err)}: {_cuda_hint(err)}")
        return self.pycuda.Device.count()

    def malloc(self, nbytes: int) -> int:
        if self.cudart is not None:
            return int(self._ck(self._call("cudaMalloc", nbytes), f"cudaMalloc({nbytes})"))
        return self.pycuda.mem_alloc(nbytes)

    def free(self, ptr: Any) -> None:
        if self.cudart is not None:
            self._call("cudaFree", ptr)
        else:
            ptr.free()

    def stream(self) -> Any:
        if self.cudart is not None:
            return self._ck(self._call("cudaStreamCreate"), "cudaStreamCreate")
        return self.pycuda.Stream()

    def stream_handle(self, st: Any) -> int:
        return int(st) if self.cudart is not None else st.handle

    def h2d(self, dst: Any, arr: np.ndarray, st: Any) -> None:
        if self.cudart is not None:
            self._ck(self._call("cudaMemcpyAsync", dst, arr.ctypes.data, arr.nbytes,
                                self.cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, st), "cudaMemcpyAsync")
        else:
            self.pycuda.memcpy_htod_async(dst, arr, st)

    def d2h(self, arr: np.ndarray, src: Any, st: Any) -> None:
        if self.cudart is not None:
            self._ck(self._call("cudaMemcpyAsync", arr.ctypes.data, src, arr.nbytes,
                                self.cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost, st), "cudaMemcpyAsync")
        else:
            self.pycuda.memcpy_dtoh_async(arr, src, st)

    def sync(self, st: Any) -> None:
        if self.cudart is not None:
            self._ck(self._call("cudaStreamSynchronize", st), "cudaStreamSynchronize")
        else:
            st.synchronize()

    def event(self) -> Any:
        if self.cudart is not None:
            return self._ck(self._call("cudaEventCreate"), "cudaEventCreate")
        return self.pycuda.Event()

    def record(self, ev: Any, st: Any) -> None:
        if self.cudart is not None:
            self._ck(self._call("cudaEventRecord", ev, st), "cudaEventRecord")
        else:
            ev.record(st)

    def elapsed_ms(self, a: Any, b: Any) -> float:
        if self.cudart is not None:
            self._ck(self._call("cudaEventSynchronize", b), "cudaEventSynchronize")
            return float(self._ck(self._call("cudaEventElapsedTime", a, b), "cudaEventElapsedTime"))
        b.synchronize()
        return float(b.time_since(a))

    def capture(self, st: Any, launch: Any) -> Any:
        """Record what ``launch()`` enqueues on ``st`` into an executable CUDA graph (cuda-python only), or None
        when the capture failed: ``launch()`` returned False (TensorRT refused to enqueue under capture) or the
        capture was invalidated. As trtexec does (samples/common/sampleDevice.h ``TrtCudaGraph::
        endCaptureOnError``, called from sampleInference.cpp when enqueue fails under capture): end the capture,
        destroy a graph that came back anyway, clear the sticky error; the caller then runs without a graph
        ("--useCudaGraph ... may be ignored if the graph capture fails").

        ``cudaGraphInstantiateWithFlags(graph, 0)``: one signature in cuda-python 11.8, 12.x and 13.x
        (``cudaGraphInstantiate`` takes a log buffer in 11.8 and flags later)."""
        if self.cudart is None:
            raise GhostedgeError("--cuda-graph needs cuda-python (pycuda has no stream capture here)")
        rt = self.cudart
        self._ck(self._call("cudaStreamBeginCapture", st, rt.cudaStreamCaptureMode.cudaStreamCaptureModeGlobal),
                 "cudaStreamBeginCapture")
        enqueued = launch()
        err, graph = self._call("cudaStreamEndCapture", st)
        if enqueued is False or int(err) != 0:
            if int(err) == 0 and graph is not None:
                self._call("cudaGraphDestroy", graph)   # a graph of a failed enqueue must never be replayed
            self._call("cudaGetLastError")              # the invalidated capture leaves a sticky error
            return None
        err, exe = self._call("cudaGraphInstantiateWithFlags", graph, 0)
        self._call("cudaGraphDestroy", graph)  # the executable graph keeps what it needs
        if int(err) != 0:
            self._call("cudaGetLastError")
            return None
        return exe

    def launch_graph(self, g: Any, st: Any) -> None:
        self._ck(self._call("cudaGraphLaunch", g, st), "cudaGraphLaunch")

    def destroy_graph(self, g: Any) -> None:
        if self.cudart is not None:
            self._call("cudaGraphExecDestroy", g)

    def destroy_stream(self, st: Any) -> None:
        if self.cudart is not None:
            self._call("cudaStreamDestroy", st)
        # a pycuda Stream is released with its Python object

    def destroy_event(self, ev: Any) -> None:
        if self.cudart is not None:
            self._call("cudaEventDestroy", ev)

    def device_info(self) -> dict:
        if self.cudart is not None:
            props = self._ck(self._call("cudaGetDeviceProperties", 0), "cudaGetDeviceProperties")
            name = props.name.decode() if isinstance(props.name, bytes) else str(props.name)
            _, drv = self._call("cudaDriverGetVersion")
            _, rt = self._call("cudaRuntimeGetVersion")
            return {"gpu": name.strip("\x00 "), "compute_capability": f"{props.major}.{props.minor}",
                    "cuda_driver": _cuda_ver(drv), "cuda_runtime": _cuda_ver(rt)}
        d = self.pycuda.Device(0)
        cc = d.compute_capability()
        return {"gpu": d.name(), "compute_capability": f"{cc[0]}.{cc[1]}",
                "cuda_driver": _cuda_ver(self.pycuda.get_driver_version()), "cuda_runtime": None}


def _err_name(err: Any) -> str:
    name = getattr(err, "name", None)
    return f"{name} ({int(err)})" if name else f"CUDA error {int(err)}"


def _cuda_hint(err: Any) -> str:
    name = getattr(err, "name", "") or ""
    if "InsufficientDriver" in name:
        try:
            from importlib.metadata import version

            cp = version("cuda-python")
        except Exception:  # noqa: BLE001
            cp = "?"
        return (f"the driver is older than cuda-python {cp} needs (cuda-python 13.x needs a CUDA 13 driver, "
                "580 or newer): install the cuda-python of your driver's CUDA major, e.g. "
                "pip install 'cuda-python>=12,<13' for a CUDA 12 driver or JetPack 6")
    if "NoDevice" in name:
        return "no CUDA GPU is visible (check nvidia-smi, CUDA_VISIBLE_DEVICES)"
    return "check the GPU with nvidia-smi / tegrastats"


def _cuda_ver(v: int) -> str:
    return f"{v // 1000}.{(v % 1000) // 10}"


#: the reasons ``cuda_probe`` gives when this machine simply has no GPU (a CPU fallback is right), as opposed
#: to a GPU that a broken driver or binding hides
NO_DEVICE = "no CUDA device was found"
NO_DRIVER = "no NVIDIA driver is loaded here"


class CudaAbsent(GhostedgeError):
    """No NVIDIA driver at all: the machine has no usable GPU, nothing is broken."""


def cuda_absent(why: str) -> bool:
    """Whether a ``cuda_probe`` reason means "no GPU here" (fall back to the CPU) rather than "CUDA is broken"."""
    return why.startswith((NO_DEVICE, NO_DRIVER))


def cuda_probe() -> tuple[dict | None, str]:
    """(first CUDA device, "") or (None, why not): "no device" / "no driver" differ from a broken driver or
    binding (``cuda_absent`` tells which)."""
    try:
        cu = _Cuda()
        if cu.device_count() < 1:
            return None, NO_DEVICE
        return cu.device_info(), ""
    except GhostedgeError as e:
        return None, str(e)
    except (ImportError, OSError, RuntimeError) as e:
        return None, f"CUDA is unusable here ({e})"


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
        self.cu = self._cuda or _Cuda()
        if self.cu.device_count() < 1:
            raise GhostedgeError("no CUDA device found: run TensorRT engines on the GPU they were built for")
        self.logger = _Logger.make(trt)
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
        # an engine compiled from an FP16 model (torch-tensorrt >= 2.10) has FP16 I/O
        half = getattr(trt.DataType, "HALF", None)
        np_of = lambda n: np.float16 if self.v3 and half is not None and self.engine.get_tensor_dtype(n) == half \
            else np.float32  # noqa: E731
        self.in_dtype, self.out_dtype = np_of(self.inputs[0]), np_of(self.outputs[0])
        self.stream = self.cu.stream()
        self.ev = (self.cu.event(), self.cu.event())
        # buffers at the largest shape, once: stable addresses for CUDA-graph replay
        self._set_shape(self.max_shape)
        self._in_bytes = int(np.prod(self.max_shape)) * np.dtype(self.in_dtype).itemsize
        self._out_bytes = int(np.prod(self._out_shape())) * np.dtype(self.out_dtype).itemsize
        self.d_in = self.cu.malloc(self._in_bytes)
        self.d_out = self.cu.malloc(self._out_bytes)

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
