"""CPU engines, chosen by measurement on the machine they will run on (as TensorRT chooses tactics).

No single CPU runtime or INT8 graph is best everywhere: on one x86 ONNX Runtime's u8s8 graph runs
1.9x its FP32, on another 1.1x while OpenVINO runs twice as fast. So ``ghostedge build`` with
``--backend auto`` on a CPU builds every candidate from the same calibration, times each at the
profile's batch sizes here, checks that it keeps the calibration's accuracy (top-1 agreement with FP32
against the Q/DQ estimate's, on images the calibration did not use), keeps the fastest faithful one and
records every candidate in the manifest. ``--backend onnxruntime|openvino`` forces one.

Candidates (INT8), all from the same record and the refined weights. On CPUs whose u8 x s8 products
accumulate in int32 (VNNI / AMX, or not x86): ONNX Runtime u8s8 QOperator from the calibrated ranges;
OpenVINO running the TensorRT-rule Q/DQ ONNX as it is; and OpenVINO running a CPU variant of it: the
same calibrated ranges, non-negative (ReLU) activations on the u8 grid [0, amax] instead of the s8 grid
[-amax, amax], and no shared Concat scales (OpenVINO 2026.4's CPU plugin computed the block-0 ghost
conv's symmetric-int8 input wrongly on a Xeon: 92% top-1 agreement with FP32 against the Q/DQ estimate's
99%; on the u8 grid it agrees with the estimate), float layers in f32, and in bf16 where the CPU has
it. On x86 CPUs without VNNI (``cpu.py``: int16 saturation) only candidates that cannot overflow are
built: ONNX Runtime u8u8 (uint8 weights: the calibration's int8 grid + 128, exactly) and u8s8 with 7-bit
weights, OpenVINO's CPU variant with 7-bit weights; each engine's weights are checked for it after the
build. (7-bit weights cost accuracy: on the reference model 8 points of agreement on the synthetic check
images, so the choice usually keeps u8u8 there.) FP32: ONNX Runtime and OpenVINO on the
FP32 ONNX. The Q/DQ ONNX TensorRT gets is never changed.

The faithfulness check runs on up to ``SELECT_IMAGES`` images of the calibration folder that the
calibration did not use (the record lists its files). Where fewer are left (the shipped ``calib/`` has
none), synthetic images fill up to that number: 2x2 mosaics of random crops of four different calibration
images (new images, though made of calibration pixels), and the choice says so. A candidate is unfaithful when it
agrees with FP32 more than ``FAITHFUL_TOL_PTS`` less than the estimate does *and* an exact one-sided
McNemar test on the images where exactly one of the two agrees with FP32 says so at level
``FAITHFUL_ALPHA``: one image never drops an engine; a 2-point loss is caught (simulated in the tests).
When every candidate falls short, the most faithful is kept, with the shortfall and its reason recorded.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field, replace
from enum import Enum
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import onnx

from .backends.base import logits_in_batches
from .backends.common import BuildResult, Precision
from .backends.registry import get as backend_named
from .build_common import common_manifest, need_input, record_for, resolve_batch
from .card import ModelCard
from .cpu import NO_OVERFLOW_WEIGHT_MAX, CpuInt8, host_cpu
from .errors import GhostedgeError
from .quantize import FP32_NAME, INT8_NAME, RECORD_NAME
from .record import CalibrationRecord
from .timing import time_runner

#: time per candidate and batch size while choosing (plus a 200 ms warm-up)
SELECT_SECONDS = 0.6
#: images the faithfulness check runs on (held out from calibration)
SELECT_IMAGES = 1024
#: an FP32 candidate computes the FP32 function itself: a smaller check finds a broken one
FP32_CHECK_IMAGES = 128
#: a candidate may agree with FP32 this much less than the Q/DQ estimate (points) ...
FAITHFUL_TOL_PTS = 0.3
#: ... unless an exact one-sided McNemar test says the loss is real at this level
FAITHFUL_ALPHA = 0.1


class Runtime(str, Enum):
    """The CPU runtimes an engine is built for (``backends.registry`` names)."""

    onnxruntime = "onnxruntime"
    openvino = "openvino"


class Graph(str, Enum):
    """Which graph a CPU engine runs."""

    fp32 = "fp32"            # the FP32 ONNX
    qoperator = "qoperator"  # ORT QLinear ops from the calibrated ranges
    qdq = "qdq"              # the TensorRT Q/DQ ONNX as it is
    u8 = "u8"                # its CPU variant: ReLU outputs on the u8 grid, no shared Concat scales


class Hint(str, Enum):
    """OpenVINO's INFERENCE_PRECISION_HINT for the float layers."""

    f32 = "f32"
    bf16 = "bf16"


