"""TensorRT version rules: which release has which builder feature, DLA path and typing mode, and which engine a
runtime here can load. Names are chosen by feature (``hasattr``), never by hard-coded enum integers."""

from __future__ import annotations

from types import ModuleType

from ...errors import GhostedgeError
from ...manifest import version_tuple as parse_version

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
    return parse_version(str(getattr(trt, "__version__", "0.0.0")))


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


def check_dla_release(ver: tuple[int, ...]) -> None:
    """--dla-core on a TensorRT release that cannot build for DLA (``dla_supported``) is refused."""
    if not dla_supported(ver):
        here = ".".join(map(str, ver))
        raise GhostedgeError(f"--dla-core: TensorRT {here} cannot build for DLA here (10.7 was the last 10.x release "
                             "with DLA; 11.0-11.3 have none; 11.4.0 only on Windows on ARM; 11.4.1+ on Jetson AGX "
                             "Orin with JetPack 7.2.2+): build for the GPU, or use JetPack 6 (TensorRT 10.3) / "
                             "JetPack 5 (8.5) for DLA engines")


def check_dla_shape(batch: tuple[int, int, int]) -> None:
    """DLA engines have a static shape (DLA restrictions: min = opt = max)."""
    if len(set(batch)) != 1:
        raise GhostedgeError(f"--dla-core needs a static shape (DLA: min = opt = max), not --batch "
                             f"{':'.join(map(str, batch))}: pass --batch N (e.g. --batch {batch[1]})")


def check_dla_request(ver: tuple[int, ...], precision: str, batch: tuple[int, int, int]) -> None:
    """Every DLA rule that needs only the TensorRT release and the build settings (the board's is ``build``'s)."""
    if precision == "fp32":
        raise GhostedgeError("DLA runs FP16 or INT8 only: pass --fp16 or --int8 with --dla-core")
    check_dla_release(ver)
    check_dla_shape(batch)


def dla_explicit_int8(ver: tuple[int, ...]) -> bool:
    """DLA INT8 from explicit Q/DQ: only on TensorRT 11.4.1+, whose DLA builds are strongly typed (11.4.1
    "Strongly Typed Networks for DLA"). Before that DLA takes INT8 from implicit calibration: TensorRT's own
    docs call IInt8EntropyCalibrator2 "the required calibrator for DLA" (10.x API reference), NVIDIA/TensorRT#2222
    says so for 8.x and NVIDIA/Model-Optimizer PR #1661 "DLA still only supports IQ"; no source confirms Q/DQ
    INT8 on DLA for 10.0-10.7, so those use the calibration cache too."""
    return tuple(ver[:3]) >= (11, 4, 1)


#: builder features TensorRT 8.6 added (absent on JetPack 5.1's 8.5.2): option -> what to check
TRT86_FEATURES = {
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


#: cross-major moves a version-compatible engine survives (TensorRT's version-compatibility rules)
VC_MAJOR_STEPS = {(8, 10), (10, 11)}


def runtime_can_load(built: str, here: str, version_compatible: bool) -> bool:
    """Same TensorRT, or (version-compatible engines) the same or a later runtime of the same major or one
    major step on (8 -> 10, 10 -> 11)."""
    if str(built) == str(here):
        return True
    if not version_compatible:
        return False
    b, h = parse_version(built), parse_version(here)
    return h >= b and (h[0] == b[0] or (b[0], h[0]) in VC_MAJOR_STEPS)


def gpu_can_load(man: dict, gpu: dict, here_jetson: bool) -> bool:
    """Same compute capability, or a hardware-compatible (AMPERE_PLUS) engine on another Ampere+ dGPU."""
    built_cc = (man.get("gpu") or {}).get("compute_capability")
    here_cc = gpu.get("compute_capability")
    if built_cc == here_cc:
        return True
    if not man.get("hardware_compat") or here_jetson or man.get("jetpack") or man.get("l4t"):
        return False
    return parse_version(here_cc or "0")[:2] >= (8, 0) and parse_version(built_cc or "0")[:2] >= (8, 0)


def check_plan_manifest(man: dict, trt_version: str | None, gpu: dict | None, here_jetson: bool = False,
                        why: str = "") -> None:
    """Explain why a .plan cannot run here, before TensorRT fails to deserialize it. ``why``: why no GPU was
    found (``cuda_probe``), so a broken driver or binding is named, not called "no GPU"."""
    built = f"TensorRT {man.get('tensorrt')} on {(man.get('gpu') or {}).get('gpu', '?')}"
    cc = (man.get("gpu") or {}).get("compute_capability")
    if cc:
        built += f" (sm_{cc.replace('.', '')})"
    if trt_version is None or gpu is None:
        what = "no TensorRT" if trt_version is None else (why or "no CUDA GPU")
        raise GhostedgeError(f"engine was built with {built}; on this machine: {what}: run bench on the "
                             "board it was built for, or bench the ONNX Runtime engines here")
    here = f"TensorRT {trt_version} on {gpu.get('gpu')} (sm_{str(gpu.get('compute_capability', '')).replace('.', '')})"
    same_trt = runtime_can_load(str(man.get("tensorrt")), trt_version, bool(man.get("version_compatible")))
    same_gpu = gpu_can_load(man, gpu, here_jetson)
    if not (same_trt and same_gpu):
        raise GhostedgeError(f"engine was built with {built}; this is {here}: rebuild here with ghostedge build")
