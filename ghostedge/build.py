"""Engines per backend: TensorRT plans for GPUs / Jetson, ONNX Runtime-optimized models for CPUs.

Inputs come from ``engines/`` as ``ghostedge quantize`` leaves it: the FP32 ONNX, the Q/DQ ONNX and
the calibration record (and cache). Every engine gets a sidecar manifest.
"""

from __future__ import annotations

import datetime as _dt
import platform
import shlex
import time
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Callable

import onnx

from . import __version__
from .errors import GhostedgeError, write_bytes_atomic
from .export import INPUT_NAME, fp16_onnx, read_onnx_info
from .manifest import cpu_name, file_sha256, write_manifest
from .model import ModelSpec, check_against
from .quantize import CACHE_NAME, FP32_NAME, INT8_NAME, RECORD_NAME, calib_cache_text, load_record, parse_calib_cache
from .targets import Platform, check_dla, resolve


class Backend(str, Enum):
    auto = "auto"
    tensorrt = "tensorrt"
    onnxruntime = "onnxruntime"


class Precision(str, Enum):
    fp32 = "fp32"
    fp16 = "fp16"
    int8 = "int8"


#: ONNX Runtime CPU INT8: layers left in FP32 because int8 is slower there (measured: the 3-channel stem
#: conv and the first bottleneck at full resolution run faster in FP32's NCHWc kernels)
CPU_FLOAT_PREFIX = ("/conv_stem/", "/blocks/blocks.0/")


@dataclass
class BuildConfig:
    engines: Path = Path("engines")
    precision: Precision = Precision.int8
    backend: Backend = Backend.auto
    target: str = "auto"
    batch: tuple[int, int, int] = (1, 8, 32)
    img_size: int | None = None
    workspace_mib: int | None = None
    dla_core: int | None = None
    gpu_fallback: bool = False
    timing_cache: Path | None = None
    opt_level: int | None = None
    hardware_compat: bool = False
    version_compatible: bool = False
    calib_cache: Path | None = None
    out: Path | None = None
    frontend: str = "onnx"          # onnx | torch-tensorrt
    weights: Path | None = None     # for the torch-tensorrt frontend
    calib: Path | None = None       # torch-tensorrt --int8: calibration images (default ./calib)
    spec: ModelSpec | None = None   # --preprocess / --classes: checked against the ONNX's description


@dataclass
class BuildResult:
    engine: Path
    manifest: Path
    backend: str
    precision: str
    seconds: float
    notes: list[str] = field(default_factory=list)
    trtexec: str | None = None
    dla_fallback_layers: list[str] = field(default_factory=list)


def parse_batch(spec: str) -> tuple[int, int, int]:
    """'8' -> (8, 8, 8); '1:8:32' -> (1, 8, 32)."""
    try:
        parts = [int(p) for p in spec.split(":")]
    except ValueError:
        parts = []
    if len(parts) == 1:
        parts = parts * 3
    if len(parts) != 3 or not (1 <= parts[0] <= parts[1] <= parts[2]):
        raise GhostedgeError(f"--batch {spec!r}: use N or MIN:OPT:MAX with 1 <= MIN <= OPT <= MAX")
    return parts[0], parts[1], parts[2]


def _need(path: Path, what: str) -> Path:
    if not path.is_file():
        raise GhostedgeError(f"{path} not found ({what}): run ghostedge quantize --calib DIR first "
                             f"(it writes {FP32_NAME}, {INT8_NAME} and the calibration files into {path.parent})")
    return path


def _record_for(engines: Path, onnx_path: Path) -> dict:
    """The calibration record, checked against the weights the ONNX was exported from."""
    record = load_record(_need(engines / RECORD_NAME, "the calibration record"))
    info = read_onnx_info(onnx_path)
    if info and record.get("model", {}).get("fingerprint") not in (None, info.fingerprint):
        raise GhostedgeError(f"{engines / RECORD_NAME} was calibrated for other weights "
                             f"({record['model']['fingerprint']}) than {onnx_path.name} ({info.fingerprint}): "
                             "rerun ghostedge quantize")
    return record


def tensorrt_available() -> tuple[bool, str]:
    """(usable, why not) for TensorRT on this machine."""
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return False, "TensorRT is not installed"
    from .backends.tensorrt import gpu_info

    if gpu_info() is None:
        return False, "no CUDA device (or no CUDA Python binding) was found"
    return True, ""


def choose_backend(cfg: BuildConfig, say: Callable[[str], None]) -> Backend:
    if cfg.backend != Backend.auto:
        return cfg.backend
    ok, why = tensorrt_available()
    if ok:
        return Backend.tensorrt
    say(f"{why}: building for ONNX Runtime on this CPU instead (--backend auto)")
    return Backend.onnxruntime


