"""quantize -> build -> bench in one call: the whole job from a checkpoint and calibration images to engines
with their speed and accuracy cost measured (TensorRT FP16 + INT8 on a GPU; FP32 + INT8 CPU engines
otherwise, each chosen by measurement as ``build`` does)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from .backends.common import Backend, BuildResult, Precision
from .errors import SettingError
from .checkpoint import ModelSpec
from .modes import Method, Ranges, Rounding
from .quantize import QuantizeResult


@dataclass
class PipelineSettings:
    calib: Path = Path("calib")
    weights: Path | None = None
    num_classes: int | None = None
    spec: ModelSpec | None = None        # the caller's description of the checkpoint
    eval_dir: Path | None = None         # labelled images for drift; without: a faithfulness check only
    engines: Path = Path("engines")      # output folder
    method: Method = Method.mse
    num_images: int = 512
    calib_batch: int = 32
    ranges: Ranges = Ranges.fixed
    rounding: Rounding = Rounding.gptq
    target: str = "auto"                 # the board: calibration cache stamp and TensorRT build
    backend: Backend = Backend.auto
    batches: tuple[int, ...] = (1, 8, 32)   # bench batch sizes (the engines' profile reaches the largest)
    img_size: int | None = None          # bench input size (default: the model's)
    seconds: float = 2.0                 # bench time per engine and batch
    threads: int = 0
    max_drop: float | None = None        # top-1 drop budget (points) for the INT8 engine, judged on eval_dir
    max_eval_images: int = 0             # 0 = all


@dataclass
class PipelineResult:
    quantize: QuantizeResult
    builds: list[BuildResult] = field(default_factory=list)
    bench: dict = field(default_factory=dict)    # bench's result, with the quantize result under "quantize"


def pipeline(s: PipelineSettings, say: Callable[[str], None] | None = None,
             progress: Callable[[str, int, int], None] | None = None) -> PipelineResult:
    """Quantize, build both engines, bench them against FP32 PyTorch. The caller judges the gate
    (``bench.gate(result.bench)``) after rendering the result."""
    from .bench import BenchConfig, bench
    from .build import BuildConfig, build, choose_backend
    from .quantize import QuantizeConfig, cache_trt_for, quantize
    from .refine import RefineConfig

    say = say or (lambda m: None)
    if s.max_drop is not None and s.eval_dir is None:
        raise SettingError("max_drop", "{max_drop} needs {eval_dir} (labelled images the calibration did not use): "
                                       "without it pipeline can only compare engines on the calibration images, "
                                       "which is not drift")
    say("[1/3] quantize")
    qcfg = QuantizeConfig(calib=s.calib, out=s.engines, weights=s.weights, num_classes=s.num_classes, spec=s.spec,
                          method=s.method, num_images=s.num_images, batch=s.calib_batch, threads=s.threads,
                          trt_version=cache_trt_for(s.target),
                          refine=RefineConfig(ranges=s.ranges, rounding=s.rounding))
    try:
        q = quantize(qcfg, progress=progress, say=say)
    except SettingError as e:      # quantize's names for the settings this one calls otherwise
        raise e.renamed({"batch": "calib_batch", "out": "engines"}) from None
    say(f"  INT8 vs FP32 on {q.drift_set}: agreement {q.drift.agreement:.2f}%"
        + ("" if s.eval_dir else " (calibration-folder images: a faithfulness check, not a drift estimate; "
                                 "pass labelled evaluation images for drift)"))

    say("[2/3] build")
    be = s.backend
    resolved = choose_backend(BuildConfig(backend=be), lambda m: None)   # each build says what it chose
    gpu = resolved == Backend.tensorrt
    if gpu:
        be = resolved           # else (auto on a CPU) each engine is chosen by measurement, as in ghostedge build
    builds = []
    for prec in (Precision.fp16, Precision.int8) if gpu else (Precision.fp32, Precision.int8):
        r = build(BuildConfig(engines=s.engines, precision=prec, backend=be, target=s.target,
                              out=s.engines / f"ghostnet.{prec.value}.plan" if gpu else None, threads=s.threads,
                              calib=s.calib, batch=(1, max(s.batches), max(s.batches))), say=say)
        say(f"  {r.engine} ({r.backend}, {r.precision})")
        builds.append(r)

    say("[3/3] bench")
    # without eval_dir the engines are still run on calibration-folder images (at most num_images), reported
    # apart as a faithfulness check: never as drift, never in the gate
    res = bench(BenchConfig(engines=[r.engine for r in builds], batches=s.batches, img_size=s.img_size,
                            seconds=s.seconds, threads=s.threads, eval_dir=s.eval_dir or s.calib,
                            max_drop=s.max_drop, weights=s.weights,
                            max_eval_images=s.max_eval_images or (0 if s.eval_dir else s.num_images),
                            on_calibration_images=s.eval_dir is None), say=say, progress=progress)
    res["quantize"] = q.to_dict()
    return PipelineResult(quantize=q, builds=builds, bench=res)