@dataclass(frozen=True)
class Variant:
    """One CPU engine recipe: which runtime, which graph, which weight grid."""

    name: str                   # e.g. "onnxruntime-u8s8", "openvino-u8w7-f32"
    backend: Runtime
    graph: Graph = Graph.fp32
    weight_bits: int = 8        # 7: weights on [-64, 64], no int16 overflow without VNNI
    uint8_weights: bool = False  # ORT u8u8: weights + 128 with zero point 128 (MLAS's non-saturating kernels)
    hint: Hint | None = None    # OpenVINO INFERENCE_PRECISION_HINT of the float layers

    @property
    def hint_name(self) -> str | None:
        return self.hint.value if self.hint is not None else None


def int8_variants(cpu: CpuInt8, openvino: bool, bf16: bool) -> list[Variant]:
    """The INT8 candidates for this CPU: none that can overflow an int16 intermediate here."""
    if cpu.ort_saturates:
        out = [Variant("onnxruntime-u8s8w7", Runtime.onnxruntime, Graph.qoperator, weight_bits=7),
               Variant("onnxruntime-u8u8", Runtime.onnxruntime, Graph.qoperator, uint8_weights=True)]
    else:
        out = [Variant("onnxruntime-u8s8", Runtime.onnxruntime, Graph.qoperator)]
    if not openvino:
        return out
    if cpu.onednn_saturates:  # (the TensorRT-rule graph was unfaithful on OpenVINO even with VNNI: not tried)
        out.append(Variant("openvino-u8w7-f32", Runtime.openvino, Graph.u8, 7, hint=Hint.f32))
        if bf16 and not cpu.onednn_isa:  # a capped oneDNN ISA has no bf16 convolutions
            out.append(Variant("openvino-u8w7-bf16", Runtime.openvino, Graph.u8, 7, hint=Hint.bf16))
    else:
        out += [Variant("openvino-qdq-f32", Runtime.openvino, Graph.qdq, hint=Hint.f32),
                Variant("openvino-u8-f32", Runtime.openvino, Graph.u8, hint=Hint.f32)]
        if bf16:
            out.append(Variant("openvino-u8-bf16", Runtime.openvino, Graph.u8, hint=Hint.bf16))
    return out


def forced_variant(backend: str, int8: bool, cpu: CpuInt8) -> Variant:
    """The one engine ``--backend onnxruntime|openvino`` builds (no selection)."""
    rt = Runtime(backend)
    if not int8:
        return Variant(f"{rt.value}-fp32", rt, hint=None if rt == Runtime.onnxruntime else Hint.f32)
    if rt == Runtime.onnxruntime:
        return (Variant("onnxruntime-u8u8", rt, Graph.qoperator, uint8_weights=True) if cpu.ort_saturates
                else Variant("onnxruntime-u8s8", rt, Graph.qoperator))
    # OpenVINO: the CPU variant (faithful on the CPUs measured), f32 float layers
    return (Variant("openvino-u8w7-f32", rt, Graph.u8, 7, hint=Hint.f32) if cpu.onednn_saturates
            else Variant("openvino-u8-f32", rt, Graph.u8, hint=Hint.f32))


@dataclass
class Candidate:
    variant: Variant
    path: Path
    throughput: dict[str, float] = field(default_factory=dict)
    agreement_fp32: float | None = None
    agreement_estimate: float | None = None
    shortfall_pts: float | None = None        # estimate's agreement with FP32 minus this engine's
    discordant: tuple[int, int] | None = None  # (estimate-only agrees with FP32, engine-only agrees)
    p_value: float | None = None
    kl: float | None = None
    faithful: bool | None = None
    build_seconds: float = 0.0
    error: str | None = None

    @property
    def name(self) -> str:
        return self.variant.name

    def record(self) -> dict:
        v = self.variant
        return {"name": v.name, "backend": v.backend.value, "precision_hint": v.hint_name, "graph": v.graph.value,
                "weight_bits": v.weight_bits, "uint8_weights": v.uint8_weights,
                "throughput": {b: round(t, 1) for b, t in self.throughput.items()},
                "agreement_fp32": self.agreement_fp32, "agreement_with_qdq_estimate": self.agreement_estimate,
                "shortfall_pts": self.shortfall_pts, "discordant_vs_estimate": self.discordant,
                "p_value": self.p_value, "kl_fp32": self.kl, "faithful": self.faithful,
                "build_seconds": round(self.build_seconds, 1), "error": self.error}


def _ext(backend: str) -> str:
    return backend_named(backend).engine_suffix


def default_out(engines: Path, precision: Precision, backend: str) -> Path:
    return engines / f"ghostnet.{precision.value}{_ext(backend)}"