def trtexec_command(onnx_name: str, cfg: BuildConfig, plat: Platform, engine_name: str, img: int,
                    trt_major: int = 10) -> str:
    """The trtexec line that builds the same engine on a board where ghostedge itself cannot run."""
    b0, b1, b2 = cfg.batch
    shape = lambda b: f"{INPUT_NAME}:{b}x3x{img}x{img}"  # noqa: E731
    args = ["trtexec", f"--onnx={onnx_name}", f"--saveEngine={engine_name}",
            f"--minShapes={shape(b0)}", f"--optShapes={shape(b1)}", f"--maxShapes={shape(b2)}",
            "--profilingVerbosity=detailed"]
    if trt_major < 11:
        if cfg.precision in (Precision.fp16, Precision.int8):
            args.append("--fp16")
        if cfg.precision == Precision.int8:
            args.append("--int8")
        if cfg.calib_cache:
            args.append(f"--calib={CACHE_NAME}")
    else:
        args.append("--stronglyTyped")
    ws = cfg.workspace_mib or (plat.target.workspace // (1 << 20) if plat.target.workspace else None)
    if ws:
        args.append(f"--memPoolSize=workspace:{ws}M" if trt_major >= 10 else f"--memPoolSize=workspace:{ws}")
    if cfg.dla_core is not None:
        args.append(f"--useDLACore={cfg.dla_core}")
        if cfg.gpu_fallback:
            args.append("--allowGPUFallback")
    if cfg.timing_cache:
        args.append(f"--timingCacheFile={cfg.timing_cache.name}")
    return " ".join(shlex.quote(a) for a in args)


def _common_manifest(cfg: BuildConfig, src: Path, record: dict | None, info_src: Path) -> dict:
    info = read_onnx_info(info_src)
    return {
        "precision": cfg.precision.value,
        "built_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "ghostedge": __version__,
        "source_onnx": {"path": str(src), "sha256": file_sha256(src)},
        "calibration": ({"fingerprint": record["data"]["fingerprint"], "method": record["method"],
                         "record_sha256": file_sha256(cfg.engines / RECORD_NAME)} if record else None),
        "model": info.to_dict() if info else None,
        "batch": list(cfg.batch),
        "host": {"machine": platform.machine(), "cpu": cpu_name(), "python": platform.python_version()},
    }


def build_onnxruntime(cfg: BuildConfig, say: Callable[[str], None]) -> BuildResult:
    import onnxruntime as ort

    from .backends.onnxruntime import optimize_to, quantize_for_cpu

    t0 = time.time()
    if cfg.precision == Precision.fp16:
        raise GhostedgeError("--fp16 on the ONNX Runtime CPU backend: CPUs here have no fast FP16 path; use "
                             "--int8 (fastest on CPU) or --fp32, or --backend tensorrt on an NVIDIA GPU")
    if cfg.dla_core is not None:
        raise GhostedgeError("--dla-core needs --backend tensorrt on a Jetson with DLA")
    fp32_path = _need(cfg.engines / FP32_NAME, "the FP32 ONNX")
    fp32 = onnx.load(str(fp32_path))
    record = None
    if cfg.precision == Precision.int8:
        record = _record_for(cfg.engines, fp32_path)
        exclude = [n.name for n in fp32.graph.node if any(p in n.name for p in CPU_FLOAT_PREFIX)]
        exclude += [n for n in record.get("excluded_nodes", []) if "/se/" not in n]
        model = quantize_for_cpu(fp32, record, exclude)
    else:
        model = fp32
    out = cfg.out or cfg.engines / f"ghostnet.{cfg.precision.value}.ort.onnx"
    optimize_to(model, out)
    man = _common_manifest(cfg, fp32_path, record, fp32_path)
    man.update({"backend": "onnxruntime", "onnxruntime": ort.__version__, "device": "cpu",
                "activations": "uint8 asymmetric per-tensor, weights int8 per-channel (QOperator)"
                if record else "float32"})
    mp = write_manifest(out, man)
    return BuildResult(out, mp, "onnxruntime", cfg.precision.value, round(time.time() - t0, 1))


def build_tensorrt(cfg: BuildConfig, say: Callable[[str], None], trt=None, gpu: dict | None = None) -> BuildResult:
    """``trt`` / ``gpu``: the TensorRT module and device description (default: import / query them)."""
    from .backends.tensorrt import TrtBuildSettings, build_serialized, gpu_info, import_tensorrt, \
        use_strong_typing, version_tuple

    t0 = time.time()
    plat = resolve(cfg.target)
    check_dla(plat, cfg.dla_core)
    if cfg.precision.value not in plat.target.precisions:
        raise GhostedgeError(f"{plat.target.description} does not support {cfg.precision.value}")
    src = _need(cfg.engines / (INT8_NAME if cfg.precision == Precision.int8 and not cfg.calib_cache
                               else FP32_NAME), "the ONNX to build from")
    info = read_onnx_info(src)
    img = cfg.img_size or (info.preprocess.input_size if info else 224)
    out = cfg.out or cfg.engines / "ghostnet.plan"
    record = _record_for(cfg.engines, src) if cfg.precision == Precision.int8 else None
    cache_bytes = None
    if cfg.calib_cache is not None:
        if cfg.precision != Precision.int8:
            raise GhostedgeError("--calib-cache is for --int8 builds")
        if not cfg.calib_cache.is_file():
            raise GhostedgeError(f"--calib-cache {cfg.calib_cache} not found: run ghostedge quantize first")
        _, scales = parse_calib_cache(cfg.calib_cache.read_text())
    try:
        trt = trt or import_tensorrt()
    except GhostedgeError:
        cmd = trtexec_command(src.name, cfg, plat, out.name, img)
        raise GhostedgeError(f"TensorRT is not installed here: build on the target board instead: copy "
                             f"{cfg.engines}/*.onnx and {cfg.engines}/ghostnet.calib.* there and run "
                             f"`ghostedge build` (or: {cmd}; on TensorRT 11 use --stronglyTyped instead of "
                             "--fp16/--int8); or use --backend onnxruntime here") from None
    ver = version_tuple(trt)
    gpu = gpu or gpu_info()
    if gpu is None:
        raise GhostedgeError("no CUDA device found: TensorRT engines are built on the GPU they run on; build "
                             f"on the target (copy {cfg.engines}/*.onnx and the calibration files there)")
    if cfg.calib_cache is not None:
        # restamp the header for the TensorRT that reads it, scales unchanged
        cache_bytes = calib_cache_text({k: v * 127.0 for k, v in scales.items()},
                                       ".".join(map(str, ver))).encode()
    strong = use_strong_typing(trt, cfg.precision.value, cache_bytes is not None, cfg.dla_core is not None)
    model = onnx.load(str(src))
    if strong and cfg.precision != Precision.fp32:
        model = fp16_onnx(model)
    ws = (cfg.workspace_mib << 20) if cfg.workspace_mib else plat.target.workspace
    s = TrtBuildSettings(precision=cfg.precision.value, batch=cfg.batch, img_size=img, workspace=ws,
                         dla_core=cfg.dla_core, gpu_fallback=cfg.gpu_fallback, timing_cache=cfg.timing_cache,
                         opt_level=cfg.opt_level, hardware_compat=cfg.hardware_compat,
                         version_compatible=cfg.version_compatible, calib_cache=cache_bytes)
    say(f"building with TensorRT {trt.__version__} ({'strongly' if strong else 'weakly'} typed) for "
        f"{plat.target.description}")
    data, rep = build_serialized(trt, model.SerializeToString(), s)
    write_bytes_atomic(out, data)
    man = _common_manifest(cfg, src, record, src)
    man.update({
        "backend": "tensorrt", "tensorrt": str(trt.__version__), "strongly_typed": rep.strongly_typed,
        "flags": rep.flags, "gpu": gpu, "target": plat.target.name, "board": plat.board, "l4t": plat.l4t,
        "jetpack": plat.jetpack, "img_size": img, "workspace": ws, "dla_core": cfg.dla_core,
        "gpu_fallback": cfg.gpu_fallback, "dla_fallback_layers": rep.dla_fallback_layers,
        "opt_level": cfg.opt_level, "hardware_compat": cfg.hardware_compat,
        "version_compatible": cfg.version_compatible, "calib_cache": bool(cache_bytes),
        "build_seconds": rep.seconds,
    })
    mp = write_manifest(out, man)
    return BuildResult(out, mp, "tensorrt", cfg.precision.value, round(time.time() - t0, 1),
                       trtexec=trtexec_command(src.name, cfg, plat, out.name, img, ver[0]),
                       dla_fallback_layers=rep.dla_fallback_layers)


def build(cfg: BuildConfig, say: Callable[[str], None] = lambda s: None) -> BuildResult:
    if cfg.frontend == "torch-tensorrt":
        from .backends.torch_tensorrt import build_torch_tensorrt

        return build_torch_tensorrt(cfg, say)
    if cfg.spec is not None and cfg.spec.given():  # the ONNX carries the description quantize was told
        src = _need(cfg.engines / FP32_NAME, "the FP32 ONNX")
        stored = read_onnx_info(src)
        if stored is not None:
            check_against(stored, cfg.spec, src.name)
    backend = choose_backend(cfg, say)
    if backend == Backend.tensorrt:
        return build_tensorrt(cfg, say)
    return build_onnxruntime(cfg, say)

