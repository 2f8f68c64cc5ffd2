"""Opening a .plan: check that this machine's TensorRT and GPU can run it (from its manifest) before TensorRT
tries to deserialize it, then a runner for it."""

from __future__ import annotations

from pathlib import Path

from ...manifest import read_manifest
from ...targets import detect
from .runner import TensorRTRunner
from .version import check_plan_manifest


def installed_version() -> str | None:
    """This machine's TensorRT version, or None where it is not installed."""
    try:
        import tensorrt
    except ImportError:
        return None
    return str(tensorrt.__version__)


def open_engine(path: Path, threads: int = 0, cuda_graph: bool = False,
                precision_hint: str | None = None) -> tuple[TensorRTRunner, dict]:
    """A runner for a TensorRT plan built by ghostedge (its manifest says for which TensorRT and GPU; the
    precision is the engine's own: ``threads`` and ``precision_hint`` are CPU runtimes' options)."""
    from .. import cuda   # looked up at call time (tests replace cuda.cuda_probe)

    man = read_manifest(path, required=True)
    trt_version = installed_version()
    gpu, why = cuda.cuda_probe() if trt_version else (None, "")
    check_plan_manifest(man, trt_version, gpu, detect() is not None, why)
    runner = TensorRTRunner(path, cuda_graph=cuda_graph, dla_core=man.get("dla_core"),
                            version_compatible=bool(man.get("version_compatible")))
    runner.precision = man.get("precision", "?")
    return runner, man
