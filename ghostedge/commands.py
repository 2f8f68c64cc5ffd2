"""The commands of the ``ghostedge`` CLI. Each is thin: options -> settings -> library call -> render."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape

from .backends.common import Backend, Frontend
from .cli_options import BenchBatchOpt, BenchImgSizeOpt, ClassesOpt, EvalOpt, JsonOpt, MaxEvalImagesOpt, NumClassesOpt, \
    PlotOpt, PreprocessOpt, SecondsOpt, ThreadsOpt, WeightsOpt, print_json, app, calib_app, choice_option, err, \
    model_spec, out
from .errors import CheckFailed, GhostedgeError
from .modes import Baseline, InputDtype, InputLayout, Method, Optimizer, Ranges, Rounding, Schedule


@app.command()
def train(
    data: Annotated[Path, typer.Argument(help="ImageFolder tree with train/<class>/ and val/<class>/")],
    out_path: Annotated[Path, typer.Option("--out", help="where the best checkpoint goes")] = Path(
        "runs/ghostnet.safetensors"),
    width: Annotated[float, typer.Option(help="width multiplier (0.5, 1.0, 1.3)")] = 1.0,
    arch: Annotated[str, typer.Option(help="model family: ghostnet | ghostnetv2 | ghostnetv3")] = "ghostnet",
    img_size: Annotated[int, typer.Option(help="training resolution")] = 128,
    eval_img_size: Annotated[Optional[int], typer.Option(
        help="validation and native (deployment) resolution saved with the model (default: --img-size; "
             "a somewhat larger test size often scores higher)")] = None,
    epochs: Annotated[int, typer.Option()] = 30,
    batch: Annotated[int, typer.Option()] = 64,
    lr: Annotated[float, typer.Option(help="peak learning rate")] = 2e-3,
    weight_decay: Annotated[float, typer.Option()] = 0.05,
    optimizer: Annotated[Optimizer, choice_option(Optimizer, help="adamw | sgd (Nesterov momentum)")] = Optimizer.adamw,
    momentum: Annotated[float, typer.Option(help="--optimizer sgd: momentum")] = 0.9,
    preprocess: Annotated[str, typer.Option(
        help="preprocessing saved with the model, e.g. 'resize=146 interpolation=bicubic norm=inception'")] = "",
    warmup_epochs: Annotated[float, typer.Option()] = 2.0,
    schedule: Annotated[Schedule, choice_option(Schedule, help="learning-rate schedule")] = Schedule.cosine,
    label_smoothing: Annotated[float, typer.Option()] = 0.1,
    min_scale: Annotated[float, typer.Option(
        help="augmentation strength: smallest random-resized-crop area (1.0 = no crop)")] = 0.25,
    ema_decay: Annotated[float, typer.Option(help="weight EMA decay (validated and saved)")] = 0.999,
    seed: Annotated[int, typer.Option()] = 0,
    threads: Annotated[int, typer.Option(help="CPU threads (0 = all cores)")] = 0,
    weights: WeightsOpt = None,
    keep_classifier: Annotated[bool, typer.Option(
        help="--weights: keep its classifier (same classes in the same order) instead of a new one")] = False,
    resume: Annotated[bool, typer.Option(help="continue from OUT.last.pt")] = False,
    max_train_images: Annotated[int, typer.Option(hidden=True)] = 0,
) -> None:
    """Train GhostNet from scratch (or fine-tune from --weights) on an ImageFolder tree."""
    from .train import TrainConfig, train as run_train

    cfg = TrainConfig(data=data, out=out_path, width=width, arch=arch, img_size=img_size, eval_img_size=eval_img_size,
                      epochs=epochs, batch=batch,
                      lr=lr, weight_decay=weight_decay, warmup_epochs=warmup_epochs, schedule=schedule,
                      optimizer=optimizer, momentum=momentum, preprocess=preprocess,
                      label_smoothing=label_smoothing, min_scale=min_scale, ema_decay=ema_decay, seed=seed,
                      threads=threads, weights=weights, keep_classifier=keep_classifier, resume=resume,
                      max_train_images=max_train_images)
    rec = run_train(cfg, progress=_say)
    out.print(f"best val top-1 {rec['best_val_top1'] * 100:.2f}% -> {rec['out']} ({rec['seconds'] / 60:.1f} min)")


def _progress():
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn, \
        TimeRemainingColumn
    from rich.text import Text

    class Rate(ProgressColumn):
        """images/s for image streams (a task named '... images'), steps/s otherwise."""

        def render(self, task) -> Text:  # noqa: ANN001
            if not task.speed:
                return Text("")
            unit = "img/s" if task.description.endswith("images") else "/s"
            return Text(f"{task.speed:,.0f} {unit}" if task.speed >= 10 else f"{task.speed:.1f} {unit}")

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), Rate(),
                    TimeRemainingColumn(), console=err, transient=True)


def _ticker(p):  # noqa: ANN001,ANN202  (rich Progress -> (what, done, total) callback)
    tasks: dict[str, int] = {}

    def tick(what: str, done: int, total: int) -> None:
        if what not in tasks:
            tasks[what] = p.add_task(what, total=total)
        p.update(tasks[what], completed=done, total=total)

    return tick


def _say(s: str) -> None:
    err.print(s, highlight=False, markup=False)


RANGES_HELP = ("fixed: --method for every tensor | auto: per tensor, the range method with the least "
               "Fisher-weighted error (measured: no better on average; see README)")
ROUNDING_HELP = "weight rounding: gptq (error-compensating, on the calibration images) | nearest"
CACHE_TARGET_HELP = ("board the calibration cache is for: auto (this Jetson, else JetPack 5.1's TensorRT 8.5.2, the "
                     "one that needs the cache for DLA INT8) or a --target preset of ghostedge build")
BACKEND_HELP = ("auto (TensorRT on a GPU; on a CPU the fastest faithful engine, measured here) | tensorrt | "
                "onnxruntime | openvino")
TARGET_HELP = "auto | orin-nano | orin-nx | agx-orin | xavier-nx | agx-xavier | thor | dgpu"


def _quantize_with_progress(cfg):  # noqa: ANN001,ANN202  (QuantizeConfig -> QuantizeResult)
    from .quantize import quantize as run_quantize

    with _progress() as p:
        return run_quantize(cfg, progress=_ticker(p), say=_say)


def _bench_with_progress(cfg):  # noqa: ANN001,ANN202  (BenchConfig -> result dict)
    from .bench import bench as run_bench

    with _progress() as p:
        return run_bench(cfg, say=_say, progress=_ticker(p))


@app.command()
def info(
    weights: WeightsOpt = None,
    num_classes: NumClassesOpt = None,
    preprocess: PreprocessOpt = None,
    classes: ClassesOpt = None,
    img_size: Annotated[Optional[int], typer.Option(help="input size for the MAC count")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Model summary: family, width, whether re-parameterized, classes, parameters, MACs, preprocessing,
    weights source."""
    from .checkpoint import FAMILY_NAMES, load_model, model_summary

    model, mi = load_model(weights, spec=model_spec(num_classes, preprocess, classes))
    s = model_summary(model, mi, img_size)
    if as_json:
        print_json(s)
        return
    from rich.table import Table

    t = Table(show_header=False, title=FAMILY_NAMES.get(mi.family, "GhostNet"))
    shown = dict(s)
    shown["classes"] = f"{len(s['classes'])}: " + ", ".join(s["classes"][:10]) + (" ..." if len(s["classes"]) > 10 else "")
    shown["params"] = f"{s['params']:,}"
    shown["macs"] = f"{s['macs'] / 1e6:.1f} M at {s['img_size']}x{s['img_size']}"
    shown["preprocess"] = mi.input.describe()
    shown["described_by"] = ", ".join(s["described_by"])
    for k, v in shown.items():
        t.add_row(k, str(v))
    out.print(t)


