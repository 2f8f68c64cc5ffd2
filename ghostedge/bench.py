"""Throughput, latency and accuracy drift of engines against the FP32 PyTorch model, measured in one run.

Runtimes are measured one after another, each torn down before the next starts, so no thread pool is
left spinning while another runtime is timed. The harness around each inference is two
``perf_counter`` calls (``scripts/bench_overhead.py`` shows its cost against a bare loop).
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from .backends.base import BaseRunner, logits_in_batches
from .backends.registry import backend_for_path
from .data import class_folders, find_images, labelled_set
from .drift import accuracy, compare, judge
from .errors import CheckFailed, GhostedgeError, SettingError
from .input_uint8 import engine_format, feed_for, timing_input
from .manifest import cpu_flags, cpu_name
from .card import ModelCard, card_for_onnx, read_onnx_card
from .checkpoint import ModelSpec, check_against, load_model
from .modes import Baseline
from .resources import check_batch, check_logits
from .stream import ImageSet, Streamed, with_reference
from .timing import MIN_WARMUP_S, Timing, time_runner  # noqa: F401 (MIN_WARMUP_S: re-exported)


@dataclass
class BenchConfig:
    engines: list[Path]
    batches: tuple[int, ...] = (1, 8, 32)
    img_size: int | None = None
    warmup: int = 3
    iters: int | None = None
    seconds: float = 2.0
    threads: int = 0
    baseline: Baseline = Baseline.torch
    eval_dir: Path | None = None
    max_drop: float | None = None
    weights: Path | None = None      # override the engines' source weights for the baseline
    max_eval_images: int = 0         # 0 = all
    cuda_graph: bool = False         # TensorRT: replay each batch shape from a captured CUDA graph
    spec: ModelSpec | None = None    # --preprocess / --classes: checked against what the engines carry
    reference_cache: bool = True     # FP32 reference logits of an eval set cached per set (stream.py)
    on_calibration_images: bool = False   # eval_dir is the calibration folder: a faithfulness check, not drift


@dataclass
class EngineReport:
    path: str
    backend: str
    precision: str
    timings: dict[int, Timing] = field(default_factory=dict)
    drift: dict | None = None
    manifest: dict | None = None

    def to_dict(self, base: "EngineReport | None" = None) -> dict:
        d = {"path": self.path, "backend": self.backend, "precision": self.precision,
             "throughput": {str(b): round(t.throughput, 2) for b, t in self.timings.items()},
             "latency_ms": {str(b): {"p50": round(t.p50, 3), "p90": round(t.p90, 3), "p99": round(t.p99, 3)}
                            for b, t in self.timings.items()},
             "iters": {str(b): t.iters for b, t in self.timings.items()}}
        if any(t.gpu_ms_p50 is not None for t in self.timings.values()):
            d["gpu_compute_ms_p50"] = {str(b): t.gpu_ms_p50 for b, t in self.timings.items()}
        if base is not None:
            d["speedup_vs_baseline"] = {str(b): round(t.throughput / base.timings[b].throughput, 3)
                                        for b, t in self.timings.items() if b in base.timings}
        sel = (self.manifest or {}).get("selection")
        if sel:  # how a CPU engine was chosen: what it is, what it was checked on, and any shortfall
            d["cpu_choice"] = {"chosen": sel.get("chosen"), "cpu": (sel.get("cpu") or {}).get("name"),
                               "vnni": (sel.get("cpu") or {}).get("vnni"), "images": sel.get("images"),
                               "shortfall": sel.get("shortfall")}
        if self.drift:
            d.update(self.drift)
        return d


# ---------------------------------------------------------------------------------------------
# opening engines

def _check_file(path: Path) -> None:
    if not path.exists():
        raise GhostedgeError(f"engine {path} not found: build it with ghostedge build")
    if path.is_dir():
        raise GhostedgeError(f"{path} is a folder: pass an engine file (.plan or .onnx)")
    if path.stat().st_size == 0:
        raise GhostedgeError(f"engine {path} is empty: rebuild it with ghostedge build")


def open_runner(path: Path, threads: int = 0, cuda_graph: bool = False) -> tuple[BaseRunner, dict | None]:
    """A runner for an engine file, from the backend its suffix names, and the engine's manifest."""
    _check_file(path)
    kind = backend_for_path(path)
    return kind.open_runner(path, threads=threads, cuda_graph=cuda_graph)


