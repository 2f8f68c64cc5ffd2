"""INT8 post-training quantization: calibration images -> Q/DQ ONNX + calibration record + TensorRT cache.

Everything is checked before anything is written; every output is written atomically.
"""

from __future__ import annotations

import json
import platform
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
import torch

from . import __version__
from .backends.torch import TorchRunner, torch_logits  # noqa: F401 (torch_logits: re-exported)
from .card import InputSpec, ModelCard
from .calibrate import Method, TensorStats, collect_stats, compute_amax
from .data import batches, fingerprint_files, labelled_set, load_images, normalize, sample_images
from .drift import DriftResult, compare, judge
from .estimate import MEASURED_WITH, qdq_logits, qdq_runner
from .errors import GhostedgeError, SettingError, write_bytes_atomic, write_text_atomic
from .export import INPUT_NAME, export_onnx, onnx_is_current, ort_session
from .checkpoint import ModelSpec, load_model
from .resources import check_batch, check_images, check_logits
from .qdq import QMAX, implicit_cache_tensors, insert_qdq, off_grid_channels, plan_placement, quantizable_nodes, \
    strip_qdq
from .record import CalibrationData, CalibrationRecord, TensorRange
from .refine import RefineConfig, Refined, Unsupported, apply_weights, refine
from .stream import ImageSet, stream_logits, with_reference

FP32_NAME = "ghostnet.onnx"
INT8_NAME = "ghostnet.int8.onnx"
#: the float graph an implicit-INT8 build (legacy calibration cache) is made from: the Q/DQ graph without its
#: Q/DQ, quantized weights on their int8 grid, refined biases; float layers keep their float weights
IMPLICIT_NAME = "ghostnet.implicit.onnx"
RECORD_NAME = "ghostnet.calib.json"
CACHE_NAME = "ghostnet.calib.cache"
REPORT_NAME = "ghostnet.quant.json"
#: the TensorRT version stamped into the legacy cache header unless the target says otherwise: JetPack
#: 5.1's 8.5.2 (-> 8502), where implicit INT8 from the cache is the only DLA INT8 path
DEFAULT_CACHE_TRT = "8.5.2"
#: nodes left in floating point by default: the squeeze-excite 1x1 convs run on a 1x1 map, so INT8
#: buys nothing there and costs accuracy (DESIGN.md: SE nets lose accuracy under naive PTQ)
DEFAULT_EXCLUDE_PATTERNS = ("/se/",)


@dataclass
class QuantizeConfig:
    calib: Path
    out: Path = Path("engines")
    weights: Path | None = None
    num_classes: int | None = None
    spec: ModelSpec | None = None       # the command line's description of the checkpoint
    method: Method = Method.mse
    percentile: float = 99.99
    num_images: int = 512
    batch: int = 32
    eval_dir: Path | None = None
    max_drop: float | None = None
    seed: int = 0
    threads: int = 0
    exclude: tuple[str, ...] = DEFAULT_EXCLUDE_PATTERNS   # node-name substrings kept in float
    holdout: int = 256         # held-out calibration-folder images for label-free drift
    trt_version: str = DEFAULT_CACHE_TRT
    refine: RefineConfig = field(default_factory=RefineConfig)


@dataclass
class QuantizeResult:
    out: Path
    files: dict[str, str]
    method: str
    num_images: int
    seconds: float
    drift: DriftResult
    drift_set: str
    measured_with: str
    excluded: list[str]
    sensitivity: list[dict] = field(default_factory=list)
    mixed_precision_steps: list[dict] = field(default_factory=list)
    skipped_images: int = 0
    refinement: dict = field(default_factory=dict)
    gate: dict | None = None

    def to_dict(self) -> dict:
        d = {k: (str(v) if isinstance(v, Path) else v) for k, v in self.__dict__.items()}
        d["drift"] = self.drift.to_dict()
        return d


