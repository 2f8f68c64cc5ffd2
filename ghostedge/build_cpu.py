"""CPU engines, chosen by measurement on the machine they will run on (as TensorRT chooses tactics).

No single CPU runtime or INT8 graph is best everywhere: on one x86 ONNX Runtime's u8s8 graph runs
1.9x its FP32, on another 1.1x while OpenVINO runs twice as fast. So ``ghostedge build`` with
``--backend auto`` on a CPU builds every candidate from the same calibration, times each at the
profile's batch sizes here, checks that it keeps the calibration's accuracy (top-1 agreement with FP32
against the Q/DQ estimate's, on held-out calibration images), keeps the fastest faithful one and
records every candidate in the manifest. ``--backend onnxruntime|openvino`` forces one.

Candidates (INT8), all from the same record: ONNX Runtime u8s8 QOperator from the calibrated ranges;
OpenVINO running the TensorRT-rule Q/DQ ONNX as it is; and OpenVINO running a CPU variant of it: the
same calibrated ranges, non-negative (ReLU) activations on the u8 grid [0, amax] instead of the s8 grid
[-amax, amax], and no shared Concat scales (OpenVINO 2026.4's CPU plugin computed the block-0 ghost
conv's symmetric-int8 input wrongly here: 92% top-1 agreement with FP32 against the Q/DQ estimate's
99%; on the u8 grid it agrees with the estimate), float layers in f32, and in bf16 where the CPU has
it. FP32: ONNX Runtime and OpenVINO on the FP32 ONNX. The Q/DQ ONNX TensorRT gets is never changed.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np
import onnx

from .backends.common import BuildResult, Precision
from .errors import GhostedgeError

#: time per candidate and batch size while choosing (plus a 200 ms warm-up)
SELECT_SECONDS = 0.6
#: held-out calibration images the faithfulness check runs on
SELECT_IMAGES = 128
#: a candidate may agree with FP32 at most this much less than the Q/DQ estimate (points; at least one image)
FAITHFUL_TOL_PTS = 0.3


@dataclass
class Candidate:
    name: str                     # e.g. "onnxruntime-u8s8", "openvino-qdq-f32"
    backend: str                  # onnxruntime | openvino
    path: Path
    precision_hint: str | None = None
    throughput: dict[str, float] = field(default_factory=dict)
    agreement_fp32: float | None = None
    agreement_estimate: float | None = None
    faithful: bool | None = None
    build_seconds: float = 0.0
    error: str | None = None

    def record(self) -> dict:
        return {"name": self.name, "backend": self.backend, "precision_hint": self.precision_hint,
                "throughput": {b: round(v, 1) for b, v in self.throughput.items()},
                "agreement_fp32": self.agreement_fp32, "agreement_with_qdq_estimate": self.agreement_estimate,
                "faithful": self.faithful, "build_seconds": round(self.build_seconds, 1), "error": self.error}


def _ext(backend: str) -> str:
    return ".ort.onnx" if backend == "onnxruntime" else ".ov.xml"


def default_out(engines: Path, precision: Precision, backend: str) -> Path:
    return engines / f"ghostnet.{precision.value}{_ext(backend)}"


def _move_engine(src: Path, dst: Path) -> None:
    """Move an engine (and an OpenVINO .bin) into place, .bin first."""
    import os

    dst.parent.mkdir(parents=True, exist_ok=True)
    if src.suffix == ".xml":
        os.replace(src.with_suffix(".bin"), dst.with_suffix(".bin"))
    os.replace(src, dst)


#: ONNX Runtime CPU INT8: layers left in FP32 because int8 is slower there (measured: the 3-channel stem
#: conv and the first bottleneck at full resolution run faster in FP32's NCHWc kernels)
CPU_FLOAT_PREFIX = ("/conv_stem/", "/blocks/blocks.0/")


def build_onnxruntime_engine(cfg, dst: Path, record: dict | None) -> Path:  # noqa: ANN001 (BuildConfig)
    from .backends.onnxruntime import optimize_to, quantize_for_cpu
    from .build import FP32_NAME

    if cfg.precision == Precision.int8:
        fp32 = refined_float_graph(cfg)
        exclude = [n.name for n in fp32.graph.node if any(p in n.name for p in CPU_FLOAT_PREFIX)]
        exclude += [n for n in record.get("excluded_nodes", []) if "/se/" not in n]
        model = quantize_for_cpu(fp32, record, exclude)
    else:
        model = onnx.load(str(cfg.engines / FP32_NAME))
    return optimize_to(model, dst)


def refined_float_graph(cfg) -> onnx.ModelProto:  # noqa: ANN001 (BuildConfig)
    """The float graph the CPU INT8 engines quantize: the Q/DQ ONNX with its Q/DQ pairs removed, so the
    weights and biases quantize refined (rounding, bias correction) carry over to the CPU."""
    from .build import INT8_NAME, _need
    from .qdq import strip_qdq

    return strip_qdq(onnx.load(str(_need(cfg.engines / INT8_NAME, "the Q/DQ ONNX"))))


def cpu_qdq_variant(fp32: onnx.ModelProto, record: dict) -> onnx.ModelProto:
    """The calibration's Q/DQ graph for CPUs: the same amax per tensor, ReLU outputs (min >= 0) on the u8
    grid [0, amax], Q/DQ at the inputs of convs and residual adds, no shared Concat scales."""
    from .qdq import plan_placement, insert_qdq

    t = record["tensors"]
    amax = {k: float(v["amax"]) for k, v in t.items()}
    nonneg = {k for k, v in t.items() if float(v["min"]) >= 0.0}
    pl = plan_placement(fp32, set(record.get("excluded_nodes", [])), concat_groups=False)
    return insert_qdq(fp32, pl, amax, unsigned=nonneg)


def build_openvino_engine(cfg, dst: Path, size: int, variant: str = "qdq",  # noqa: ANN001 (BuildConfig)
                          record: dict | None = None) -> Path:
    """IR with a dynamic batch and a static ``size`` x ``size`` (OpenVINO's CPU plugin runs static spatial
    shapes faster). ``variant``: "qdq" (the TensorRT-rule Q/DQ ONNX as it is) or "u8" (``cpu_qdq_variant``)."""
    from .backends.openvino import save_ir
    from .build import FP32_NAME, INT8_NAME
    from .errors import write_bytes_atomic

    src = cfg.engines / (INT8_NAME if cfg.precision == Precision.int8 else FP32_NAME)
    if variant == "u8" and cfg.precision == Precision.int8:
        tmp = dst.with_name(f".{dst.stem}.u8.onnx")
        try:
            write_bytes_atomic(tmp, cpu_qdq_variant(refined_float_graph(cfg), record)
                               .SerializeToString())
            return save_ir(tmp, dst, size)
        finally:
            tmp.unlink(missing_ok=True)
    return save_ir(src, dst, size)


def _candidates(cfg, tmp: Path) -> list[Candidate]:  # noqa: ANN001
    out = [Candidate("onnxruntime-u8s8" if cfg.precision == Precision.int8 else "onnxruntime-fp32", "onnxruntime",
                     tmp / f"c0{_ext('onnxruntime')}")]
    try:
        from .backends.openvino import import_openvino

        ov = import_openvino()
        caps = ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    except GhostedgeError:
        return out
    bf16 = "BF16" in caps
    if cfg.precision != Precision.int8:  # an FP32 engine stays FP32 (no bf16 float layers)
        out.append(Candidate("openvino-fp32", "openvino", tmp / "c1.ov.xml", precision_hint="f32"))
        return out
    out.append(Candidate("openvino-qdq-f32", "openvino", tmp / "c1.ov.xml", precision_hint="f32"))
    out.append(Candidate("openvino-u8-f32", "openvino", tmp / "c2.ov.xml", precision_hint="f32"))
    if bf16:
        out.append(Candidate("openvino-u8-bf16", "openvino", tmp / "c2.ov.xml", precision_hint="bf16"))
    return out


def _holdout(cfg, record: dict | None, info, size: int) -> np.ndarray:  # noqa: ANN001
    """Held-out calibration images (not used for calibration), preprocessed as the model says."""
    from .data import load_images, normalize, sample_images

    folder = cfg.calib or (Path(record["data"]["folder"]) if record else None)
    if folder is None or not Path(folder).is_dir():
        raise GhostedgeError(f"choosing the CPU engine needs the calibration images to check accuracy, and "
                             f"{folder} is not here: pass --calib DIR, or force one with --backend onnxruntime / "
                             "openvino")
    n_cal = int(record["num_images"]) if record else 0
    seed = int(record.get("seed", 0)) if record else 0
    picked = sample_images(folder, n_cal + SELECT_IMAGES, seed)
    paths = picked[n_cal:] or picked[:SELECT_IMAGES]
    u8, _, _ = load_images(paths, info.preprocess, size, what=f"held-out images in {folder}")
    return normalize(u8, info.preprocess)


def _agree(a: np.ndarray, b: np.ndarray) -> float:
    return float((a.argmax(1) == b.argmax(1)).mean() * 100)


def _open(c: Candidate, threads: int):  # noqa: ANN202
    if c.backend == "openvino":
        from .backends.openvino import OpenVinoRunner

        return OpenVinoRunner(c.path, threads=threads, precision_hint=c.precision_hint or "f32")
    from .backends.onnxruntime import OnnxRuntimeRunner

    return OnnxRuntimeRunner(c.path, threads=threads)


def choose_cpu_engine(cfg, say: Callable[[str], None], threads: int = 0) -> BuildResult:  # noqa: ANN001
    """Build every CPU candidate, time and check each here, keep the fastest faithful one."""
    from .bench import _logits, time_runner
    from .build import FP32_NAME, INT8_NAME, RECORD_NAME, _need, _record_for, resolve_batch
    from .export import read_onnx_info
    from .model import ModelInfo
    from .quantize import ort_logits

    t0 = time.time()
    fp32_path = _need(cfg.engines / FP32_NAME, "the FP32 ONNX")
    int8 = cfg.precision == Precision.int8
    have_record = int8 or (cfg.engines / RECORD_NAME).is_file()
    calib_record = _record_for(cfg.engines, fp32_path) if have_record else None
    record = calib_record if int8 else None
    info = read_onnx_info(fp32_path) or ModelInfo()
    size = cfg.img_size or info.preprocess.input_size
    b0, _, b2 = resolve_batch(cfg)
    batches = sorted({b0, b2})
    try:
        x = _holdout(cfg, calib_record, info, size)
    except GhostedgeError:
        if int8:
            raise
        # an FP32 engine without calibration images: the same function, checked on noise images
        x = np.random.default_rng(1).standard_normal((32, 3, size, size), dtype=np.float32)
    ref = ort_logits(fp32_path, x, threads=threads)
    est = ort_logits(_need(cfg.engines / INT8_NAME, "the Q/DQ ONNX"), x, threads=threads) \
        if cfg.precision == Precision.int8 else ref
    est_agree = _agree(est, ref)
    tol = max(FAITHFUL_TOL_PTS, 100.0 / len(x))
    rng = np.random.default_rng(0)
    inputs = {b: rng.standard_normal((b, 3, size, size), dtype=np.float32) for b in batches}
    tmp = Path(tempfile.mkdtemp(prefix=".select.", dir=cfg.engines))
    try:
        cands = _candidates(cfg, tmp)
        built: dict[str, Path] = {}
        for c in cands:
            tc = time.time()
            try:
                if c.backend == "onnxruntime":
                    build_onnxruntime_engine(cfg, c.path, record)
                elif str(c.path) not in built:
                    build_openvino_engine(cfg, c.path, size, "u8" if "-u8-" in c.name else "qdq", record)
                built[str(c.path)] = c.path
                c.build_seconds = time.time() - tc
                with _open(c, threads) as r:
                    got = _logits(r, x, 32)
                    c.agreement_fp32 = round(_agree(got, ref), 2)
                    c.agreement_estimate = round(_agree(got, est), 2)
                    c.faithful = c.agreement_fp32 >= est_agree - tol
                    for b in batches:
                        c.throughput[str(b)] = time_runner(r, inputs[b], 1, None, SELECT_SECONDS).throughput
            except GhostedgeError as e:
                c.error = str(e)
            say(f"  candidate {c.name}: " + (f"error: {c.error}" if c.error else
                ", ".join(f"batch {b} {v:.0f} img/s" for b, v in c.throughput.items())
                + f"; agreement with FP32 {c.agreement_fp32:.2f}% (Q/DQ estimate {est_agree:.2f}%)"
                + ("" if c.faithful else " -> not faithful, dropped")))
        ok = [c for c in cands if c.faithful and not c.error]
        if not ok:
            raise GhostedgeError("no CPU engine kept the calibration's accuracy ("
                                 + "; ".join(f"{c.name}: {c.error or f'{c.agreement_fp32}%'}" for c in cands)
                                 + f" vs the Q/DQ estimate's {est_agree:.2f}%): force one with --backend")
        score = lambda c: float(np.exp(np.mean([np.log(v) for v in c.throughput.values()])))  # noqa: E731
        best = max(ok, key=score)
        out = cfg.out or default_out(cfg.engines, cfg.precision, best.backend)
        if cfg.out is not None and not str(out).endswith(_ext(best.backend).split(".")[-1]):
            out = Path(str(out.with_suffix("")) + _ext(best.backend))
            say(f"  --out renamed to {out.name}: the fastest engine here is {best.backend}")
        _move_engine(best.path, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    say(f"  chose {best.name} ({', '.join(f'batch {b}: {v:.0f} img/s' for b, v in best.throughput.items())}) "
        f"in {time.time() - t0:.0f}s")
    return _write_cpu_manifest(replace(cfg, out=out), best.backend, best.precision_hint, record, fp32_path,
                               t0, {"chosen": best.name, "batches": batches, "held_out_images": len(x),
                                    "qdq_estimate_agreement_fp32": round(est_agree, 2), "tolerance_pts": tol,
                                    "candidates": [c.record() for c in cands],
                                    "seconds": round(time.time() - t0, 1)}, best.name)


def _write_cpu_manifest(cfg, backend: str, hint: str | None, record: dict | None, fp32_path: Path,  # noqa: ANN001
                        t0: float, selection: dict | None, variant: str) -> BuildResult:
    from .build import _common_manifest
    from .manifest import write_manifest

    man = _common_manifest(cfg, fp32_path, record, fp32_path)
    if backend == "onnxruntime":
        import onnxruntime as ort

        man.update({"backend": "onnxruntime", "onnxruntime": ort.__version__, "device": "cpu",
                    "activations": "uint8 asymmetric per-tensor from the calibrated ranges, weights int8 "
                                   "per-channel (QOperator)" if record else "float32"})
    else:
        from .backends.openvino import import_openvino

        native = ((man.get("model") or {}).get("preprocess") or {}).get("input_size")
        man.update({"backend": "openvino", "openvino": import_openvino().__version__, "device": "cpu",
                    "precision_hint": hint, "img_size": cfg.img_size or native,
                    "variant": variant,
                    "activations": ("the TensorRT-rule Q/DQ graph as FakeQuantize (int8 convs)" if "-qdq-" in variant
                                    else "the calibrated ranges as FakeQuantize, ReLU outputs on the u8 grid "
                                         "[0, amax], others s8 [-amax, amax], weights int8 per-channel")
                    if record else "float32"})
    if selection:
        man["selection"] = selection
    mp = write_manifest(cfg.out, man)
    return BuildResult(cfg.out, mp, backend, cfg.precision.value, round(time.time() - t0, 1))


def build_cpu(cfg, backend: str, say: Callable[[str], None]) -> BuildResult:  # noqa: ANN001
    """One CPU engine of a forced backend (no selection)."""
    from .build import FP32_NAME, _need, _record_for
    from .export import read_onnx_info

    t0 = time.time()
    fp32_path = _need(cfg.engines / FP32_NAME, "the FP32 ONNX")
    record = _record_for(cfg.engines, fp32_path) if cfg.precision == Precision.int8 else None
    out = cfg.out or default_out(cfg.engines, cfg.precision, backend)
    if backend == "onnxruntime":
        build_onnxruntime_engine(cfg, out, record)
        hint = None
    else:  # forced OpenVINO INT8: the CPU variant (faithful on the CPUs measured), f32 float layers
        info = read_onnx_info(fp32_path)
        build_openvino_engine(cfg, out, cfg.img_size or (info.preprocess.input_size if info else 224), "u8", record)
        hint = "f32"
    variant = ("onnxruntime-u8s8" if record else "onnxruntime-fp32") if backend == "onnxruntime" else \
        ("openvino-u8-f32" if record else "openvino-fp32")
    return _write_cpu_manifest(replace(cfg, out=out), backend, hint, record, fp32_path, t0, None, variant)