def _move_engine(src: Path, dst: Path, backend: str) -> None:
    """Move an engine (and its companion files, an OpenVINO .bin) into place, companions first."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    for companion in backend_named(backend).companions:
        os.replace(src.with_suffix(companion), dst.with_suffix(companion))
    os.replace(src, dst)


#: ONNX Runtime CPU INT8: layers left in FP32 because int8 is slower there (measured: the 3-channel stem
#: conv and the first bottleneck at full resolution run faster in FP32's NCHWc kernels)
CPU_FLOAT_PREFIX = ("/conv_stem/", "/blocks/blocks.0/")


def build_onnxruntime_engine(cfg, dst: Path, record: CalibrationRecord | None,  # noqa: ANN001 (BuildConfig)
                             variant: Variant | None = None) -> Path:
    from .backends.onnxruntime import optimize_to, quantize_for_cpu, to_uint8_weights
    if cfg.precision == Precision.int8:
        v = variant or forced_variant(Runtime.onnxruntime, True, host_cpu())
        fp32 = onnx.load(str(cfg.engines / FP32_NAME))
        exclude = [n.name for n in fp32.graph.node if any(p in n.name for p in CPU_FLOAT_PREFIX)]
        exclude += [n for n in record.excluded_nodes if "/se/" not in n]
        if v.weight_bits == 7:   # weights refined for the 7-bit grid ORT's reduce_range then lands them on
            from .refine import apply_weights

            fp32 = apply_weights(fp32, refined_for_bits(cfg, record, 7), skip=set(exclude))
        else:
            fp32 = refined_float_graph(cfg)
        model = quantize_for_cpu(fp32, record, exclude, reduce_range=v.weight_bits == 7)
        if v.uint8_weights:
            model = to_uint8_weights(model)
    else:
        model = onnx.load(str(cfg.engines / FP32_NAME))
    return optimize_to(with_input_format(cfg, model), dst)


def with_input_format(cfg, model: onnx.ModelProto) -> onnx.ModelProto:  # noqa: ANN001 (BuildConfig)
    """The engine's source graph with the input ``cfg.input_format`` asks for (uint8 pixels: normalised in the
    graph, with the FP32 ONNX's mean/std)."""
    if not cfg.input_format.uint8:
        return model
    from .card import read_onnx_card
    from .input_uint8 import uint8_input

    info = read_onnx_card(cfg.engines / FP32_NAME)
    if info is None:
        raise GhostedgeError(f"{cfg.engines / FP32_NAME} carries no preprocessing (not a ghostedge export): a "
                             "uint8-input engine needs the mean/std; rerun ghostedge quantize")
    return uint8_input(model, info.input, cfg.input_format.layout)


def refined_float_graph(cfg) -> onnx.ModelProto:  # noqa: ANN001 (BuildConfig)
    """The float graph the CPU INT8 engines quantize: the Q/DQ ONNX with its Q/DQ pairs removed, so the
    weights and biases quantize refined (rounding, bias correction) carry over to the CPU."""
    from .qdq import strip_qdq

    return strip_qdq(_qdq_onnx(cfg))


def _qdq_onnx(cfg) -> onnx.ModelProto:  # noqa: ANN001 (BuildConfig)
    return onnx.load(str(need_input(cfg.engines / INT8_NAME, "the Q/DQ ONNX")))


def cpu_qdq_variant(qdq: onnx.ModelProto, record: CalibrationRecord, fp32: onnx.ModelProto | None = None,
                    refined=None) -> onnx.ModelProto:  # noqa: ANN001 (refine.Refined)
    """The calibration's Q/DQ graph for CPUs: the same amax per tensor, ReLU outputs (min >= 0) on the u8
    grid [0, amax], Q/DQ at the inputs of convs and residual adds, no shared Concat scales; the weights on
    the Q/DQ ONNX's own (refined) per-channel grid, or, given ``refined`` (weights refined for another grid)
    and the FP32 graph, on that one."""
    from .qdq import insert_qdq, plan_placement, strip_qdq, weight_grids
    from .refine import apply_weights

    amax = record.amax()
    nonneg = {k for k, t in record.tensors.items() if t.min >= 0.0}
    if refined is None:
        base, grid = strip_qdq(qdq), weight_grids(qdq)
    else:
        base, grid = apply_weights(fp32, refined), refined.weight_amax
    pl = plan_placement(base, set(record.excluded_nodes), concat_groups=False)
    return insert_qdq(base, pl, amax, unsigned=nonneg, weight_amax=grid)


#: weights refined per (record, bits), shared by the engines of one build and dropped when it ends
_REFINED: ContextVar[dict | None] = ContextVar("ghostedge_refined_weights", default=None)


