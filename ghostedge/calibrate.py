"""Activation statistics and range selection (the calibrator: collect, compute_amax).

Statistics are gathered once, on the FP32 ONNX with ONNX Runtime, for every tensor of the graph: min
and max (so an asymmetric CPU backend can use them) and a histogram of |x| (so a symmetric TensorRT
graph can pick amax by entropy, percentile or MSE). The record is the portable product; every
backend materializes its own quantized graph from it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable

import numpy as np
import onnx

from .modes import Method  # noqa: F401  (re-exported)

BINS = 2048


@dataclass
class TensorStats:
    min: float
    max: float
    hist: np.ndarray | None = None   # counts of |x| over [0, absmax], BINS bins

    @property
    def absmax(self) -> float:
        return max(abs(self.min), abs(self.max))


def activation_tensors(model: onnx.ModelProto) -> list[str]:
    """Graph input and every float node output (initializers and constants excluded)."""
    names = [i.name for i in model.graph.input]
    consts = {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    for n in model.graph.node:
        if n.op_type == "Constant":
            continue
        names += [o for o in n.output if o and o not in consts]
    return list(dict.fromkeys(names))


def _session_with_outputs(model: onnx.ModelProto, names: list[str], threads: int):
    from .export import ort_session

    m = onnx.ModelProto()
    m.CopyFrom(model)
    existing = {o.name for o in m.graph.output}
    for name in names:
        if name not in existing:
            m.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    return ort_session(m, threads=threads, optimize=False)


def collect_stats(model: onnx.ModelProto, batches: Callable[[], Iterable[np.ndarray]],
                  input_name: str, threads: int = 0, histograms: bool = True,
                  on_batch: Callable[[int], None] | None = None) -> dict[str, TensorStats]:
    """Two passes over the calibration batches: min/max, then |x| histograms on [0, absmax]."""
    names = activation_tensors(model)
    sess = _session_with_outputs(model, names, threads)
    out_names = [o.name for o in sess.get_outputs()]
    keep = [n for n in out_names if n in set(names)]
    lo = {n: np.inf for n in keep}
    hi = {n: -np.inf for n in keep}
    for xb in batches():
        outs = sess.run(keep, {input_name: xb})
        for n, v in zip(keep, outs):
            lo[n] = min(lo[n], float(v.min()))
            hi[n] = max(hi[n], float(v.max()))
        if on_batch:
            on_batch(len(xb))
    stats = {n: TensorStats(lo[n], hi[n]) for n in keep}
    if not histograms:
        return stats
    for n in stats:
        stats[n].hist = np.zeros(BINS, np.int64)
    for xb in batches():
        outs = sess.run(keep, {input_name: xb})
        for n, v in zip(keep, outs):
            amax = stats[n].absmax
            if amax > 0:
                h, _ = np.histogram(np.abs(v), bins=BINS, range=(0.0, amax))
                stats[n].hist += h
        if on_batch:
            on_batch(len(xb))
    return stats


# ---------------------------------------------------------------------------------------------
# amax from a histogram of |x|

def amax_percentile(hist: np.ndarray, absmax: float, pct: float) -> float:
    total = hist.sum()
    if total == 0 or absmax == 0:
        return absmax
    cdf = np.cumsum(hist) / total
    idx = int(np.searchsorted(cdf, pct / 100.0))
    return float(min(absmax, (idx + 1) * absmax / len(hist)))


def amax_mse(hist: np.ndarray, absmax: float, num_bits: int = 8, start: int = 128, stride: int = 8) -> float:
    """The amax that minimizes expected squared quantization error (clipping + rounding)."""
    if hist.sum() == 0 or absmax == 0:
        return absmax
    nb = len(hist)
    width = absmax / nb
    centers = (np.arange(nb) + 0.5) * width
    p = hist / hist.sum()
    qmax = 2 ** (num_bits - 1) - 1
    cands = np.arange(start, nb + 1, stride) * width
    best, best_err = absmax, np.inf
    for a in cands:
        s = a / qmax
        q = np.clip(np.round(centers / s), 0, qmax) * s
        err = float(np.dot(p, (centers - q) ** 2))
        if err < best_err:
            best, best_err = float(a), err
    return best


def amax_entropy(hist: np.ndarray, absmax: float, num_quant_bins: int = 128, start_bin: int = 128,
                 stride: int = 1) -> float:
    """EntropyCalibration2 as pytorch-quantization and ModelOpt compute it (``_compute_amax_entropy`` in
    ``modelopt/torch/quantization/calib/histogram.py``): for every threshold bin i from start_bin on, P is
    the first i bins with everything above folded into bin i - 1, Q is those i bins merged into
    num_quant_bins groups and spread back evenly over each group's non-empty bins; the amax is the edge of
    the i with the least KL(P || Q), the last one on a tie. A threshold where P > 0 and Q = 0 (an outlier
    tail folded into an empty bin) has infinite KL and is never chosen. All thresholds at once from prefix
    sums (the reference loops over them; tests/test_drift.py checks this against a transcription of it)."""
    nb = len(hist)
    if hist.sum() == 0 or absmax == 0 or nb < start_bin:
        return absmax
    h = hist.astype(np.float64)
    h[0] = h[1]  # the spike of exact zeros (ReLU outputs) would dominate the KL (as the reference does)
    total = h.sum()
    c = np.concatenate([[0.0], np.cumsum(h)])                         # prefix sums of counts,
    z = np.concatenate([[0], np.cumsum(h > 0)])                      # of non-empty bins,
    hl = np.where(h > 0, h * np.log(np.where(h > 0, h, 1.0)), 0.0)
    lc = np.concatenate([[0.0], np.cumsum(hl)])                      # and of h log h
    i = np.arange(start_bin, nb + 1, stride)                          # thresholds (bins kept)
    q = np.arange(num_quant_bins + 1)
    edges = (q[None, :] * i[:, None] + num_quant_bins - 1) // num_quant_bins   # group g: bins [e_g, e_g+1)
    s = c[edges[:, 1:]] - c[edges[:, :-1]]                           # counts per group
    nz = z[edges[:, 1:]] - z[edges[:, :-1]]                          # non-empty bins per group
    kept = c[i]                                                       # sum of the first i bins (= sum of Q)
    tail = total - kept
    last = h[i - 1]
    p_last = last + tail
    # sum_j P_j log P_j: bins below i - 1 as they are, bin i - 1 with the tail folded in
    plogp = (lc[i - 1] - np.log(total) * c[i - 1]) / total
    plogp += np.where(p_last > 0, (p_last / total) * np.log(np.where(p_last > 0, p_last, 1.0) / total), 0.0)
    # sum_j P_j log Q_j: Q_j = s_g / (nz_g * kept) on the non-empty bins of group g
    with np.errstate(divide="ignore", invalid="ignore"):
        logq = np.where(nz > 0, np.log(s / np.maximum(nz, 1)) - np.log(kept)[:, None], 0.0)
    plogq = np.sum(np.where(nz > 0, s / total * logq, 0.0), axis=1) + tail / total * logq[:, -1]
    kl = plogp - plogq
    kl[(last == 0) & (tail > 0)] = np.inf                             # P > 0 where Q = 0
    # the last minimum (every candidate infinite: the last candidate, as the reference's argmin gives)
    best = len(kl) - 1 if not np.isfinite(kl).any() else \
        np.flatnonzero(kl <= kl.min() + 1e-12 * max(abs(kl.min()), 1e-12))[-1]
    return float(i[best] * absmax / nb)


def compute_amax(st: TensorStats, method: Method, percentile: float = 99.99) -> float:
    if method == Method.minmax or st.hist is None:
        return st.absmax
    if method == Method.percentile:
        return amax_percentile(st.hist, st.absmax, percentile)
    if method == Method.mse:
        return amax_mse(st.hist, st.absmax)
    return amax_entropy(st.hist, st.absmax)
