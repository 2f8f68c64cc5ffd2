"""Engines per backend: TensorRT plans for GPUs / Jetson, ONNX Runtime-optimized models for CPUs.

Inputs come from ``engines/`` as ``ghostedge quantize`` leaves it: the FP32 ONNX, the Q/DQ ONNX and
the calibration record (and cache). Every engine gets a sidecar manifest.
"""

from __future__ import annotations

import functools
import shlex
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import onnx

from .backends.common import Backend, BuildResult, Frontend, Precision  # noqa: F401  (re-exported)
from .backends.cuda import CudaStatus, cuda_status
from .build_common import DEFAULT_BATCH, DLA_BATCH, BuildConfig, common_manifest, need_input, record_for, \
    resolve_batch  # noqa: F401  (BuildConfig, DEFAULT_BATCH, DLA_BATCH: re-exported)
from .errors import GhostedgeError, write_bytes_atomic
from .card import card_for_onnx, read_onnx_card
from .export import INPUT_NAME, fp16_onnx
from .input_uint8 import uint8_input
from .manifest import file_sha256, version_tuple, write_manifest
from .checkpoint import check_against
from .quantize import CACHE_NAME, FP32_NAME, IMPLICIT_NAME, INT8_NAME, calib_cache_text, parse_calib_cache, \
    trt_version_int
from .targets import Platform, check_dla, resolve


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


@dataclass(frozen=True)
class TensorRTStatus:
    """Whether TensorRT can build here: installed, and the CUDA device (or why none, and whether there simply
    is no GPU)."""

    installed: bool
    cuda: CudaStatus | None = None

    @property
    def usable(self) -> bool:
        return self.installed and self.cuda is not None and self.cuda.gpu is not None

    @property
    def why(self) -> str:
        return "TensorRT is not installed" if not self.installed else (self.cuda.why if self.cuda else "")


@functools.lru_cache(maxsize=1)
def tensorrt_available() -> TensorRTStatus:
    """TensorRT on this machine; probed once per process (it imports TensorRT and opens CUDA), as the
    pipeline's builds all ask."""
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return TensorRTStatus(installed=False)
    return TensorRTStatus(installed=True, cuda=cuda_status())


def choose_backend(cfg: BuildConfig, say: Callable[[str], None]) -> Backend:
    if cfg.backend != Backend.auto:
        return cfg.backend
    st = tensorrt_available()
    if st.usable:
        return Backend.tensorrt
    if st.installed and not st.cuda.absent:
        # TensorRT is here and CUDA is broken (e.g. a cuda-python newer than the driver): falling back to the
        # CPU would hide that and fail later with a CPU message
        raise GhostedgeError(f"TensorRT is installed but CUDA is not usable: {st.why} (or pass --backend onnxruntime "
                             "to build for this CPU)")
    say(f"{st.why}: building for this CPU instead, choosing the engine by measurement (--backend auto)")
    return Backend.onnxruntime