# ---------------------------------------------------------------------------------------------
# measuring

def environment(threads: int) -> dict:
    env = {"machine": platform.machine(), "cpu": cpu_name(), "cores": os.cpu_count(),
           "threads": threads or os.cpu_count(), "python": platform.python_version()}
    for mod in ("onnxruntime", "openvino", "torch"):
        try:
            env[mod] = __import__(mod).__version__
        except ImportError:
            pass
    env["cpu_flags"] = cpu_flags()
    if shutil.which("nvidia-smi"):
        try:
            q = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,clocks.sm,clocks.mem",
                                "--format=csv,noheader"], capture_output=True, text=True, timeout=10)
            env["gpu"] = q.stdout.strip().splitlines()[0] if q.stdout.strip() else None
        except (OSError, subprocess.SubprocessError):
            pass
    if shutil.which("nvpmodel"):
        try:
            q = subprocess.run(["nvpmodel", "-q"], capture_output=True, text=True, timeout=10)
            env["nvpmodel"] = " ".join(q.stdout.split())
        except (OSError, subprocess.SubprocessError):
            pass
    if Path("/etc/nv_tegra_release").exists():
        from .targets import jetson_gpu_clock

        clk = jetson_gpu_clock()
        if clk:
            env["jetson_gpu_clock"] = clk   # cur/min/max Hz and whether jetson_clocks pinned it
    return env


def _eval_set(cfg: BenchConfig, info: ModelCard) -> ImageSet:
    """The --eval images as files (streamed later, never all in memory), labelled when the folder has
    class subfolders."""
    root = cfg.eval_dir
    try:
        dirs = class_folders(root)
    except GhostedgeError:
        dirs = []
    if dirs:
        ds = labelled_set(root, info.classes, info.wnids)
        paths, labels = ds.paths, np.asarray(ds.labels)
        if cfg.max_eval_images and len(paths) > cfg.max_eval_images:
            sel = np.random.default_rng(0).choice(len(paths), cfg.max_eval_images, replace=False)
            sel.sort()
            paths, labels = [paths[i] for i in sel], labels[sel]
        return ImageSet(paths, labels, f"eval images in {root}", Path(root))
    paths = find_images(root)
    if not paths:
        raise GhostedgeError(f"--eval {root} has no images: pass an ImageFolder tree (<class>/<images>) or a "
                             "folder of images")
    if cfg.max_eval_images:
        paths = paths[:cfg.max_eval_images]
    return ImageSet(paths, None, f"eval images in {root}", Path(root))


def _foreign_card(path: Path) -> ModelCard:
    """The card of an engine ghostedge did not describe: a foreign ONNX's static input shape, else an error."""
    if backend_for_path(path).onnx_engine:
        return card_for_onnx(path)
    raise GhostedgeError(f"{path.name} has no manifest beside it to say its input size: give the input size, "
                         "or rebuild it with ghostedge build")