@app.command()
def export(
    weights: WeightsOpt = None,
    num_classes: NumClassesOpt = None,
    preprocess: PreprocessOpt = None,
    classes: ClassesOpt = None,
    out_path: Annotated[Path, typer.Option("--out", help="ONNX file to write")] = Path("engines/ghostnet.onnx"),
    img_size: Annotated[Optional[int], typer.Option(help="export resolution (default: the model's)")] = None,
    real: Annotated[Optional[Path], typer.Option(
        help="folder of images for the parity check (default: ./calib when it exists)")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Export the FP32 ONNX (opset 17, BN folded, dynamic batch) and check parity with PyTorch."""
    from .data import find_images, load_images, normalize, sample_images
    from .export import export_onnx
    from .checkpoint import load_model

    model, mi = load_model(weights, spec=model_spec(num_classes, preprocess, classes))
    xr = None
    if real is None and Path("calib").is_dir() and find_images("calib"):
        real = Path("calib")
    if real is not None:
        u8, _, _ = load_images(sample_images(real, 8), mi.input, img_size, what=f"images in {real}")
        xr = normalize(u8, mi.input)
    r = export_onnx(model, mi, out_path, img_size, real_inputs=xr)
    res = {"path": str(r.path), "opset": r.opset, "nodes": r.nodes, "parity_random_max_abs": r.parity_random,
           "parity_real_max_abs": r.parity_real, "passed": r.passed}
    if as_json:
        print_json(res)
    else:
        out.print(f"wrote {r.path} (opset {r.opset}, {r.nodes} nodes); parity with PyTorch: max |diff| "
                  f"{r.parity_random:.2e} random" + (f", {r.parity_real:.2e} real images" if r.parity_real is not None
                                                      else "") + " (<= 1e-4: ok)")


@app.command(name="eval")
def eval_cmd(
    data: Annotated[Path, typer.Option("--data", help="ImageFolder set (<class>/<images>), e.g. imagenette/val")],
    weights: WeightsOpt = None,
    num_classes: NumClassesOpt = None,
    preprocess: PreprocessOpt = None,
    classes: ClassesOpt = None,
    batch: Annotated[int, typer.Option()] = 64,
    img_size: Annotated[Optional[int], typer.Option(help="default: the model's native resolution")] = None,
    threads: Annotated[int, typer.Option(help="CPU threads (0 = all)")] = 0,
    as_json: JsonOpt = False,
) -> None:
    """Top-1, top-5, per-class accuracy and the most common confusions of a checkpoint."""
    from .evaluate import EvalConfig, evaluate

    with _progress() as p:
        task = p.add_task("evaluating", total=None)
        res = evaluate(EvalConfig(data, weights, num_classes, batch, img_size, threads,
                                  spec=model_spec(num_classes, preprocess, classes)),
                       lambda d, t: p.update(task, completed=d, total=t))
    if as_json:
        print_json(res)
        return
    from rich.table import Table

    out.print(f"[bold]{res['weights']}[/] on {res['data']} ({res['n']} images, {res['img_size']} px): "
              f"top-1 {res['top1']:.2f}%  top-5 {res['top5']:.2f}%")
    t = Table(title="per class")
    for c in ("class", "n", "top-1 %", "most confused with"):
        t.add_column(c)
    for r in res["per_class"]:
        t.add_row(r["class"], str(r["n"]), f"{r['top1']:.1f}", str(r["most_confused_with"] or "-"))
    out.print(t)
    if res["top_confusions"]:
        out.print("top confusions: " + "; ".join(f"{c['true']} -> {c['predicted']} ({c['count']})"
                                                 for c in res["top_confusions"][:5]))


@app.command()
def quantize(
    calib: Annotated[Path, typer.Option("--calib", help="folder of calibration images (searched recursively)")],
    weights: WeightsOpt = None,
    num_classes: NumClassesOpt = None,
    preprocess: PreprocessOpt = None,
    classes: ClassesOpt = None,
    method: Annotated[Method, choice_option(Method, help="mse (default: best measured) | entropy | minmax | "
                                                        "percentile")] = Method.mse,
    percentile: Annotated[float, typer.Option(help="for --method percentile")] = 99.99,
    num_images: Annotated[int, typer.Option(help="calibration images to use")] = 512,
    batch: Annotated[int, typer.Option(help="calibration batch size")] = 32,
    out_dir: Annotated[Path, typer.Option("--out", help="output folder")] = Path("engines"),
    eval_dir: Annotated[Optional[Path], typer.Option("--eval", help="labelled ImageFolder set for drift")] = None,
    max_drop: Annotated[Optional[float], typer.Option(
        help="top-1 drop budget (points; without --eval: disagreement with FP32). Fails (exit 1) only when the "
             "drop exceeds it with 95% confidence; then the most damaging layers stay in float until it does not")] = None,
    ranges: Annotated[Ranges, choice_option(Ranges, help=RANGES_HELP)] = Ranges.fixed,
    rounding: Annotated[Rounding, choice_option(Rounding, help=ROUNDING_HELP)] = Rounding.gptq,
    bias_correction: Annotated[bool, typer.Option(
        help="take each quantized conv's mean output shift out of its bias")] = True,
    refine_images: Annotated[int, typer.Option(
        help="calibration images the range choice, rounding and bias correction run on")] = 256,
    seed: Annotated[int, typer.Option()] = 0,
    threads: Annotated[int, typer.Option(help="CPU threads (0 = all)")] = 0,
    cache_trt_version: Annotated[Optional[str], typer.Option(
        help="TensorRT version stamped into the legacy calibration cache (default: the --target's)")] = None,
    target: Annotated[str, typer.Option(help=CACHE_TARGET_HELP)] = "auto",
    as_json: JsonOpt = False,
) -> None:
    """INT8 post-training quantization: Q/DQ ONNX + calibration record + TensorRT cache, drift measured."""
    from .quantize import QuantizeConfig, cache_trt_for
    from .refine import RefineConfig

    cfg = QuantizeConfig(calib=calib, out=out_dir, weights=weights, num_classes=num_classes,
                         spec=model_spec(num_classes, preprocess, classes), method=method,
                         percentile=percentile, num_images=num_images, batch=batch, eval_dir=eval_dir,
                         max_drop=max_drop, seed=seed, threads=threads,
                         trt_version=cache_trt_for(target, cache_trt_version),
                         refine=RefineConfig(ranges=ranges, rounding=rounding, bias_correction=bias_correction,
                                             images=refine_images))
    res = _quantize_with_progress(cfg)
    if as_json:
        print_json(res.to_dict())
    else:
        from rich.table import Table

        d = res.drift
        t = Table(title=f"INT8 vs FP32 PyTorch on {res.drift_set}\nmeasured with {res.measured_with}")
        for c in ("metric", "value"):
            t.add_column(c)
        if d.labelled:
            t.add_row("top-1 FP32 / INT8", f"{d.ref_top1:.2f}% / {d.top1:.2f}%")
            t.add_row("top-5 FP32 / INT8", f"{d.ref_top5:.2f}% / {d.top5:.2f}%")
            t.add_row("top-1 drop", f"{d.top1_drop_pts:+.2f} pts")
            t.add_row("FP32 right, INT8 wrong / reverse", f"{d.ref_right_engine_wrong} / {d.ref_wrong_engine_right}")
        t.add_row("top-1 agreement", f"{d.agreement:.2f}%")
        t.add_row("logit cosine", f"{d.cosine:.5f}")
        t.add_row("KL(FP32 || INT8)", f"{d.kl:.5f}")
        t.add_row("kept in float", f"{len(res.excluded)} node(s)")
        lo, hi = d.drop_ci95 or (d.drop, d.drop)
        t.add_row(f"{'top-1 drop' if d.labelled else 'disagreement'}, 95% interval", f"{lo:+.2f} to {hi:+.2f} pts")
        out.print(t)
        for st in res.mixed_precision_steps[1:]:
            out.print(f"  {'kept' if st['kept'] else 'tried'} {st['node']} in float -> drop {st['drop']:+.2f}, "
                      f"agreement {st['agreement']:.2f}%, KL {st['kl']:.5f}")
        r = res.refinement
        out.print(f"{res.method} calibration on {res.num_images} images in {res.seconds:.1f}s "
                  f"(ranges: {', '.join(f'{k} {v}' for k, v in r.get('range_methods', {}).items()) or res.method}; "
                  f"{r.get('weights_rounded', 0)} weight tensors rounded, {r.get('biases_corrected', 0)} biases "
                  "corrected); wrote " + ", ".join(Path(f).name for f in res.files.values()) + f" to {res.out}")
    if res.gate is not None:
        if res.gate["fails"]:
            raise CheckFailed(f"{res.gate['message']}, with {len(res.excluded)} layer(s) in float: add calibration "
                              "images, raise the budget, or keep more layers in float (--max-drop search tries "
                              "the 12 most damaging)")
        _say(res.gate["message"])


@calib_app.command("distill")
def calib_distill(
    n: Annotated[int, typer.Option("--n", help="images to synthesize")] = 128,
    out_dir: Annotated[Path, typer.Option("--out", help="folder to write PNGs into")] = Path("calib"),
    weights: WeightsOpt = None,
    preprocess: PreprocessOpt = None,
    iters: Annotated[int, typer.Option(help="optimization steps per batch")] = 200,
    batch: Annotated[int, typer.Option()] = 32,
    lr: Annotated[float, typer.Option()] = 0.1,
    seed: Annotated[int, typer.Option()] = 0,
    threads: Annotated[int, typer.Option(help="CPU threads (0 = all)")] = 0,
) -> None:
    """Synthesize calibration images from the model itself (data-free, ZeroQ-style)."""
    from .distill import DistillConfig, distill

    with _progress() as p:
        task = p.add_task("distilling", total=None)
        meta = distill(DistillConfig(out=out_dir, n=n, batch=batch, iters=iters, lr=lr, seed=seed,
                                     weights=weights, threads=threads, spec=model_spec(preprocess=preprocess)),
                       lambda d, t, loss: p.update(task, completed=d, total=t, description=f"BN loss {loss:.2f}"))
    out.print(f"wrote {meta['n']} images to {out_dir} in {meta['seconds']:.0f}s (use 256-1024 real images from "
              "the training distribution when you have them)")


@app.command()
def build(
    fp32: Annotated[bool, typer.Option("--fp32", help="FP32 engine")] = False,
    fp16: Annotated[bool, typer.Option("--fp16", help="FP16 engine (GPU only)")] = False,
    int8: Annotated[bool, typer.Option("--int8", help="INT8 engine from the Q/DQ ONNX (default)")] = False,
    backend: Annotated[Backend, choice_option(Backend, help=BACKEND_HELP)] = Backend.auto,
    target: Annotated[str, typer.Option(help=TARGET_HELP)] = "auto",
    batch: Annotated[Optional[str], typer.Option(
        help="N (static) or MIN:OPT:MAX (dynamic profile); default 1:8:32, or 8 (static) with --dla-core")] = None,
    img_size: Annotated[Optional[int], typer.Option(help="input size (default: the model's)")] = None,
    workspace: Annotated[Optional[int], typer.Option(help="workspace pool limit in MiB (default: target's cap)")] = None,
    dla_core: Annotated[Optional[int], typer.Option(help="build for this DLA core (Jetson)")] = None,
    gpu_fallback: Annotated[bool, typer.Option(help="let layers DLA cannot run fall back to the GPU")] = False,
    timing_cache: Annotated[Optional[Path], typer.Option(help="timing cache to load and update")] = None,
    opt_level: Annotated[Optional[int], typer.Option(help="builder optimization level 0-5")] = None,
    hardware_compat: Annotated[bool, typer.Option(help="Ampere+ hardware-compatible engine")] = False,
    version_compatible: Annotated[bool, typer.Option(help="version-compatible engine")] = False,
    calib_cache: Annotated[Optional[Path], typer.Option(
        help="implicit INT8 from this legacy calibration cache (TensorRT < 11, DLA on JetPack 5)")] = None,
    engines: Annotated[Path, typer.Option(help="folder with the quantize outputs")] = Path("engines"),
    out_path: Annotated[Optional[Path], typer.Option("--out", help="engine file to write")] = None,
    frontend: Annotated[Frontend, choice_option(Frontend, help="onnx | torch-tensorrt")] = Frontend.onnx,
    calib: Annotated[Optional[Path], typer.Option(
        help="calibration images: for --frontend torch-tensorrt --int8 (default ./calib), and for the CPU "
             "engine choice's accuracy check (default: the folder quantize used)")] = None,
    threads: Annotated[int, typer.Option(help="CPU engines: threads to measure with (0 = all cores)")] = 0,
    input_dtype: Annotated[InputDtype, choice_option(InputDtype, "--input", help=(
        "float32 (normalised NCHW, as exported) | uint8: the engine takes RGB pixels 0-255 already resized and "
        "cropped, and does the float conversion and mean/std itself"))] = InputDtype.float32,
    input_layout: Annotated[InputLayout, choice_option(
        InputLayout, "--input-layout", help="--input uint8: nchw | nhwc (camera frames as they come)")] = InputLayout.nchw,
    weights: WeightsOpt = None,
    preprocess: PreprocessOpt = None,
    classes: ClassesOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Build an engine: TensorRT for NVIDIA GPUs / Jetson, ONNX Runtime on a CPU."""
    from .build import BuildConfig, Precision, build as run_build, parse_batch
    from .input_uint8 import InputFormat

    chosen = [p for p, on in (("fp32", fp32), ("fp16", fp16), ("int8", int8)) if on]
    if len(chosen) > 1:
        raise GhostedgeError("pass one of --fp32, --fp16, --int8")
    if opt_level is not None and not 0 <= opt_level <= 5:
        raise GhostedgeError("--opt-level must be 0..5")
    if workspace is not None and workspace < 1:
        raise GhostedgeError("--workspace must be a positive number of MiB")
    if input_dtype == InputDtype.float32 and input_layout != InputLayout.nchw:
        raise GhostedgeError("--input-layout nhwc is for --input uint8 (a float input is the exported NCHW)")
    cfg = BuildConfig(engines=engines, precision=Precision(chosen[0] if chosen else "int8"), backend=backend,
                      target=target, batch=parse_batch(batch) if batch else None, img_size=img_size,
                      workspace_mib=workspace,
                      dla_core=dla_core, gpu_fallback=gpu_fallback, timing_cache=timing_cache,
                      opt_level=opt_level, hardware_compat=hardware_compat,
                      version_compatible=version_compatible, calib_cache=calib_cache, out=out_path,
                      frontend=frontend, weights=weights, calib=calib, threads=threads,
                      spec=model_spec(None, preprocess, classes), input_format=InputFormat(input_dtype.value, input_layout.value))
    r = run_build(cfg, say=_say)
    res = {"engine": str(r.engine), "manifest": str(r.manifest), "backend": r.backend, "precision": r.precision,
           "seconds": r.seconds, "trtexec": r.trtexec, "dla_fallback_layers": r.dla_fallback_layers}
    if as_json:
        print_json(res)
        return
    out.print(f"built {r.engine} ({r.backend}, {r.precision}) in {r.seconds:.1f}s; manifest {r.manifest.name}")
    if r.dla_fallback_layers:
        out.print(f"[yellow]{len(r.dla_fallback_layers)} layer(s) fell back from DLA to the GPU:[/] "
                  + ", ".join(r.dla_fallback_layers))
    if r.trtexec:
        out.print(f"same engine with trtexec: {r.trtexec}")


@app.command()
def inspect(
    engine: Annotated[Path, typer.Argument(help="a .plan (TensorRT), .onnx (ONNX Runtime) or .xml (OpenVINO) engine")],
    as_json: JsonOpt = False,
) -> None:
    """Per-layer table of an engine: type, precision, device, tactic; fallbacks flagged."""
    from .inspect import inspect_path

    rows = inspect_path(engine)
    if as_json:
        print_json({"engine": str(engine), "layers": rows,
                     "flagged": {f: sum(f in r["flags"] for r in rows) for f in ("fp32", "reformat", "dla->gpu")}})
        return
    from rich.table import Table

    t = Table(title=str(engine))
    for c in ("#", "name", "type", "precision", "device", "tactic", "flags"):
        t.add_column(c)
    for i, r in enumerate(rows):
        t.add_row(str(i), r["name"][-60:], r["type"], r["precision"], r["device"], r["tactic"][-30:],
                  ("[yellow]" + ",".join(r["flags"]) + "[/]") if r["flags"] else "")
    out.print(t)
    counts = {f: sum(f in r["flags"] for r in rows) for f in ("fp32", "reformat", "dla->gpu")}
    out.print(f"{len(rows)} layers; flagged: " + ", ".join(f"{k} {v}" for k, v in counts.items()))


@app.command()
def predict(
    model: Annotated[Path, typer.Argument(help="an engine (.plan, .onnx, .xml) or a checkpoint (.safetensors, .pth)")],
    images: Annotated[list[Path], typer.Argument(help="image files and/or folders (searched recursively)")],
    top: Annotated[int, typer.Option(help="classes to show per image")] = 5,
    batch: Annotated[int, typer.Option(help="images per inference call")] = 32,
    threads: Annotated[int, typer.Option(help="CPU threads (0 = all cores)")] = 0,
    num_classes: NumClassesOpt = None,
    preprocess: PreprocessOpt = None,
    classes: ClassesOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Top-K classes and probabilities per image, with the model's own preprocessing (as eval applies it)."""
    from .predict import PredictConfig, predict as run_predict

    preds: list[dict] = []

    def emit(p) -> None:  # noqa: ANN001 (predict.Prediction)
        if as_json:
            preds.append(p.to_dict())
        elif p.error is not None:
            err.print(f"[red]error:[/] {escape(p.path)}: {escape(p.error)}", highlight=False, soft_wrap=True)
        else:
            out.print(f"{escape(p.path)}: " + ", ".join(f"{escape(c)} {v:.3f}" for c, v in zip(p.classes,
                                                                                            p.probabilities)),
                      highlight=False, soft_wrap=True)

    cfg = PredictConfig(model=model, images=list(images), top=top, batch=batch, threads=threads,
                        spec=model_spec(num_classes, preprocess, classes))
    s = run_predict(cfg, emit)
    if as_json:
        print_json({**s.to_dict(), "predictions": preds})
    else:
        _say(f"{s.classified} image(s) classified with {Path(s.model).name} ({s.backend}, {s.precision}, input "
             f"{s.input.describe()}, {s.img_size} px)" + (f"; {s.failed} could not be read" if s.failed else ""))
    if s.failed:
        raise CheckFailed(f"{s.failed} of {s.failed + s.classified} image(s) could not be read (listed above); the "
                          "others were classified")


def _parse_batches(batch: str) -> tuple[int, ...]:
    try:
        batches = tuple(int(b) for b in batch.split(",") if b.strip())
    except ValueError:
        raise GhostedgeError(f"--batch {batch!r}: use a comma-separated list such as 1,8,32") from None
    if not batches or min(batches) < 1:
        raise GhostedgeError(f"--batch {batch!r}: sizes must be >= 1")
    return batches


def _render_bench(res: dict, as_json: bool, report: Optional[Path], plot: Optional[Path]) -> None:
    from .report import bench_plot, print_bench, write_markdown

    if report:
        write_markdown(res, report)
    if plot:
        bench_plot(res, plot)
    if as_json:
        print_json(res)
    else:
        print_bench(res, out)
        for f in (report, plot):
            if f:
                out.print(f"wrote {f}")


@app.command()
def bench(
    engines: Annotated[list[Path], typer.Argument(
        help=".plan (TensorRT), .onnx (ONNX Runtime) and/or .xml (OpenVINO) engines")],
    batch: BenchBatchOpt = "1,8,32",
    img_size: BenchImgSizeOpt = None,
    warmup: Annotated[int, typer.Option(help="untimed iterations per engine and batch")] = 3,
    iters: Annotated[Optional[int], typer.Option(help="timed iterations (default: run for --seconds)")] = None,
    seconds: SecondsOpt = 2.0,
    threads: ThreadsOpt = 0,
    baseline: Annotated[Baseline, choice_option(Baseline, help="torch | none")] = Baseline.torch,
    eval_dir: EvalOpt = None,
    max_drop: Annotated[Optional[float], typer.Option(
        help="exit 1 when an engine's top-1 drop exceeds this (points) with 95% confidence")] = None,
    max_eval_images: MaxEvalImagesOpt = 0,
    weights: WeightsOpt = None,
    preprocess: PreprocessOpt = None,
    classes: ClassesOpt = None,
    cuda_graph: Annotated[bool, typer.Option(help="TensorRT: replay captured CUDA graphs")] = False,
    reference_cache: Annotated[bool, typer.Option(
        help="reuse the FP32 reference logits of an --eval set seen before (cached by the set's, the weights' "
             "and the preprocessing's fingerprint in ~/.cache/ghostedge/reference-logits, or "
             "$GHOSTEDGE_CACHE_DIR)")] = True,
    as_json: JsonOpt = False,
    report: Annotated[Optional[Path], typer.Option(help="write a Markdown report")] = None,
    plot: PlotOpt = None,
) -> None:
    """Throughput, latency and accuracy drift of engines vs the FP32 PyTorch model, in one run."""
    from .bench import BenchConfig, gate
    from .report import check_plot_available

    if plot:
        check_plot_available()
    if iters is not None and iters < 1:
        raise GhostedgeError("--iters must be >= 1")
    cfg = BenchConfig(engines=engines, batches=_parse_batches(batch), img_size=img_size, warmup=warmup, iters=iters,
                      seconds=seconds, threads=threads, baseline=baseline, eval_dir=eval_dir, max_drop=max_drop,
                      weights=weights, max_eval_images=max_eval_images, cuda_graph=cuda_graph,
                      spec=model_spec(None, preprocess, classes), reference_cache=reference_cache)
    res = _bench_with_progress(cfg)
    _render_bench(res, as_json, report, plot)
    gate(res)


@app.command()
def pipeline(
    calib: Annotated[Path, typer.Option("--calib", help="calibration images")] = Path("calib"),
    weights: WeightsOpt = None,
    num_classes: NumClassesOpt = None,
    preprocess: PreprocessOpt = None,
    classes: ClassesOpt = None,
    eval_dir: EvalOpt = None,
    engines: Annotated[Path, typer.Option(help="output folder")] = Path("engines"),
    method: Annotated[Method, choice_option(Method, help="calibration method")] = Method.mse,
    num_images: Annotated[int, typer.Option(help="calibration images")] = 512,
    calib_batch: Annotated[int, typer.Option(help="calibration batch size")] = 32,
    ranges: Annotated[Ranges, choice_option(Ranges, help=RANGES_HELP)] = Ranges.fixed,
    rounding: Annotated[Rounding, choice_option(Rounding, help=ROUNDING_HELP)] = Rounding.gptq,
    target: Annotated[str, typer.Option(
        help=f"board: the TensorRT build's preset and the calibration cache's stamp ({TARGET_HELP})")] = "auto",
    backend: Annotated[Backend, choice_option(Backend, help=BACKEND_HELP)] = Backend.auto,
    batch: BenchBatchOpt = "1,8,32",
    img_size: BenchImgSizeOpt = None,
    seconds: SecondsOpt = 2.0,
    threads: ThreadsOpt = 0,
    max_drop: Annotated[Optional[float], typer.Option(
        help="exit 1 when INT8's top-1 drop exceeds this (points) with 95% confidence")] = None,
    max_eval_images: MaxEvalImagesOpt = 0,
    report: Annotated[Path, typer.Option(help="Markdown report")] = Path("engines/report.md"),
    plot: PlotOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """quantize -> build (TensorRT on a GPU, ONNX Runtime otherwise) -> bench with drift, one report."""
    from .bench import gate
    from .pipeline import PipelineSettings, pipeline as run_pipeline
    from .report import check_plot_available

    if plot:
        check_plot_available()
    settings = PipelineSettings(calib=calib, weights=weights, num_classes=num_classes,
                                spec=model_spec(num_classes, preprocess, classes), eval_dir=eval_dir, engines=engines,
                                method=method, num_images=num_images, calib_batch=calib_batch, ranges=ranges,
                                rounding=rounding, target=target, backend=backend, batches=_parse_batches(batch),
                                img_size=img_size, seconds=seconds, threads=threads, max_drop=max_drop,
                                max_eval_images=max_eval_images)
    with _progress() as p:
        res = run_pipeline(settings, say=_say, progress=_ticker(p))
    _render_bench(res.bench, as_json, report, plot)
    gate(res.bench)