@contextmanager
def refinement_cache() -> Iterator[None]:
    """Within the block, refined_for_bits computes each (record, bits) once; the cache goes with the block."""
    token = _REFINED.set({})
    try:
        yield
    finally:
        _REFINED.reset(token)


def refined_for_bits(cfg, record: CalibrationRecord, bits: int):  # noqa: ANN001,ANN201 (BuildConfig -> refine.Refined)
    """The calibration's weights rounded for a ``bits``-bit grid by quantize's own refinement (GPTQ rounding,
    bias correction) on the calibration images, from the FP32 ONNX: 7-bit weights rounded to nearest lose
    points of agreement that the same refinement as the 8-bit grid's mostly wins back. Computed once per
    record within a ``refinement_cache`` block (one build); without the calibration images, plain rounding (``refine.Refined`` without weights)."""
    from .data import load_images, normalize
    from .card import read_onnx_card
    from .manifest import file_sha256
    from .qdq import plan_placement
    from .refine import RefineConfig, Refined, refine

    cache = _REFINED.get()
    key = (file_sha256(cfg.engines / RECORD_NAME), bits)
    if cache is not None and key in cache:
        return cache[key]
    fp32 = onnx.load(str(cfg.engines / FP32_NAME))
    amax = record.amax()
    rc = RefineConfig(weight_qmax=float(2 ** (bits - 1)))
    folder = Path(cfg.calib or record.data.folder)
    paths = [folder / p for p in record.data.paths or []][:rc.images]
    info = read_onnx_card(fp32)
    if not paths or not all(p.is_file() for p in paths) or info is None:
        out = Refined(amax=amax)     # nothing to refine on: round to nearest (insert_qdq's default grid)
    else:
        u8, _, _ = load_images(paths, info.input, what=f"calibration images in {folder}")
        pl = plan_placement(fp32, set(record.excluded_nodes), concat_groups=False)
        out = refine(fp32, pl, {}, amax, normalize(u8, info.input), rc)
    if cache is not None:
        cache[key] = out
    return out


def openvino_source(cfg, variant: Variant, record: CalibrationRecord | None) -> onnx.ModelProto:  # noqa: ANN001
    """The ONNX an OpenVINO engine is made from: the FP32 ONNX, the TensorRT Q/DQ ONNX, or its CPU variant;
    with 7-bit weights where ``variant`` asks for them."""
    from .qdq import with_weight_bits

    if cfg.precision != Precision.int8:
        return onnx.load(str(cfg.engines / FP32_NAME))
    qdq = _qdq_onnx(cfg)
    if variant.weight_bits == 7 and variant.graph == Graph.u8:
        r7 = refined_for_bits(cfg, record, 7)
        if r7.weights:
            return cpu_qdq_variant(qdq, record, onnx.load(str(cfg.engines / FP32_NAME)), r7)
    model = cpu_qdq_variant(qdq, record) if variant.graph == Graph.u8 else qdq
    return with_weight_bits(model, variant.weight_bits) if variant.weight_bits != 8 else model


def build_openvino_engine(cfg, dst: Path, size: int, variant: Variant,  # noqa: ANN001 (BuildConfig)
                          record: CalibrationRecord | None = None) -> int | None:
    """IR with a dynamic batch and a static ``size`` x ``size`` (OpenVINO's CPU plugin runs static spatial
    shapes faster), from ``openvino_source``. Returns the largest |int8 weight| of that source (None: FP32)."""
    from .backends.openvino import save_ir
    from .errors import write_bytes_atomic
    from .qdq import qdq_weight_code_max

    src = openvino_source(cfg, variant, record)
    tmp = dst.with_name(f".{dst.stem}.{os.getpid()}.src.onnx")
    try:
        write_bytes_atomic(tmp, with_input_format(cfg, src).SerializeToString())
        save_ir(tmp, dst, size, cfg.input_format.layout)
    finally:
        tmp.unlink(missing_ok=True)
    return qdq_weight_code_max(src) if cfg.precision == Precision.int8 else None


def build_engine(cfg, variant: Variant, dst: Path, size: int, record: CalibrationRecord | None) -> int | None:  # noqa: ANN001
    """Build one CPU engine; returns the largest |int8 weight| it multiplies with (None: uint8 weights or
    FP32), for ``check_no_overflow``."""
    from .backends.onnxruntime import qoperator_weight_code_max

    if variant.backend == Runtime.openvino:
        return build_openvino_engine(cfg, dst, size, variant, record)
    build_onnxruntime_engine(cfg, dst, record, variant)
    return qoperator_weight_code_max(onnx.load(str(dst))) if cfg.precision == Precision.int8 else None