def bench(cfg: BenchConfig, say: Callable[[str], None] = lambda s: None,
          progress: Callable[[str, int, int], None] | None = None) -> dict:
    if not cfg.engines:
        raise GhostedgeError("no engine given: pass one or more .plan / .onnx files from ghostedge build")
    if any(b < 1 for b in cfg.batches):
        raise GhostedgeError("--batch sizes must be >= 1")
    if cfg.baseline not in tuple(Baseline):
        raise SettingError("baseline", f"{{baseline}} {cfg.baseline!r}: use torch or none")
    if cfg.max_drop is not None and (cfg.eval_dir is None or cfg.on_calibration_images):
        raise SettingError("max_drop", "{max_drop} needs {eval_dir} (labelled images the calibration did not use): "
                                       "without them there is no drift to judge")
    opened = [(p, *open_runner(p, cfg.threads, cfg.cuda_graph)) for p in cfg.engines]
    fixed_shape = {p: backend_for_path(p).fixed_shape for p in cfg.engines}   # else any batch and size

    # the model the engines were built from
    infos = [ModelCard.from_dict(m["model"]) for _, _, m in opened if m and m.get("model")]
    if not infos:
        infos = [i for i in (read_onnx_card(p) for p, _, _ in opened if backend_for_path(p).onnx_engine) if i]
    if len({i.fingerprint for i in infos}) > 1:
        raise GhostedgeError("the engines were built from different weights: bench engines of one model at a time")
    if len({i.input.describe() for i in infos}) > 1:
        raise GhostedgeError("the engines were made with different preprocessing: bench engines of one "
                             "quantize run at a time")
    if infos:
        check_against(infos[0], cfg.spec, Path(opened[0][0]).name)
    model = info = None
    if cfg.baseline == "torch" or cfg.eval_dir is not None:
        weights = cfg.weights
        if weights is None and infos and not infos[0].source.startswith("reference"):
            weights = Path(infos[0].source)
        model, info = load_model(weights, spec=None if infos else cfg.spec)
        if infos and infos[0].fingerprint and infos[0].fingerprint != info.fingerprint:
            raise GhostedgeError(f"the engines were built from weights {infos[0].fingerprint}, the baseline "
                                 f"weights are {info.fingerprint}: pass the engines' --weights")
        if infos:  # the description the engines carry (stated once, at quantize) wins over a re-read sidecar
            info.input, info.classes, info.wnids = infos[0].input, infos[0].classes, infos[0].wnids
    info = info or (infos[0] if infos else None)
    size = cfg.img_size or (info or _foreign_card(opened[0][0])).input.input_size
    if size < 32:
        raise GhostedgeError(f"--img-size {size} is too small: GhostNet downsamples 32x, use >= 32")
    check_batch(max(cfg.batches), size, info.width if info else 1.0)
    for p, r, m in opened:
        if m and m.get("batch") and fixed_shape[p]:
            lo, hi = m["batch"][0], m["batch"][2]
            bad = [b for b in cfg.batches if not lo <= b <= hi]
            if bad:
                raise GhostedgeError(f"--batch {','.join(map(str, bad))} is outside {p.name}'s profile (batch "
                                     f"{lo}..{hi}): bench --batch {lo if lo == hi else f'{lo},{hi}'}, or rebuild with "
                                     f"--batch {min(min(bad), lo)}:{lo}:{max(max(bad), hi)}")
        if m and m.get("img_size") and fixed_shape[p] and m["img_size"] != size:
            raise GhostedgeError(f"{p.name} was built for {m['img_size']} px, not {size}: pass --img-size "
                                 f"{m['img_size']} or rebuild with --img-size {size}")

    ev: ImageSet | None = None
    eval_size = None
    if cfg.eval_dir is not None:
        if info is None:
            raise GhostedgeError("--eval needs the model's classes: bench engines built by ghostedge")
        # accuracy at the model's native resolution, unless a fixed-shape engine was built for another
        eval_size = info.input.input_size
        fixed = {m.get("img_size") for p, _, m in opened if m and fixed_shape[p] and m.get("img_size")}
        if fixed:
            eval_size = fixed.pop()
        ev = _eval_set(cfg, info)
        check_logits(len(ev), info.num_classes, len(opened) + 1, f"--eval {cfg.eval_dir}")

    rng = np.random.default_rng(0)
    inputs = {b: rng.standard_normal((b, 3, size, size), dtype=np.float32) for b in cfg.batches}
    reports: list[EngineReport] = []
    for p, runner, man in opened:
        rep = EngineReport(str(p), runner.backend, runner.precision, manifest=man)
        say(f"measuring {p.name} ({runner.backend}, {runner.precision})")
        fmt = engine_format(p, man)   # a uint8-input engine is timed on uint8 pixels
        timed = inputs if not fmt.uint8 else {b: timing_input(fmt, b, size, rng) for b in cfg.batches}
        with runner:
            for b in cfg.batches:
                rep.timings[b] = time_runner(runner, timed[b], cfg.warmup, cfg.iters, cfg.seconds)
        for w in getattr(runner, "warnings", ()):
            say(f"warning: {p.name}: {w}")
        reports.append(rep)

    base = None
    if model is not None:
        from .backends.torch import TorchRunner

        base = EngineReport("pytorch", "torch", "fp32")
        if cfg.baseline == "torch":
            with TorchRunner(model, threads=cfg.threads) as tr:
                say("measuring the FP32 PyTorch baseline")
                for b in cfg.batches:
                    base.timings[b] = time_runner(tr, inputs[b], cfg.warmup, cfg.iters, cfg.seconds)

    failed = []
    base_d: dict | None = None
    streamed = None
    if ev is not None:
        t_ev = time.perf_counter()
        streamed = _drift_pass(cfg, ev, info, eval_size, model, opened, progress, say)
        t_ev = time.perf_counter() - t_ev
        labels = streamed.labels(ev)
        ref_logits = streamed.logits["reference"]
        for i, rep in enumerate(reports):
            d = compare(ref_logits, streamed.logits[f"engine{i}"], labels, info.classes)
            rep.drift = {"top1": d.top1, "top5": d.top5, "top1_drop_pts": d.top1_drop_pts,
                         "agreement": d.agreement, "cosine": d.cosine, "kl": d.kl,
                         "fp32_right_engine_wrong": d.ref_right_engine_wrong,
                         "fp32_wrong_engine_right": d.ref_wrong_engine_right,
                         "drop_ci95": d.drop_ci95, "classes_lost_most": d.classes_lost_most}
            if cfg.on_calibration_images:
                rep.drift = {"calibration_agreement": d.agreement, "calibration_kl": d.kl}
            elif cfg.max_drop is not None:
                verdict = judge(d, cfg.max_drop)
                rep.drift["gate"] = verdict.message
                if verdict.fails:
                    failed.append(f"{Path(rep.path).name}: {verdict.message}")
        if labels is not None and not cfg.on_calibration_images:
            acc = accuracy(ref_logits, labels)
            base_d = {"top1": acc.top1, "top5": acc.top5}
    n_ev = len(streamed.kept) if streamed is not None else 0
    what = None
    if ev is not None:
        what = (f"{cfg.eval_dir} ({n_ev} labelled images)" if ev.labels is not None
                else f"{cfg.eval_dir} ({n_ev} unlabelled images: agreement only)")
    result = {
        "engines": [r.to_dict(base if base and base.timings else None) for r in reports],
        "baseline": ({**(base.to_dict() if base.timings else {"path": "pytorch", "backend": "torch",
                                                             "precision": "fp32"}), **(base_d or {})}
                     if base is not None else None),
        "eval": what if not cfg.on_calibration_images else None,
        "eval_img_size": eval_size if ev is not None and not cfg.on_calibration_images else None,
        "eval_seconds": round(t_ev, 2) if ev is not None else None,   # the streamed pass over the eval images
        "img_size": size,
        "batches": list(cfg.batches),
        "environment": environment(cfg.threads),
        "gate": {"max_drop": cfg.max_drop, "failed": failed} if cfg.max_drop is not None else None,
    }
    if cfg.on_calibration_images:
        result["calibration_check"] = {
            "images": f"{cfg.eval_dir} ({n_ev} calibration images)", "img_size": eval_size,
            "note": CALIBRATION_NOTE}
    return result