def trt_version_int(version: str) -> int:
    """'8.6.1' -> 8601, '10.3.0' -> 100300 (the stamp TensorRT writes into calibration caches)."""
    parts = [int(p) for p in (version.split(".") + ["0", "0"])[:3]]
    major, minor, patch = parts
    return major * 1000 + minor * 100 + patch if major < 10 else major * 10000 + minor * 100 + patch


def cache_trt_for(target: str = "auto", explicit: str | None = None) -> str:
    """The TensorRT version to stamp the cache for: the one asked for, else the detected Jetson's, else the
    preset's (TensorRT rejects a cache stamped for another version and trtexec then calibrates on noise)."""
    from .targets import resolve

    if explicit:
        if not all(p.isdigit() for p in explicit.split(".")) or len(explicit.split(".")) < 2:
            raise SettingError("trt_version", f"{{trt_version}} {explicit!r}: use a TensorRT version such as 8.5.2 "
                               "or 10.3.0")
        return explicit
    plat = resolve(target)
    return plat.expected_trt or plat.target.cache_trt or DEFAULT_CACHE_TRT


def calib_cache_text(amax: dict[str, float], trt_version: str = DEFAULT_CACHE_TRT) -> str:
    """TensorRT's legacy calibration cache: header, then 'tensor: <hex of the float32 scale>'."""
    lines = [f"TRT-{trt_version_int(trt_version)}-EntropyCalibration2"]
    for name, a in amax.items():
        scale = max(float(a), 1e-8) / QMAX
        lines.append(f"{name}: {struct.pack('>f', scale).hex()}")
    return "\n".join(lines) + "\n"


def parse_calib_cache(text: str) -> tuple[str, dict[str, float]]:
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if not lines or not lines[0].startswith("TRT-"):
        raise GhostedgeError("not a TensorRT calibration cache (no 'TRT-<version>-<algo>' header): rerun "
                             "ghostedge quantize")
    scales = {}
    for ln in lines[1:]:
        name, _, hexv = ln.rpartition(": ")
        scales[name] = struct.unpack(">f", bytes.fromhex(hexv.strip()))[0]
    return lines[0], scales


def tool_versions() -> dict[str, str]:
    import onnxruntime

    return {"ghostedge": __version__, "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__,
            "torch": torch.__version__, "numpy": np.__version__, "python": platform.python_version()}


# ---------------------------------------------------------------------------------------------
# running models

def ort_logits(proto_or_path, x: np.ndarray, batch: int = 64, threads: int = 0) -> np.ndarray:
    sess = ort_session(proto_or_path, threads=threads)
    name = sess.get_inputs()[0].name
    return np.concatenate([sess.run(None, {name: xb})[0] for xb in batches(x, batch)])


# ---------------------------------------------------------------------------------------------

def _excluded_nodes(fp32: onnx.ModelProto, patterns: tuple[str, ...]) -> list[str]:
    return [n for n in quantizable_nodes(fp32) if any(p in n for p in patterns)]


def amax_table(stats: dict[str, TensorStats], method: Method, percentile: float) -> dict[str, float]:
    return {n: compute_amax(s, method, percentile) for n, s in stats.items()}


def qdq_model(fp32: onnx.ModelProto, excluded: set[str], refined: Refined) -> onnx.ModelProto:
    """The TensorRT Q/DQ graph: placement without the excluded nodes, refined ranges, weights and biases
    (an excluded node keeps its float weights and bias)."""
    return insert_qdq(apply_weights(fp32, refined, skip=excluded), plan_placement(fp32, excluded), refined.amax,
                      weight_amax=refined.weight_amax)


#: the --max-drop search: nodes ranked on this many calibration images, then at most MAX_SEARCH_TRIES of
#: them measured on the search half of the drift images, most damaging first
SENSITIVITY_IMAGES = 32
MAX_SEARCH_TRIES = 12


