"""Accuracy drift of an engine against the FP32 PyTorch model: small records, numbers only."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np


def _softmax(x: np.ndarray) -> np.ndarray:
    z = x - x.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def topk_correct(logits: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    k = min(k, logits.shape[1])
    top = np.argpartition(-logits, k - 1, axis=1)[:, :k]
    return (top == labels[:, None]).any(axis=1)


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
    ref_right_engine_wrong: int | None = None   # paired counts (McNemar's discordant pairs)
    ref_wrong_engine_right: int | None = None
    classes_lost_most: list[dict] = field(default_factory=list)
    labelled: bool = False

    def to_dict(self) -> dict:
        return asdict(self)


def compare(ref: np.ndarray, got: np.ndarray, labels: np.ndarray | None = None,
            class_names: list[str] | None = None) -> DriftResult:
    ref = ref.astype(np.float64)
    got = got.astype(np.float64)
    pr, pg = _softmax(ref), _softmax(got)
    eps = 1e-12
    kl = float(np.mean(np.sum(pr * (np.log(pr + eps) - np.log(pg + eps)), axis=1)))
    cos = float(np.mean(np.sum(ref * got, 1) / (np.linalg.norm(ref, axis=1) * np.linalg.norm(got, axis=1) + eps)))
    agree = float((ref.argmax(1) == got.argmax(1)).mean() * 100)
    res = DriftResult(n=len(ref), agreement=agree, cosine=cos, kl=kl,
                      max_abs_logit_diff=float(np.abs(ref - got).max()) if len(ref) else 0.0)
    if labels is not None:
        labels = np.asarray(labels)
        r1, g1 = topk_correct(ref, labels, 1), topk_correct(got, labels, 1)
        res.labelled = True
        res.ref_top1, res.top1 = float(r1.mean() * 100), float(g1.mean() * 100)
        res.ref_top5 = float(topk_correct(ref, labels, 5).mean() * 100)
        res.top5 = float(topk_correct(got, labels, 5).mean() * 100)
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
    return res