#: what agreement on the calibration images is, where pipeline had no --eval set
CALIBRATION_NOTE = ("agreement with FP32 on the calibration images themselves (synthetic images in the shipped "
                    "calib/): a check that each engine runs the calibration, not a drift estimate; pass --eval "
                    "DIR (real labelled images) for drift")


def _drift_pass(cfg: BenchConfig, ev: ImageSet, info: ModelCard, size: int, model, opened,  # noqa: ANN001
                progress: Callable[[str, int, int], None] | None, say: Callable[[str], None]) -> Streamed:
    """One pass over the eval images, every engine (and the FP32 reference unless cached) on each batch."""
    from contextlib import ExitStack

    from .backends.torch import TorchRunner

    batch = max(cfg.batches)
    tick = (lambda d, t: progress("drift: eval images", d, t)) if progress else None
    with ExitStack() as stack:
        models = {}
        for i, (p, runner, man) in enumerate(opened):
            fed = stack.enter_context(feed_for(runner, info.input, engine_format(p, man)))
            models[f"engine{i}"] = (lambda r: lambda xb: logits_in_batches(r, xb, batch))(fed)

        def reference():  # noqa: ANN202
            tr = stack.enter_context(TorchRunner(model, threads=cfg.threads))
            return tr.infer

        return with_reference(ev, info, info.input, size, models, reference, batch, tick,
                              use_cache=cfg.reference_cache, say=say)


def gate(result: dict) -> None:
    g = result.get("gate")
    if g and g["failed"]:
        raise CheckFailed("accuracy gate failed: " + "; ".join(g["failed"]))