def trtexec_command(onnx_name: str, cfg: BuildConfig, plat: Platform, engine_name: str, img: int,
                    trt_version: tuple[int, ...] = (10, 3, 0), strong: bool = False,
                    cache_name: str | None = None) -> str:
    """The trtexec line that builds the same engine, for the TensorRT version it will run on.

    ``strong``: the engine was built strongly typed from ``onnx_name`` (an FP16-typed ONNX): no precision
    flags, ``--stronglyTyped`` on 10.x (11.x is always strongly typed and has neither flag)."""
    b0, b1, b2 = resolve_batch(cfg)
    major = trt_version[0]
    shape = lambda b: f"{INPUT_NAME}:" + "x".join(map(str, cfg.input_format.shape(b, img)))  # noqa: E731
    args = ["trtexec", f"--onnx={onnx_name}", f"--saveEngine={engine_name}"]
    if b0 == b2:
        args.append(f"--shapes={shape(b0)}")
    else:
        args += [f"--minShapes={shape(b0)}", f"--optShapes={shape(b1)}", f"--maxShapes={shape(b2)}"]
    args.append("--profilingVerbosity=detailed")
    if strong or major >= 11:
        if major < 11:
            args.append("--stronglyTyped")
    else:
        if cfg.precision in (Precision.fp16, Precision.int8):
            args.append("--fp16")
        if cfg.precision == Precision.int8:
            args.append("--int8")
        if cache_name:
            args.append(f"--calib={cache_name}")
    ws = cfg.workspace_mib or (plat.target.workspace // (1 << 20) if plat.target.workspace else None)
    if ws:
        args.append(f"--memPoolSize=workspace:{ws}M" if major >= 10 else f"--memPoolSize=workspace:{ws}")
    if cfg.dla_core is not None:
        args.append(f"--useDLACore={cfg.dla_core}")
        if cfg.gpu_fallback:
            args.append("--allowGPUFallback")
    if cfg.opt_level is not None:
        args.append(f"--builderOptimizationLevel={cfg.opt_level}")
    if cfg.hardware_compat:
        args.append("--hardwareCompatibilityLevel=ampere+")
    if cfg.version_compatible:
        args.append("--versionCompatible")
    if cfg.timing_cache:
        args.append(f"--timingCacheFile={cfg.timing_cache.name}")
    return " ".join(shlex.quote(a) for a in args)


def _check_hardware_compat(cfg: BuildConfig, plat: Platform, gpu: dict | None) -> None:
    """AMPERE_PLUS engines are for Ampere and later discrete GPUs: not Xavier (sm_72), not JetPack."""
    if not cfg.hardware_compat:
        return
    if plat.target.jetson:
        raise GhostedgeError(f"--hardware-compat is not supported on Jetson ({plat.target.description}): build on "
                             "each board instead")
    cc = (gpu or {}).get("compute_capability")
    if cc and tuple(int(x) for x in cc.split(".")[:2]) < (8, 0):
        raise GhostedgeError(f"--hardware-compat (AMPERE_PLUS) needs an Ampere or later GPU; this one is sm_"
                             f"{cc.replace('.', '')}: leave it out")


def _uses_cache(cfg: BuildConfig, calib_cache: Path | None, ver: tuple[int, ...]) -> bool:
    """Whether this INT8 build comes from the legacy calibration cache: asked for (--calib-cache, before 11),
    or DLA INT8 on a TensorRT whose DLA takes INT8 from implicit calibration only (``dla_explicit_int8``)."""
    from .backends.tensorrt import dla_explicit_int8

    if cfg.precision != Precision.int8 or ver[0] >= 11:
        return False
    return calib_cache is not None or (cfg.dla_core is not None and not dla_explicit_int8(ver))


def check_dla_version(ver: tuple[int, ...], plat: Platform) -> None:
    """--dla-core on this TensorRT and board (TensorRT 11.4.1 "Working with DLA": 10.7 was the last 10.x release
    with DLA, 11.0-11.3 have none, 11.4.0 has DLA only on Windows on ARM, 11.4.1 brings it back on Jetson AGX Orin
    with JetPack >= 7.2.2 only: not Thor, not Orin NX / Nano)."""
    from .backends.tensorrt.version import check_dla_release

    check_dla_release(ver)
    if ver[0] >= 11 and plat.target.name not in DLA_TARGETS_11:
        raise GhostedgeError(f"--dla-core: TensorRT {'.'.join(map(str, ver))} supports DLA on Jetson AGX Orin only "
                             f"(TensorRT 11.4.1 'Working with DLA'), not on {plat.target.description}: build for the "
                             "GPU, or use JetPack 6 (TensorRT 10.3) for DLA engines there")


#: boards whose DLA TensorRT 11 supports (11.4.1 "Working with DLA": Jetson AGX Orin, JetPack >= 7.2.2)
DLA_TARGETS_11 = ("agx-orin",)


def restamped_cache_path(engine: Path, trt_version: str) -> Path:
    """Where build keeps the calibration cache restamped for ``trt_version``: beside the engine, named after it
    and the version (``ghostnet.trt100300.calib.cache``), never quantize's ``ghostnet.calib.cache``."""
    return engine.with_name(f"{engine.stem}.trt{trt_version_int(trt_version)}.calib.cache")


def _cache_stamp_warning(cache: Path, plat: Platform, say: Callable[[str], None]) -> None:
    """trtexec skips a calibration cache stamped for another TensorRT and then calibrates on random data."""
    if not plat.expected_trt or not cache.is_file():
        return
    header, _ = parse_calib_cache(cache.read_text())
    want = f"TRT-{trt_version_int(plat.expected_trt)}-"
    if not header.startswith(want):
        say(f"warning: {cache.name} is stamped {header.split('-EntropyCalibration')[0]}, this board's TensorRT is "
            f"{plat.expected_trt}: trtexec would ignore it and calibrate on random data; rerun ghostedge quantize "
            f"--cache-trt-version {plat.expected_trt} (or --target auto on the board)")


#: the first TensorRT with uint8 network inputs that a Cast turns into float (ICastLayer, TensorRT 8.6)
UINT8_INPUT_TRT = (8, 6)


def check_uint8_input(cfg: BuildConfig, ver: tuple[int, ...], implicit: bool) -> None:
    """A uint8-input TensorRT engine: TensorRT 8.6+ (its Cast layer converts uint8; 8.5 has none), built from the
    Q/DQ or float ONNX, not by implicit calibration (the calibration cache has no scale for the prelude's output)."""
    if tuple(ver[:2]) < UINT8_INPUT_TRT:
        raise GhostedgeError(f"a uint8 input needs TensorRT 8.6 or later (its Cast layer converts uint8); this is "
                             f"TensorRT {'.'.join(map(str, ver))}: build a float-input engine here")
    if implicit:
        raise GhostedgeError("a uint8 input is built from the Q/DQ ONNX (explicit INT8), not from a legacy "
                             "calibration cache (implicit INT8, as DLA needs before TensorRT 11): build a "
                             "float-input engine for that")


def build_tensorrt(cfg: BuildConfig, say: Callable[[str], None], trt=None, gpu: dict | None = None) -> BuildResult:
    """``trt`` / ``gpu``: the TensorRT module and device description (default: import / query them)."""
    from .backends.cuda import cuda_probe
    from .backends.tensorrt import TrtBuildSettings, build_serialized, import_tensorrt, use_strong_typing
    from .backends.tensorrt import version_tuple as trt_version
    from .backends.tensorrt.version import check_dla_shape

    t0 = time.time()
    plat = resolve(cfg.target)
    check_dla(plat, cfg.dla_core)
    batch = resolve_batch(cfg)
    dla = cfg.dla_core is not None
    if dla:
        check_dla_shape(batch)
    if cfg.precision.value not in plat.target.precisions:
        raise GhostedgeError(f"{plat.target.description} does not support {cfg.precision.value}")
    _check_hardware_compat(cfg, plat, gpu)
    calib_cache = cfg.calib_cache
    if calib_cache is not None and cfg.precision != Precision.int8:
        raise GhostedgeError("--calib-cache is for --int8 builds")
    info_src = need_input(cfg.engines / FP32_NAME, "the FP32 ONNX")
    info = card_for_onnx(info_src)
    img = cfg.img_size or info.input.input_size
    out = cfg.out or cfg.engines / "ghostnet.plan"
    if cfg.input_format.uint8 and read_onnx_card(info_src) is None:
        raise GhostedgeError(f"{info_src} carries no model card (not a ghostedge export): a uint8-input engine needs "
                             "its mean/std; rerun ghostedge quantize")
    try:
        trt = trt or import_tensorrt()
    except GhostedgeError:
        exp = version_tuple(plat.expected_trt) if plat.expected_trt else (10, 3, 0)
        uses_cache = _uses_cache(cfg, calib_cache, exp)
        src_name = IMPLICIT_NAME if uses_cache else INT8_NAME if cfg.precision == Precision.int8 else FP32_NAME
        if uses_cache:
            _cache_stamp_warning(calib_cache or cfg.engines / CACHE_NAME, plat, say)
        if cfg.input_format.uint8:   # the portable artifact for the board: the uint8-input ONNX, beside the others
            check_uint8_input(cfg, exp, uses_cache)
            u8_path = cfg.engines / f"{Path(src_name).stem}.{cfg.input_format.layout}-uint8.onnx"
            write_bytes_atomic(u8_path, uint8_input(onnx.load(str(cfg.engines / src_name)), info.input,
                                                    cfg.input_format.layout).SerializeToString())
            src_name = u8_path.name
        cmd = trtexec_command(src_name, replace(cfg, batch=batch), plat, out.name, img, exp,
                              cache_name=(calib_cache.name if calib_cache else CACHE_NAME) if uses_cache else None)
        raise GhostedgeError(f"TensorRT is not installed here: build on the target board instead: copy "
                             f"{cfg.engines}/*.onnx and {cfg.engines}/ghostnet.calib.* there and run "
                             f"`ghostedge build` (or: {cmd}; TensorRT 10.12+ and 11 build strongly typed from the "
                             "FP16-typed ONNX that ghostedge build writes, without --fp16/--int8/--calib); or use "
                             "--backend onnxruntime here") from None
    ver = trt_version(trt)
    if dla:
        check_dla_version(ver, plat)
    if _uses_cache(cfg, calib_cache, ver) and calib_cache is None:
        # DLA INT8 before TensorRT 11 comes from implicit calibration only: the cache made from the same ranges
        calib_cache = need_input(cfg.engines / CACHE_NAME, f"the calibration cache (DLA INT8 on TensorRT {trt.__version__})")
        say(f"DLA INT8 on TensorRT {trt.__version__}: DLA takes INT8 from a calibration cache only (implicit "
            f"quantization), building from {IMPLICIT_NAME} and {CACHE_NAME} (the same calibration)")
    # implicit INT8 is built from the float graph carrying the Q/DQ graph's weights (quantize writes it), so the
    # engine is the model quantize measured, not the unrefined FP32 export
    src = need_input(cfg.engines / (IMPLICIT_NAME if calib_cache is not None else
                               INT8_NAME if cfg.precision == Precision.int8 else FP32_NAME), "the ONNX to build from")
    record = record_for(cfg.engines, src, info) if cfg.precision == Precision.int8 else None
    if gpu is None:
        gpu, why = cuda_probe()
        if gpu is None:
            raise GhostedgeError(f"{why}: TensorRT engines are built on the GPU they run on; build on the target "
                                 f"(copy {cfg.engines}/*.onnx and the calibration files there)")
    _check_hardware_compat(cfg, plat, gpu)
    cache_bytes = cache_out = None
    if calib_cache is not None:
        if not calib_cache.is_file():
            raise GhostedgeError(f"--calib-cache {calib_cache} not found: run ghostedge quantize first")
        header, scales = parse_calib_cache(calib_cache.read_text())
        here = ".".join(map(str, ver))
        if not header.startswith(f"TRT-{trt_version_int(here)}-"):
            say(f"{calib_cache.name} is stamped {header.split('-EntropyCalibration')[0]}; restamped for TensorRT {here} "
                "(scales unchanged)")
        # restamp the header for the TensorRT that reads it, scales unchanged; kept beside the engine for trtexec
        # under a name of its own (engine + TensorRT version): quantize's cache is an input and is never written
        # over, or the JetPack 5 trtexec recipe would find it stamped for this TensorRT and skip it
        # (NVIDIA/TensorRT#1378: a cache of another version is ignored)
        cache_bytes = calib_cache_text({k: v * 127.0 for k, v in scales.items()}, here).encode()
        cache_out = restamped_cache_path(out, here)
        if cache_out.resolve() == calib_cache.resolve():
            cache_out = None if calib_cache.read_bytes() == cache_bytes else cache_out.with_name(
                cache_out.stem + ".restamped.cache")
    strong = use_strong_typing(trt, cfg.precision.value, cache_bytes is not None, dla)
    model = onnx.load(str(src))
    built_from = src
    if strong and cfg.precision != Precision.fp32:
        model = fp16_onnx(model)
        built_from = out.with_name(out.stem + ".fp16-typed.onnx")
    if cfg.input_format.uint8:
        check_uint8_input(cfg, ver, cache_bytes is not None)
        model = uint8_input(model, info.input, cfg.input_format.layout)
        built_from = built_from.with_name(f"{out.stem}{'.fp16-typed' if built_from != src else ''}"
                                          f".{cfg.input_format.layout}-uint8.onnx")
    ws = (cfg.workspace_mib << 20) if cfg.workspace_mib else plat.target.workspace
    s = TrtBuildSettings(precision=cfg.precision.value, batch=batch, img_size=img, layout=cfg.input_format.layout,
                         workspace=ws, calib_cache=cache_bytes, **cfg.trt_options(),
                         warn=lambda m: say(f"warning: {m}"))
    say(f"building with TensorRT {trt.__version__} ({'strongly' if strong else 'weakly'} typed) for "
        f"{plat.target.description}")
    data, rep = build_serialized(trt, model.SerializeToString(), s)
    # the exact inputs the engine was built from, beside it, so the printed trtexec line reproduces it
    if built_from != src:
        write_bytes_atomic(built_from, model.SerializeToString())
    if cache_out is not None:
        write_bytes_atomic(cache_out, cache_bytes)
    write_bytes_atomic(out, data)
    man = common_manifest(cfg, src, record, info_src, info)   # the card read once, above
    cache_name = (cache_out or calib_cache).name if cache_bytes is not None else None
    trtexec = trtexec_command(built_from.name, replace(cfg, batch=batch), plat, out.name, img, ver, strong,
                              cache_name)
    man.update({
        "batch": list(batch),
        "backend": "tensorrt", "tensorrt": str(trt.__version__), "strongly_typed": rep.strongly_typed,
        "flags": rep.flags, "gpu": gpu, "target": plat.target.name, "board": plat.board, "l4t": plat.l4t,
        "jetpack": plat.jetpack, "img_size": img, "workspace": ws, "dla_core": cfg.dla_core,
        "num_dla_cores": rep.num_dla_cores, "gpu_fallback": cfg.gpu_fallback,
        "dla_fallback_layers": rep.dla_fallback_layers,
        "opt_level": cfg.opt_level, "hardware_compat": cfg.hardware_compat,
        "version_compatible": cfg.version_compatible, "calib_cache": cache_name,
        "built_from_onnx": {"path": built_from.name, "sha256": file_sha256(built_from)},
        "timing_cache": rep.timing_cache, "trtexec": trtexec, "build_seconds": rep.seconds,
    })
    mp = write_manifest(out, man)
    return BuildResult(out, mp, "tensorrt", cfg.precision.value, round(time.time() - t0, 1), trtexec=trtexec,
                       dla_fallback_layers=rep.dla_fallback_layers)


def build_torch_tensorrt(cfg: BuildConfig, say: Callable[[str], None]) -> BuildResult:
    """The torch-tensorrt frontend: the PyTorch model compiled straight to a plan (``backends.torch_tensorrt``);
    INT8 calibrated on the calibration images. ``cfg.batch`` is resolved by ``build``."""
    from .backends.torch_tensorrt import (
        TorchTrtSettings,
        check_available,
        compile_engine,
    )
    from .checkpoint import load_model
    from .data import batches, load_images, normalize, sample_images

    check_available(cfg.precision)
    t0 = time.time()
    model, info = load_model(cfg.weights, spec=cfg.spec)
    img = cfg.img_size or info.input.input_size
    calib = note = None
    if cfg.precision == Precision.int8:
        folder = cfg.calib or Path("calib")
        u8, _, _ = load_images(sample_images(folder, 512), info.input, what=f"calibration images in {folder}",
                               needed=1)
        calib, note = list(batches(normalize(u8, info.input), 32)), {"folder": str(folder)}
    eng = compile_engine(model, TorchTrtSettings(cfg.precision.value, tuple(cfg.batch), img), calib, note)
    out = cfg.out or cfg.engines / "ghostnet.plan"
    write_bytes_atomic(out, eng.data)
    mp = write_manifest(out, {
        "backend": "tensorrt", "frontend": "torch-tensorrt", "torch_tensorrt": eng.torch_tensorrt,
        "tensorrt": eng.tensorrt, "precision": cfg.precision.value, "gpu": eng.gpu, "img_size": img,
        "batch": list(cfg.batch), "model": info.to_dict(), "calibration": eng.calibration,
        "io_dtype": eng.io_dtype, "compile_kwargs": eng.compile_kwargs,
    })
    say(f"compiled with torch-tensorrt {eng.torch_tensorrt} in {time.time() - t0:.0f}s")
    return BuildResult(out, mp, "tensorrt", cfg.precision.value, round(time.time() - t0, 1))


def build(cfg: BuildConfig, say: Callable[[str], None] = lambda s: None) -> BuildResult:
    if cfg.frontend == Frontend.torch_tensorrt and cfg.input_format.uint8:
        raise GhostedgeError("a uint8 input is built from the ONNX (frontend onnx), not by torch-tensorrt")
    if cfg.frontend == Frontend.torch_tensorrt:
        from .backends.torch_tensorrt import check_torch_tensorrt_options

        check_torch_tensorrt_options(cfg)   # before torch is imported, and before --dla-core picks a batch
        return build_torch_tensorrt(replace(cfg, batch=resolve_batch(cfg)), say)
    if cfg.spec is not None and cfg.spec.given():  # the ONNX carries the description quantize was told
        src = need_input(cfg.engines / FP32_NAME, "the FP32 ONNX")
        stored = read_onnx_card(src)
        if stored is not None:
            check_against(stored, cfg.spec, src.name)
    backend = choose_backend(cfg, say)
    if backend == Backend.tensorrt:
        return build_tensorrt(cfg, say)
    if cfg.precision == Precision.fp16:
        raise GhostedgeError("--fp16 on a CPU backend: CPUs here have no fast FP16 path; use --int8 (fastest on "
                             "CPU) or --fp32, or --backend tensorrt on an NVIDIA GPU")
    if cfg.dla_core is not None:
        raise GhostedgeError("--dla-core needs --backend tensorrt on a Jetson with DLA")
    from .build_cpu import build_cpu, choose_cpu_engine

    if cfg.backend == Backend.auto:   # no GPU: the CPU engine is chosen by measurement here
        return choose_cpu_engine(cfg, say, cfg.threads)
    return build_cpu(cfg, backend.value, say)

