"""Accuracy drift of an engine against the FP32 PyTorch model: small records, numbers only."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from statistics import NormalDist

import numpy as np


def _softmax(x: np.ndarray) -> np.ndarray:
    z = x - x.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def topk_correct(logits: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    k = min(k, logits.shape[1])
    top = np.argpartition(-logits, k - 1, axis=1)[:, :k]
    return (top == labels[:, None]).any(axis=1)


def binom_cdf(k: int, n: int, p: float) -> float:
    """P(X <= k) for X ~ Binomial(n, p), summed in log space (exact to float precision)."""
    if k < 0:
        return 0.0
    if k >= n:
        return 1.0
    if p <= 0.0:
        return 1.0
    if p >= 1.0:
        return 0.0
    i = np.arange(k + 1)
    logc = np.array([math.lgamma(n + 1) - math.lgamma(j + 1) - math.lgamma(n - j + 1) for j in i])
    t = logc + i * math.log(p) + (n - i) * math.log1p(-p)
    m = t.max()
    return float(min(1.0, math.exp(m) * np.exp(t - m).sum()))


def _solve(f, target: float) -> float:
    """The p in (0, 1) where the decreasing function f(p) equals target (bisection)."""
    lo, hi = 0.0, 1.0
    for _ in range(80):
        mid = (lo + hi) / 2
        if f(mid) > target:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def clopper_pearson(k: int, n: int, conf: float = 0.95) -> tuple[float, float]:
    """Exact (Clopper-Pearson) two-sided interval of a binomial proportion, k successes in n trials:
    lo solves P(X >= k | lo) = a, i.e. P(X <= k - 1 | lo) = 1 - a; hi solves P(X <= k | hi) = a; a = (1 - conf) / 2."""
    if n <= 0:
        return 0.0, 1.0
    a = (1.0 - conf) / 2
    lo = 0.0 if k <= 0 else _solve(lambda p: binom_cdf(k - 1, n, p), 1.0 - a)
    hi = 1.0 if k >= n else _solve(lambda p: binom_cdf(k, n, p), a)
    return lo, hi


def tango_statistic(b, c, n: int, d, correction: float = 0.0):
    """Tango's score statistic for the paired difference p12 - p21 = d (b ~ p12: reference right, engine
    wrong; c ~ p21: the reverse; n pairs), the variance of b - c taken at the maximum-likelihood p21 under
    that d (Tango 1998, Stat Med 17:891). ``correction`` moves b - c towards d (a continuity correction)."""
    b, c, d = np.asarray(b, np.float64), np.asarray(c, np.float64), np.asarray(d, np.float64)
    big_a = 2.0 * n
    big_b = -b - c + (2.0 * n - b + c) * d
    big_c = -c * d * (1.0 - d)
    q21 = (np.sqrt(np.maximum(big_b * big_b - 4.0 * big_a * big_c, 0.0)) - big_b) / (2.0 * big_a)
    var = n * np.maximum(2.0 * q21 + d * (1.0 - d), 0.0)
    diff = b - c - n * d
    num = np.sign(diff) * np.maximum(np.abs(diff) - correction, 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(num == 0, 0.0, num / np.sqrt(var))


#: the continuity correction of the drop interval: 1 on b - c (McNemar's, after Edwards). Without it, the
#: score interval's lower tail reaches 4-5% where few images are discordant (tests/test_drift.py)
CONTINUITY = 1.0


def paired_drop_intervals(b, c, n: int, conf: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """Interval of the paired drop (b - c) / n (fractions, elementwise over arrays of b and c): the values d
    whose continuity-corrected Tango score statistic lies within +-z. Exact coverage over rates and n from
    128 to 50,000 is >= 95.1% with each tail <= 2.5% at 95% (tests/test_drift.py computes it)."""
    z = NormalDist().inv_cdf(0.5 + conf / 2)
    b, c = np.asarray(b, np.float64), np.asarray(c, np.float64)
    est = (b - c) / n
    eps = 1e-12
    lo_a, lo_b = np.full_like(est, -1.0 + eps), est.copy()      # statistic above z at lo_a, not at lo_b
    hi_a, hi_b = est.copy(), np.full_like(est, 1.0 - eps)       # statistic below -z at hi_b, not at hi_a
    for _ in range(42):                                           # to 2^-42 of the range
        m = (lo_a + lo_b) / 2
        out = tango_statistic(b, c, n, m, CONTINUITY) > z
        lo_a, lo_b = np.where(out, m, lo_a), np.where(out, lo_b, m)
        m = (hi_a + hi_b) / 2
        out = tango_statistic(b, c, n, m, CONTINUITY) < -z
        hi_a, hi_b = np.where(out, hi_a, m), np.where(out, m, hi_b)
    return lo_b, hi_a


def paired_drop_interval(b: int, c: int, n: int, conf: float = 0.95) -> tuple[float, float]:
    """Interval of a paired top-1 drop (b - c) / n in points: b images the reference gets right and the
    engine wrong, c the reverse, of n (see paired_drop_intervals)."""
    if n <= 0:
        return 0.0, 0.0
    lo, hi = paired_drop_intervals(b, c, n, conf)
    return 100.0 * float(lo), 100.0 * float(hi)


@dataclass
class Accuracy:
    top1: float
    top5: float
    n: int


def accuracy(logits: np.ndarray, labels: np.ndarray) -> Accuracy:
    return Accuracy(float(topk_correct(logits, labels, 1).mean() * 100),
                    float(topk_correct(logits, labels, 5).mean() * 100), int(len(labels)))


@dataclass
class DriftResult:
    """Engine vs reference (FP32 PyTorch) on the same images. Percent values are 0..100."""

    n: int
    agreement: float                  # % of images with the same top-1 class
    cosine: float                     # mean cosine similarity of the logits
    kl: float                         # mean KL(ref softmax || engine softmax)
    max_abs_logit_diff: float
    ref_top1: float | None = None
    ref_top5: float | None = None
    top1: float | None = None
    top5: float | None = None
    top1_drop_pts: float | None = None
    ref_right_engine_wrong: int | None = None   # paired counts (the discordant pairs)
    ref_wrong_engine_right: int | None = None
    classes_lost_most: list[dict] = field(default_factory=list)
    labelled: bool = False
    drop_ci95: list[float] | None = None         # the drop's (labelled) or disagreement's 95% interval, points

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def drop(self) -> float:
        """The figure --max-drop bounds: top-1 drop with labels, else top-1 disagreement with FP32 (points)."""
        return self.top1_drop_pts if self.labelled else 100.0 - self.agreement


def drop_interval(d: DriftResult, conf: float = 0.95) -> tuple[float, float]:
    """95% interval of d.drop: with labels the paired drop's (continuity-corrected Tango score interval),
    else Clopper-Pearson on the disagreements (each image agrees or not: a binomial proportion)."""
    if d.labelled:
        return paired_drop_interval(d.ref_right_engine_wrong or 0, d.ref_wrong_engine_right or 0, d.n, conf)
    k = int(round((100.0 - d.agreement) * d.n / 100.0))
    lo, hi = clopper_pearson(k, d.n, conf)
    return 100.0 * lo, 100.0 * hi


#: rows compared at a time (float64 softmaxes of 50,000 x 1,000 logits would be gigabytes)
COMPARE_ROWS = 4096


def compare(ref: np.ndarray, got: np.ndarray, labels: np.ndarray | None = None,
            class_names: list[str] | None = None) -> DriftResult:
    n = len(ref)
    kl = cos = agree = 0.0
    max_abs = 0.0
    r1 = np.zeros(n, bool)
    g1 = np.zeros(n, bool)
    r5 = g5 = 0
    eps = 1e-12
    if labels is not None:
        labels = np.asarray(labels)
    for i in range(0, n, COMPARE_ROWS):
        rr, gg = ref[i:i + COMPARE_ROWS].astype(np.float64), got[i:i + COMPARE_ROWS].astype(np.float64)
        pr, pg = _softmax(rr), _softmax(gg)
        kl += float(np.sum(pr * (np.log(pr + eps) - np.log(pg + eps))))
        cos += float(np.sum(np.sum(rr * gg, 1) / (np.linalg.norm(rr, axis=1) * np.linalg.norm(gg, axis=1) + eps)))
        agree += float((rr.argmax(1) == gg.argmax(1)).sum())
        max_abs = max(max_abs, float(np.abs(rr - gg).max()))
        if labels is not None:
            y = labels[i:i + COMPARE_ROWS]
            r1[i:i + len(y)], g1[i:i + len(y)] = topk_correct(rr, y, 1), topk_correct(gg, y, 1)
            r5 += int(topk_correct(rr, y, 5).sum())
            g5 += int(topk_correct(gg, y, 5).sum())
    m = max(n, 1)
    res = DriftResult(n=n, agreement=agree / m * 100, cosine=cos / m if n else float("nan"),
                      kl=kl / m if n else float("nan"), max_abs_logit_diff=max_abs)
    if labels is not None:
        res.labelled = True
        res.ref_top1, res.top1 = float(r1.mean() * 100), float(g1.mean() * 100)
        res.ref_top5, res.top5 = r5 / m * 100, g5 / m * 100
        res.top1_drop_pts = res.ref_top1 - res.top1
        res.ref_right_engine_wrong = int((r1 & ~g1).sum())
        res.ref_wrong_engine_right = int((~r1 & g1).sum())
        lost = []
        for c in np.unique(labels):
            sel = labels == c
            d = float((r1[sel].mean() - g1[sel].mean()) * 100)
            if d > 0:
                name = class_names[c] if class_names and c < len(class_names) else str(int(c))
                lost.append({"class": name, "drop_pts": round(d, 2), "n": int(sel.sum())})
        res.classes_lost_most = sorted(lost, key=lambda d: -d["drop_pts"])[:5]
    res.drop_ci95 = [round(v, 3) for v in drop_interval(res)]
    return res


@dataclass
class GateVerdict:
    """A --max-drop decision: fails only when the drop exceeds the budget with 95% confidence."""

    fails: bool          # the interval lies wholly above the budget
    above: bool          # the point estimate is above the budget (but maybe within noise)
    message: str


def judge(d: DriftResult, budget: float, conf: float = 0.95) -> GateVerdict:
    lo, hi = drop_interval(d, conf)
    what = "top-1 drop" if d.labelled else "top-1 disagreement with FP32"
    if d.labelled:
        basis = (f"paired score interval on the {d.ref_right_engine_wrong} FP32-right/INT8-wrong and "
                 f"{d.ref_wrong_engine_right} reverse images of {d.n}")
    else:
        basis = f"Clopper-Pearson on {d.n} images"
    fig = f"{what} {d.drop:+.2f} pts ({conf:.0%} CI {lo:+.2f} to {hi:+.2f}, {basis})"
    if lo > budget:
        return GateVerdict(True, True, f"{fig} exceeds --max-drop {budget} with {conf:.0%} confidence")
    if d.drop > budget:
        return GateVerdict(False, True, f"{fig} is above --max-drop {budget} but not significantly (the interval "
                                        f"reaches {lo:+.2f}): the gate passes; more eval images narrow it")
    return GateVerdict(False, False, f"{fig} is within --max-drop {budget}")