def _step(d: DriftResult) -> dict:
    """One row of the --max-drop search: where the drift stands, on how many images."""
    return {"drop": round(d.drop, 3), "ci95": d.drop_ci95, "agreement": round(d.agreement, 2), "kl": d.kl,
            "images": d.n}


def search_verdict_split(n: int, labels: np.ndarray | None, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Two disjoint halves of n drift images (class by class when labelled): the --max-drop search chooses
    layers on the first, the verdict is judged on the second, so the choice cannot flatter the verdict."""
    perm = np.random.default_rng(seed).permutation(n)
    if labels is not None:
        perm = perm[np.argsort(np.asarray(labels)[perm], kind="stable")]
    return np.sort(perm[0::2]), np.sort(perm[1::2])


def sensitivity(fp32: onnx.ModelProto, excluded: set[str], refined: Refined, x: np.ndarray, ref: np.ndarray,
                threads: int, on_step: Callable[[int, int], None] | None = None) -> list[dict]:
    """Per quantized node (Conv, Gemm, residual Add): how much closer to FP32 (mean KL over images x) the
    Q/DQ graph gets when that node alone stays in float, measured; most damaging first."""
    base = compare(ref, qdq_logits(qdq_model(fp32, excluded, refined), x, threads=threads)).kl
    nodes = [n for n in quantizable_nodes(fp32) if n not in excluded]
    rows = []
    for i, node in enumerate(nodes):
        d = compare(ref, qdq_logits(qdq_model(fp32, excluded | {node}, refined), x, threads=threads))
        rows.append({"node": node, "kl_gain": base - d.kl})
        if on_step:
            on_step(i + 1, len(nodes))
    return sorted(rows, key=lambda r: -r["kl_gain"])


@dataclass
class CalibrationImages:
    """The calibration images picked and decoded, and the held-out rest of the folder."""
    x: np.ndarray                      # preprocessed
    paths: list[Path]                  # their files (the ones that decoded)
    held_out: list[Path]               # for label-free drift
    skipped: int                       # unreadable files


@dataclass
class Calibration:
    """What the calibrate step produced: the model, its FP32 graph, the calibration images and their statistics."""
    model: torch.nn.Module
    info: ModelCard
    fp32_path: Path
    fp32: onnx.ModelProto
    images: CalibrationImages
    stats: dict[str, TensorStats]
    excluded: list[str]                # nodes kept in float by pattern

    @property
    def pre(self) -> InputSpec:
        return self.info.input


@dataclass
class DriftSet:
    """The images drift is measured on, and how the report names them."""
    images: ImageSet
    where: str                         # "the held-out images of calib/"
    named: str                         # with an "{n}" for how many were measured


@dataclass
class SearchOutcome:
    """The Q/DQ graph chosen, the nodes kept in float and the drift it was judged by (the --max-drop search)."""
    q: onnx.ModelProto
    excluded: list[str]
    drift: DriftResult
    drift_set: str
    sensitivity: list[dict] = field(default_factory=list)
    steps: list[dict] = field(default_factory=list)
    gate: dict | None = None


def check_config(cfg: QuantizeConfig) -> None:
    """Refuse settings that cannot work before anything is loaded (errors name the setting)."""
    if cfg.batch < 1:
        raise SettingError("batch", "{batch} must be at least 1")
    if cfg.num_images < 1:
        raise SettingError("num_images", "{num_images} must be at least 1")
    if cfg.method == Method.percentile and not (50.0 < cfg.percentile <= 100.0):
        raise SettingError("percentile", f"{{percentile}} {cfg.percentile} is out of range: use a value in (50, 100], "
                                         "e.g. 99.99")
    if cfg.max_drop is not None and cfg.max_drop < 0:
        raise SettingError("max_drop", "{max_drop} must be >= 0 (points of top-1)")
    if cfg.out.exists() and not cfg.out.is_dir():
        raise SettingError("out", f"{{out}} {cfg.out} exists and is not a folder: pass a folder")
    if cfg.refine.images < 1:
        raise SettingError("refine_images", "{refine_images} must be at least 1")


def calibration_images(cfg: QuantizeConfig, info: ModelCard, say: Callable[[str], None]) -> CalibrationImages:
    """Pick (seeded) and decode the calibration images, plus up to cfg.holdout held-out ones."""
    pre = info.input
    try:
        check_batch(cfg.batch, pre.input_size, info.width, option="{batch}")
        check_images(cfg.num_images, pre.input_size, "{num_images}",
                     "use fewer calibration images (256-1024 are plenty)")
    except GhostedgeError as e:
        raise SettingError("batch" if "{batch}" in str(e) else "num_images", str(e)) from None
    picked = sample_images(cfg.calib, cfg.num_images + cfg.holdout, cfg.seed)
    calib_paths = picked[:cfg.num_images]
    if len(calib_paths) < cfg.batch:
        raise SettingError("batch", f"{cfg.calib} has {len(calib_paths)} image(s), fewer than {{batch}} {cfg.batch}: "
                           "add calibration images (256-1024 from the training distribution) or lower {batch}")
    u8, kept, rep = load_images(calib_paths, pre, what=f"calibration images in {cfg.calib}", needed=cfg.batch)
    if len(u8) < cfg.num_images:
        say(f"using {len(u8)} calibration images ({cfg.num_images} asked for; that is all {cfg.calib} has)")
    return CalibrationImages(x=normalize(u8, pre), paths=[calib_paths[i] for i in kept],
                             held_out=picked[cfg.num_images:], skipped=len(rep.bad))


def calibrate_model(cfg: QuantizeConfig, model: torch.nn.Module, info: ModelCard, images: CalibrationImages,
                    say: Callable[[str], None], tick: Callable[[str, int, int], None]) -> Calibration:
    """Export (or reuse) the FP32 ONNX and collect every tensor's statistics on the calibration images."""
    fp32_path = cfg.out / FP32_NAME
    if onnx_is_current(fp32_path, info):
        say(f"reusing {fp32_path}")
    else:
        say(f"exporting {fp32_path}")
        export_onnx(model, info, fp32_path, real_inputs=images.x[:4])
    fp32 = onnx.load(str(fp32_path))

    nb = (len(images.x) + cfg.batch - 1) // cfg.batch
    done = [0]

    def on_batch(_n: int) -> None:
        done[0] += 1
        tick("calibrating", done[0], 2 * nb)

    stats = collect_stats(fp32, lambda: batches(images.x, cfg.batch), INPUT_NAME, cfg.threads,
                          histograms=cfg.method != Method.minmax, on_batch=on_batch)
    return Calibration(model=model, info=info, fp32_path=fp32_path, fp32=fp32, images=images, stats=stats,
                       excluded=_excluded_nodes(fp32, cfg.exclude))


def refine_ranges(cfg: QuantizeConfig, cal: Calibration, say: Callable[[str], None],
                  tick: Callable[[str, int, int], None]) -> Refined:
    """The method's amax per tensor, then the refinements (range choice, weight rounding, bias correction)."""
    base_amax = amax_table(cal.stats, cfg.method, cfg.percentile)
    try:
        return refine(cal.fp32, plan_placement(cal.fp32, set(cal.excluded)), cal.stats, base_amax, cal.images.x,
                      cfg.refine, tick)
    except Unsupported as e:
        say(f"refinement skipped ({e} not supported by the interpreter): plain {cfg.method.value} ranges")
        return Refined(amax=base_amax)


def drift_set(cfg: QuantizeConfig, info: ModelCard, images: CalibrationImages) -> DriftSet:
    """The images drift is measured on: the labelled eval set, else the calibration folder's held-out images,
    else (none left) the calibration images themselves; streamed from their files."""
    if cfg.eval_dir is not None:
        eval_ds = labelled_set(cfg.eval_dir, info.classes, info.wnids)
        # streamed: only the logits of FP32, INT8 and one search candidate are held
        try:
            check_logits(len(eval_ds.paths), info.num_classes, 3, f"{{eval_dir}} {cfg.eval_dir}")
        except GhostedgeError as e:
            raise SettingError("eval_dir", str(e)) from None
        return DriftSet(ImageSet(eval_ds.paths, np.asarray(eval_ds.labels), f"eval images in {cfg.eval_dir}",
                                 Path(cfg.eval_dir)), f"{cfg.eval_dir}", "{n} labelled images of " + f"{cfg.eval_dir}")
    if images.held_out:
        return DriftSet(ImageSet(images.held_out, None, f"held-out images in {cfg.calib}", Path(cfg.calib)),
                        f"the held-out images of {cfg.calib}",
                        "{n} held-out images of " + f"{cfg.calib} (not used for calibration)")
    return DriftSet(ImageSet(images.paths, None, f"calibration images in {cfg.calib}", Path(cfg.calib)),
                    f"the calibration images of {cfg.calib}",
                    "the {n} calibration images themselves " + f"(no held-out images left in {cfg.calib})")


def search_float_layers(cfg: QuantizeConfig, cal: Calibration, refined: Refined, ds: DriftSet,
                        say: Callable[[str], None], tick: Callable[[str, int, int], None]) -> SearchOutcome:
    """Drift of the Q/DQ graph against FP32 PyTorch; with a top-1 drop budget (max_drop) that it fails, the most
    damaging layers are kept in float one at a time, chosen on one half of the drift images and judged on the
    other."""
    pre, info = cal.pre, cal.info
    drift_imgs = ds.images
    excluded = list(cal.excluded)

    def stream(images: ImageSet, graph: onnx.ModelProto, what: str) -> np.ndarray:
        got = stream_logits(images, pre, pre.input_size, {"int8": qdq_runner(graph, cfg.threads)}, cfg.batch,
                            lambda d, t: tick(what, d, t)).logits["int8"]
        if len(got) != len(images):
            raise GhostedgeError(f"{images.what}: images that decoded before no longer do: rerun quantize")
        return got

    q = qdq_model(cal.fp32, set(excluded), refined)
    with TorchRunner(cal.model, threads=cfg.threads) as tr:
        first = with_reference(drift_imgs, info, pre, pre.input_size, {"int8": qdq_runner(q, cfg.threads)},
                               lambda: tr.infer, cfg.batch, lambda d, t: tick("drift: FP32 + INT8 on images", d, t),
                               say=say)
    ref, got, y_ev = first.logits["reference"], first.logits["int8"], first.labels(drift_imgs)
    kept_imgs = drift_imgs.subset(first.kept, drift_imgs.what)
    drift = compare(ref, got, y_ev, info.classes)
    judged_on = ds.named.replace("{n}", str(len(got)))
    out = SearchOutcome(q=q, excluded=excluded, drift=drift, drift_set=judged_on)
    if cfg.max_drop is None:
        return out

    sens_rows, steps = out.sensitivity, out.steps
    search: dict | None = None
    verdict = judge(drift, cfg.max_drop)
    steps.append({"kept_float": 0, **_step(drift)})
    if verdict.fails:
        t_s = time.time()
        s_idx, v_idx = search_verdict_split(len(got), y_ev, cfg.seed)
        if len(v_idx) == 0:          # one image: nothing to hold out; the verdict is then on the search image
            v_idx = s_idx
        y_s = None if y_ev is None else y_ev[s_idx]
        search_imgs = kept_imgs.subset(s_idx, f"search half of the {drift_imgs.what}")
        d_search = compare(ref[s_idx], got[s_idx], y_s, info.classes)
        x_s = cal.images.x[:SENSITIVITY_IMAGES]
        sens_rows += sensitivity(cal.fp32, set(excluded), refined, x_s, torch_logits(cal.model, x_s), cfg.threads,
                                 lambda i, n: tick("ranking layers", i, n))
        extra: list[str] = []
        tries = [r["node"] for r in sens_rows if r["kl_gain"] > 0][:MAX_SEARCH_TRIES]
        for i, node in enumerate(tries):
            tick("keeping sensitive layers in float", i + 1, len(tries))
            if not judge(d_search, cfg.max_drop).fails:
                break
            q_try = qdq_model(cal.fp32, set(excluded) | set(extra) | {node}, refined)
            d_try = compare(ref[s_idx], stream(search_imgs, q_try, "search: INT8 on images"), y_s, info.classes)
            kept = d_try.kl < d_search.kl
            steps.append({"kept_float": len(extra) + kept, "node": node, "kept": kept, **_step(d_try)})
            if kept:
                extra.append(node)
                out.q, d_search = q_try, d_try
        excluded += extra
        say(f"top-1 drop budget search: tried {len(steps) - 1} layer(s) in float on {len(s_idx)} images, kept "
            f"{len(extra)}, in {time.time() - t_s:.0f}s")
        search = {"search_images": len(s_idx), "search_drop": round(d_search.drop, 3)}
        if extra:
            # the verdict: the chosen graph on the images the search did not see
            held = v_idx is not s_idx
            got_v = stream(kept_imgs.subset(v_idx, f"verdict half of the {drift_imgs.what}"), out.q,
                           "verdict: INT8 on images")
            out.drift = compare(ref[v_idx], got_v, None if y_ev is None else y_ev[v_idx], info.classes)
            out.drift_set = (f"{len(v_idx)} verdict images of {ds.where} (the other {len(s_idx)} chose the layers "
                             "kept in float)" if held else f"{judged_on}, the image the search used: optimistic")
            search.update(verdict_images=len(v_idx), held_out=held, verdict_drop=round(out.drift.drop, 3),
                          optimism_pts=round(out.drift.drop - d_search.drop, 3))
            say(f"  verdict on {out.drift_set}: drop {out.drift.drop:+.2f} there, {d_search.drop:+.2f} on the "
                "search images")
        else:   # nothing chosen: the graph is the one first judged, on every drift image
            search.update(verdict_images=len(got), held_out=False, verdict_drop=round(drift.drop, 3),
                          optimism_pts=0.0)
    verdict = judge(out.drift, cfg.max_drop)
    out.gate = {"max_drop": cfg.max_drop, "fails": verdict.fails, "above": verdict.above,
                "message": verdict.message, "judged_on": out.drift_set, "search": search}
    return out


def make_record(cfg: QuantizeConfig, cal: Calibration, refined: Refined, chosen: SearchOutcome,
                cache_names: list[str]) -> CalibrationRecord:
    """The calibration record of this run (what build, the CPU engine choice and reviewers read)."""
    pre, info, amax = cal.pre, cal.info, refined.amax
    return CalibrationRecord(
        method=cfg.method.value,
        percentile=cfg.percentile if cfg.method == Method.percentile else None,
        num_images=len(cal.images.x), batch=cfg.batch, seed=cfg.seed, img_size=pre.input_size, input=INPUT_NAME,
        # the images calibrated on, so later checks (the CPU engine choice) can hold them out
        data=CalibrationData(folder=str(cfg.calib), fingerprint=fingerprint_files(cal.images.paths, cfg.calib),
                             files=len(cal.images.paths), skipped_unreadable=cal.images.skipped,
                             paths=sorted(str(p.relative_to(cfg.calib)) for p in cal.images.paths)),
        model={**info.to_dict(), "onnx": FP32_NAME},     # the model card, and the FP32 graph calibrated
        tools=tool_versions(),
        excluded_nodes=chosen.excluded,
        cache_trt_version=cfg.trt_version,
        implicit_int8={"onnx": IMPLICIT_NAME, "cache_tensors": len(cache_names),
                       "weight_channels_off_grid": list(off_grid_channels(chosen.q)),
                       "note": "TensorRT < 11 implicit INT8 from the cache: the Q/DQ graph's weights and "
                               "quantized tensors, but not the same engine: TensorRT takes weight scales as "
                               "max |w| / 127 per channel (a finer grid in the channels listed off grid) and "
                               "picks each layer's precision by speed (a layer may run FP16 where the Q/DQ "
                               "engine runs INT8); its accuracy is that engine's own: ghostedge bench --eval"},
        refinement=refined.summary(),
        tensors={n: TensorRange(min=s.min, max=s.max, amax=amax[n], scale=max(amax[n], 1e-8) / QMAX,
                                range=refined.range_choice.get(n))
                 for n, s in cal.stats.items()},
    )


def write_outputs(out: Path, fp32_path: Path, q: onnx.ModelProto, record: CalibrationRecord,
                  implicit: onnx.ModelProto, cache_text: str) -> dict[str, Path]:
    """Every output, each atomically; everything is computed before, so nothing fails half-way through a file.
    (The report is written last, by quantize, with the file list in it.)"""
    files = {
        "fp32_onnx": fp32_path,
        "int8_onnx": out / INT8_NAME,
        "record": out / RECORD_NAME,
        "cache": out / CACHE_NAME,
        "implicit_onnx": out / IMPLICIT_NAME,
        "report": out / REPORT_NAME,
    }
    write_bytes_atomic(files["int8_onnx"], q.SerializeToString())
    record.write(files["record"])
    write_bytes_atomic(files["implicit_onnx"], implicit.SerializeToString())
    write_text_atomic(files["cache"], cache_text)
    return files


def quantize(cfg: QuantizeConfig, progress: Callable[[str, int, int], None] | None = None,
             say: Callable[[str], None] | None = None) -> QuantizeResult:
    """calibrate -> refine -> search (drift, and the layers a top-1 drop budget keeps in float) -> write."""
    say = say or (lambda s: None)
    tick = progress or (lambda what, done, total: None)
    t0 = time.time()
    check_config(cfg)
    model, info = load_model(cfg.weights, cfg.num_classes, spec=cfg.spec)
    images = calibration_images(cfg, info, say)
    ds = drift_set(cfg, info, images)          # checked before anything is written
    cal = calibrate_model(cfg, model, info, images, say, tick)
    refined = refine_ranges(cfg, cal, say, tick)
    chosen = search_float_layers(cfg, cal, refined, ds, say, tick)

    # the implicit-INT8 (calibration cache) path builds the same model: the Q/DQ graph's weights, and ranges for
    # the tensors the Q/DQ graph quantizes only (not the squeeze-excite tensors, not the --max-drop exclusions)
    implicit = strip_qdq(chosen.q, snap_weights=True)
    cache_names = implicit_cache_tensors(cal.fp32, plan_placement(cal.fp32, set(chosen.excluded)))
    record = make_record(cfg, cal, refined, chosen, cache_names)
    result = QuantizeResult(out=cfg.out, files={}, method=cfg.method.value, num_images=len(cal.images.x),
                            seconds=0.0, drift=chosen.drift, drift_set=chosen.drift_set,
                            measured_with=MEASURED_WITH, excluded=chosen.excluded,
                            sensitivity=chosen.sensitivity[:20], mixed_precision_steps=chosen.steps,
                            skipped_images=cal.images.skipped, refinement=refined.summary(), gate=chosen.gate)
    files = write_outputs(cfg.out, cal.fp32_path, chosen.q, record, implicit,
                          calib_cache_text({n: refined.amax[n] for n in cache_names}, cfg.trt_version))
    result.seconds = round(time.time() - t0, 1)
    result.files = {k: str(v) for k, v in files.items()}
    write_text_atomic(files["report"], json.dumps(result.to_dict(), indent=1))
    return result