def check_no_overflow(variant: Variant, code_max: int | None, cpu: CpuInt8) -> None:
    """On a CPU whose int8 kernels add u8 x s8 pairs in int16, no weight may exceed NO_OVERFLOW_WEIGHT_MAX."""
    saturates = cpu.ort_saturates if variant.backend == Runtime.onnxruntime else cpu.onednn_saturates
    if saturates and code_max is not None and code_max > NO_OVERFLOW_WEIGHT_MAX:
        raise GhostedgeError(f"{variant.name}: int8 weights up to {code_max} on a CPU whose int8 kernels saturate "
                             f"above {NO_OVERFLOW_WEIGHT_MAX} ({cpu.describe()}): this is a ghostedge bug, please "
                             "report it; --backend openvino or onnxruntime builds a single engine meanwhile")


# ---------------------------------------------------------------------------------------------
# the images the choice is checked on

def _rel(p: Path, root: Path) -> str:
    return str(p.relative_to(root)) if p.is_relative_to(root) else str(p)


def mosaics(u8: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """n synthetic images, each a 2x2 mosaic of random crops (randomly flipped) of four different images."""
    rng = np.random.default_rng(seed)
    k, s = len(u8), u8.shape[1]
    h = s // 2
    out = np.empty((n, s, s, 3), np.uint8)
    for i in range(n):
        src = rng.choice(k, size=4, replace=k < 4)
        for q, (y0, x0) in enumerate(((0, 0), (0, h), (h, 0), (h, h))):
            hh, ww = (h if y0 == 0 else s - h), (h if x0 == 0 else s - h)
            oy, ox = rng.integers(0, s - hh + 1), rng.integers(0, s - ww + 1)
            crop = u8[src[q], oy:oy + hh, ox:ox + ww]
            out[i, y0:y0 + hh, x0:x0 + ww] = crop[:, ::-1] if rng.random() < 0.5 else crop
    return out


def check_images(cfg, record: CalibrationRecord | None, info, size: int,  # noqa: ANN001
                 n: int = SELECT_IMAGES) -> tuple[np.ndarray, dict]:
    """Up to n images the calibration did not use, preprocessed as the model says, and what they are."""
    import random

    from .data import find_images, load_images, normalize, sample_images

    folder = cfg.calib or (Path(record.data.folder) if record else None)
    if folder is None or not Path(folder).is_dir():
        raise GhostedgeError(f"choosing the CPU engine needs the calibration folder to check accuracy, and "
                             f"{folder} is not here: pass --calib DIR, or force one with --backend onnxruntime / "
                             "openvino")
    folder = Path(folder)
    seed = record.seed if record else 0
    if record and record.data.paths is not None:
        used = set(record.data.paths)
        note = ""
    else:  # a record from before the file list: the sample quantize drew, as far as it can be redrawn
        used = {_rel(p, folder) for p in sample_images(folder, record.num_images if record else 0, seed)}
        note = "the calibration record has no file list (an older ghostedge): calibration images inferred; "
    files = find_images(folder)
    calib = [p for p in files if _rel(p, folder) in used]
    rest = [p for p in files if _rel(p, folder) not in used]
    rng = random.Random(seed + 1)
    rng.shuffle(rest)
    rng.shuffle(calib)   # mosaics from every class, not the first folders
    # unreadable files are skipped here, never fatal: they were never calibration images either
    real, _, _ = load_images(rest[:n], info.input, size, what=f"held-out images in {folder}", needed=0,
                             strict=False)
    parts, synth = [real], 0
    if len(real) < n and calib:   # top up to n, so the check's power does not depend on the folder
        cal_u8, _, _ = load_images(calib[:256], info.input, size, what=f"calibration images in {folder}",
                                   strict=False)
        synth = n - len(real)
        parts.append(mosaics(cal_u8, synth, seed))
        note += (f"{folder} has {len(real)} readable image(s) the calibration did not use, so {synth} synthetic "
                 "images (2x2 mosaics of random crops of calibration images) were added: give --calib a folder "
                 f"with {n}+ more real images than --num-images for a check on real images only")
    x = np.concatenate(parts)
    if len(x) == 0:
        raise GhostedgeError(f"no image of {folder} can be read to check the CPU engines: pass --calib DIR")
    return normalize(x, info.input), {"folder": str(folder), "real": len(real), "synthetic": synth,
                                           "note": note.rstrip("; ") or None}


def faithfulness(b: int, c: int, n: int, tol: float = FAITHFUL_TOL_PTS, alpha: float = FAITHFUL_ALPHA
                 ) -> tuple[bool, float, float]:
    """(faithful, shortfall in points, one-sided p) for an engine that agrees with FP32 on c images where the
    estimate does not and misses b where the estimate agrees, of n: unfaithful only when the shortfall
    exceeds ``tol`` and the exact McNemar test P(X >= b | b + c, 1/2) is below ``alpha``."""
    from .drift import binom_cdf

    short = 100.0 * (b - c) / n if n else 0.0
    p = 1.0 - binom_cdf(b - 1, b + c, 0.5) if b > 0 else 1.0
    return not (short > tol and p < alpha), short, p


def _judge(c: Candidate, got: np.ndarray, ref: np.ndarray, est: np.ndarray) -> None:
    from .drift import compare

    r = ref.argmax(1)
    e_ok, g_ok = est.argmax(1) == r, got.argmax(1) == r
    b, cc = int((e_ok & ~g_ok).sum()), int((~e_ok & g_ok).sum())
    c.faithful, short, p = faithfulness(b, cc, len(r))
    c.agreement_fp32 = round(float(g_ok.mean() * 100), 2)
    c.agreement_estimate = round(float((got.argmax(1) == est.argmax(1)).mean() * 100), 2)
    c.shortfall_pts, c.discordant, c.p_value = round(short, 2), (b, cc), round(p, 4)
    c.kl = round(compare(ref, got).kl, 6)


def _open(c: Candidate, threads: int):  # noqa: ANN202
    runner, _ = backend_named(c.variant.backend).open_runner(c.path, threads=threads,
                                                             precision_hint=c.variant.hint_name or "f32")
    return runner


def _candidates(cfg, tmp: Path, cpu: CpuInt8) -> list[Candidate]:  # noqa: ANN001
    try:
        from .backends.openvino import import_openvino

        ov = import_openvino()
        bf16 = "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
        have_ov = True
    except GhostedgeError:
        have_ov = bf16 = False
    if cfg.precision == Precision.int8:
        variants = int8_variants(cpu, have_ov, bf16)
    else:  # an FP32 engine stays FP32 (no bf16 float layers)
        variants = [Variant("onnxruntime-fp32", Runtime.onnxruntime)] + \
            ([Variant("openvino-fp32", Runtime.openvino, hint=Hint.f32)] if have_ov else [])
    # engines that differ only in the precision hint share one file
    files = {(v.backend, v.graph, v.weight_bits, v.uint8_weights) for v in variants}
    key = {k: tmp / f"c{i}{_ext(k[0])}" for i, k in enumerate(sorted(files))}
    return [Candidate(v, key[(v.backend, v.graph, v.weight_bits, v.uint8_weights)]) for v in variants]


def probed_host(say: Callable[[str], None]) -> tuple[CpuInt8, int | None]:
    """This CPU from its flags, checked against what ONNX Runtime's u8s8 kernels really do here (a VM may
    report VNNI it does not pass through): a saturating probe makes it a no-VNNI CPU."""
    from dataclasses import replace as _replace

    from .backends.onnxruntime import u8s8_probe

    cpu = host_cpu()
    try:
        code = u8s8_probe()
    except Exception:  # noqa: BLE001 (no probe: the flags decide)
        return cpu, None
    if code != 200 and not cpu.ort_saturates:
        say(f"  ONNX Runtime's u8s8 kernels saturate on this CPU although its flags say VNNI (probe {code}, exact "
            "200): building the no-VNNI candidates")
        cpu = _replace(cpu, assume_no_vnni=True)
    return cpu, code


def _shortfall_reason(cpu: CpuInt8) -> str:
    if cpu.ort_saturates or cpu.onednn_saturates:
        return ("this CPU has no VNNI: its int8 kernels add u8 x s8 products in int16, so the CPU engines run "
                "uint8 or 7-bit weights")
    return "the CPU runtimes' int8 kernels round differently from TensorRT's arithmetic on this model"


def choose_cpu_engine(cfg, say: Callable[[str], None], threads: int = 0,  # noqa: ANN001
                      cpu: CpuInt8 | None = None) -> BuildResult:
    """Build every CPU candidate, time and check each here, keep the fastest faithful one."""
    with refinement_cache():
        return _choose_cpu_engine(cfg, say, threads, cpu)


def _choose_cpu_engine(cfg, say: Callable[[str], None], threads: int, cpu: CpuInt8 | None) -> BuildResult:  # noqa: ANN001
    from .estimate import qdq_logits
    from .card import card_for_onnx, read_onnx_card
    from .input_uint8 import feed_for, timing_input
    from .quantize import ort_logits

    t0 = time.time()
    cpu, probe = (cpu, None) if cpu is not None else probed_host(say)
    fp32_path = need_input(cfg.engines / FP32_NAME, "the FP32 ONNX")
    int8 = cfg.precision == Precision.int8
    have_record = int8 or (cfg.engines / RECORD_NAME).is_file()
    card = read_onnx_card(fp32_path)          # read once: the record check and the manifest take it too
    calib_record = record_for(cfg.engines, fp32_path, card) if have_record else None
    record = calib_record if int8 else None
    info = card or card_for_onnx(fp32_path)
    size = cfg.img_size or info.input.input_size
    b0, _, b2 = resolve_batch(cfg)
    batches = sorted({b0, b2})
    try:
        x, images = check_images(cfg, calib_record, info, size, SELECT_IMAGES if int8 else FP32_CHECK_IMAGES)
    except GhostedgeError:
        if int8:
            raise
        # an FP32 engine without calibration images: the same function, checked on noise images
        x = np.random.default_rng(1).standard_normal((32, 3, size, size), dtype=np.float32)
        images = {"folder": None, "real": 0, "synthetic": len(x), "note": "noise images (no calibration folder)"}
    say(f"  CPU: {cpu.describe()}")
    say(f"  checking on {images['real']} held-out + {images['synthetic']} synthetic images"
        + (f" ({images['note']})" if images["note"] else ""))
    ref = ort_logits(fp32_path, x, threads=threads)
    est = qdq_logits(need_input(cfg.engines / INT8_NAME, "the Q/DQ ONNX"), x, threads=threads) if int8 else ref
    est_agree = float((est.argmax(1) == ref.argmax(1)).mean() * 100)
    rng = np.random.default_rng(0)
    inputs = {b: timing_input(cfg.input_format, b, size, rng) for b in batches}
    tmp = Path(tempfile.mkdtemp(prefix=".select.", dir=cfg.engines))
    try:
        cands = _candidates(cfg, tmp, cpu)
        built: dict[Path, int | None] = {}
        for c in cands:
            tc = time.time()
            try:
                if c.path not in built:
                    built[c.path] = build_engine(cfg, c.variant, c.path, size, record)
                check_no_overflow(c.variant, built[c.path], cpu)
                c.build_seconds = time.time() - tc
                with feed_for(_open(c, threads), info.input, cfg.input_format) as r:
                    _judge(c, logits_in_batches(r, x, 32), ref, est)
                    for b in batches:
                        c.throughput[str(b)] = time_runner(r, inputs[b], 1, None, SELECT_SECONDS).throughput
            except Exception as e:  # noqa: BLE001 (a runtime's own error: this candidate is out, the choice goes on)
                first = str(e).strip().splitlines()[-1][:300] if str(e).strip() else ""
                c.error = first if isinstance(e, GhostedgeError) else f"{type(e).__name__}: {first}"
            say(f"  candidate {c.name}: " + (f"error: {c.error}" if c.error else
                ", ".join(f"batch {b} {v:.0f} img/s" for b, v in c.throughput.items())
                + f"; agreement with FP32 {c.agreement_fp32:.2f}%"
                + (f" (Q/DQ estimate {est_agree:.2f}%)" if int8 else "")
                + ("" if c.faithful else f" -> {c.shortfall_pts:+.2f} pt short (p={c.p_value:.3f}), not faithful")))
        working = [c for c in cands if not c.error]
        if not working:
            raise GhostedgeError("no CPU engine could be built here ("
                                 + "; ".join(f"{c.name}: {c.error}" for c in cands)
                                 + "): force one with --backend, or report this")
        ok = [c for c in working if c.faithful]
        shortfall = None
        if ok:
            score = lambda c: float(np.exp(np.mean([np.log(v) for v in c.throughput.values()])))  # noqa: E731
            best = max(ok, key=score)
        else:  # never stop the job: keep the most faithful, and say by how much it falls short and why
            best = min(working, key=lambda c: (c.shortfall_pts, c.kl))
            shortfall = {"engine": best.name, "shortfall_pts": best.shortfall_pts, "p_value": best.p_value,
                         "reason": _shortfall_reason(cpu)}
            say(f"  warning: no CPU engine kept the Q/DQ estimate's accuracy within {FAITHFUL_TOL_PTS} pt; kept the "
                f"most faithful, {best.name}, {best.shortfall_pts:.2f} pt short of it ({shortfall['reason']})")
        out = cfg.out or default_out(cfg.engines, cfg.precision, best.variant.backend)
        if cfg.out is not None and not str(out).endswith(_ext(best.variant.backend).split(".")[-1]):
            out = Path(str(out.with_suffix("")) + _ext(best.variant.backend))
            say(f"  --out renamed to {out.name}: the fastest engine here is {best.variant.backend.value}")
        _move_engine(best.path, out, best.variant.backend)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    say(f"  chose {best.name} ({', '.join(f'batch {b}: {v:.0f} img/s' for b, v in best.throughput.items())}) "
        f"in {time.time() - t0:.0f}s")
    selection = {"chosen": best.name, "batches": batches, "cpu": {**cpu.to_dict(), "u8s8_probe": probe},
                 "images": images,
                 "held_out_images": len(x), "qdq_estimate_agreement_fp32": round(est_agree, 2),
                 "tolerance_pts": FAITHFUL_TOL_PTS, "alpha": FAITHFUL_ALPHA, "shortfall": shortfall,
                 "candidates": [c.record() for c in cands], "seconds": round(time.time() - t0, 1)}
    return _write_cpu_manifest(replace(cfg, out=out), best.variant, record, fp32_path, card, t0, selection,
                               built.get(best.path))


def _activations(v: Variant) -> str:
    if v.graph == Graph.qoperator:
        w = ("uint8 (zero point 128: the int8 grid + 128)" if v.uint8_weights else
             "int8 per-channel" + (" on a 7-bit grid [-64, 64] (reduce_range)" if v.weight_bits == 7 else ""))
        return f"uint8 asymmetric per-tensor from the calibrated ranges, weights {w} (QOperator)"
    w = " on a 7-bit grid [-64, 64]" if v.weight_bits == 7 else ""
    if v.graph == Graph.qdq:
        return f"the TensorRT-rule Q/DQ graph as FakeQuantize (int8 convs), weights{w or ' on its int8 grid'}"
    if v.graph == Graph.u8:
        return ("the calibrated ranges as FakeQuantize, ReLU outputs on the u8 grid [0, amax], others s8 "
                f"[-amax, amax], weights int8 per-channel{w}")
    return "float32"


def _write_cpu_manifest(cfg, variant: Variant, record: CalibrationRecord | None, fp32_path: Path,  # noqa: ANN001
                        card: ModelCard | None, t0: float, selection: dict | None, code_max: int | None) -> BuildResult:
    from .manifest import write_manifest

    man = common_manifest(cfg, fp32_path, record, fp32_path, card)
    man["variant"] = variant.name
    man["activations"] = _activations(variant) if record else "float32"
    man["weight_code_max"] = code_max
    if variant.backend == Runtime.onnxruntime:
        import onnxruntime as ort

        man.update({"backend": "onnxruntime", "onnxruntime": ort.__version__, "device": "cpu"})
    else:
        from .backends.openvino import import_openvino

        native = ((man.get("model") or {}).get("preprocess") or {}).get("input_size")
        man.update({"backend": "openvino", "openvino": import_openvino().__version__, "device": "cpu",
                    "precision_hint": variant.hint_name, "img_size": cfg.img_size or native})
    if selection:
        man["selection"] = selection
    mp = write_manifest(cfg.out, man)
    return BuildResult(cfg.out, mp, variant.backend.value, cfg.precision.value, round(time.time() - t0, 1))


def build_cpu(cfg, backend: str, say: Callable[[str], None], cpu: CpuInt8 | None = None) -> BuildResult:  # noqa: ANN001
    """One CPU engine of a forced backend (no selection); on a CPU without VNNI, one that cannot saturate."""
    with refinement_cache():
        return _build_cpu(cfg, backend, say, cpu)


def _build_cpu(cfg, backend: str, say: Callable[[str], None], cpu: CpuInt8 | None) -> BuildResult:  # noqa: ANN001
    from .card import card_for_onnx, read_onnx_card

    t0 = time.time()
    cpu = cpu if cpu is not None else probed_host(say)[0]
    fp32_path = need_input(cfg.engines / FP32_NAME, "the FP32 ONNX")
    card = read_onnx_card(fp32_path)          # read once: the record check and the manifest take it too
    record = record_for(cfg.engines, fp32_path, card) if cfg.precision == Precision.int8 else None
    out = cfg.out or default_out(cfg.engines, cfg.precision, backend)
    v = forced_variant(backend, record is not None, cpu)
    tmp = out.with_name(f".{out.name}.{os.getpid()}{_ext(backend)}")
    try:  # built and checked under a temporary name, then moved into place
        code_max = build_engine(cfg, v, tmp, cfg.img_size or (card or card_for_onnx(fp32_path)).input.input_size,
                                record)
        check_no_overflow(v, code_max, cpu)
        _move_engine(tmp, out, backend)
    finally:
        for f in (tmp, tmp.with_suffix(".bin")):
            f.unlink(missing_ok=True)
    if record is not None and (cpu.ort_saturates if backend == "onnxruntime" else cpu.onednn_saturates):
        say(f"  {cpu.describe()}: built {v.name}, whose weights cannot overflow the int16 intermediate")
    return _write_cpu_manifest(replace(cfg, out=out), v, record, fp32_path, card, t0, None, code_max)
