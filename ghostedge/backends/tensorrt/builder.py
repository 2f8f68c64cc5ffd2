"""TensorRT builder: ONNX bytes + one settings object -> a serialized engine and a report of what was done."""

from __future__ import annotations

import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from types import ModuleType
from typing import Any

from ...errors import GhostedgeError, write_bytes_atomic
from .logger import make_logger
from .version import TRT86_FEATURES, check_dla_request, has_flag, use_strong_typing, version_tuple

@dataclass(kw_only=True)
class TrtOptions:
    """The TensorRT builder options a user sets: part of the build's settings (build_common.BuildConfig) and,
    as they are, of the builder's (TrtBuildSettings)."""

    dla_core: int | None = None
    gpu_fallback: bool = False
    timing_cache: Path | None = None
    opt_level: int | None = None
    hardware_compat: bool = False
    version_compatible: bool = False

    def trt_options(self) -> dict[str, Any]:
        """These options as keyword arguments (for a TrtBuildSettings)."""
        return {f.name: getattr(self, f.name) for f in fields(TrtOptions)}


@dataclass
class TrtBuildSettings(TrtOptions):
    img_size: int                           # the model card's input size (or the build's own)
    layout: str = "nchw"                     # nhwc: a uint8-input engine taking [N, H, W, 3] pixels
    precision: str = "fp16"                 # fp32 | fp16 | int8
    input_name: str = "input"
    batch: tuple[int, int, int] = (1, 8, 32)
    workspace: int | None = None             # bytes
    calib_cache: bytes | None = None         # legacy cache content: implicit INT8 (TensorRT < 11)
    warn: Any = None                          # callable(str) for warnings (timing cache)


@dataclass
class TrtBuildReport:
    version: str
    strongly_typed: bool
    flags: list[str] = field(default_factory=list)
    dla_fallback_layers: list[str] = field(default_factory=list)
    seconds: float = 0.0
    num_dla_cores: int | None = None
    timing_cache: str | None = None          # "loaded" | "new" | "rejected: ..." | None


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
    for opt, (owner, name) in TRT86_FEATURES.items():
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
    if dla:
        check_dla_request(ver, s.precision, s.batch)
    if s.calib_cache is not None and not hasattr(trt, "IInt8EntropyCalibrator2"):
        raise GhostedgeError(f"--calib-cache: TensorRT {trt.__version__} removed implicit INT8 calibration: "
                             "leave out --calib-cache to build from the Q/DQ ONNX")
    strong = use_strong_typing(trt, s.precision, s.calib_cache is not None, dla)
    rep = TrtBuildReport(version=str(trt.__version__), strongly_typed=strong)
    logger = make_logger(trt)
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
    shp = lambda b: (b, s.img_size, s.img_size, 3) if s.layout == "nhwc" else (b, 3, s.img_size, s.img_size)  # noqa: E731
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
