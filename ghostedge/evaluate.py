"""Accuracy of a checkpoint on an ImageFolder set: top-1, top-5, per class, and what gets confused."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from .backends.torch import torch_logits
from .data import labelled_set, load_images, normalize
from .drift import accuracy
from .errors import GhostedgeError
from .checkpoint import ModelSpec, load_model
from .resources import check_batch
from .state import torch_threads


@dataclass
class EvalConfig:
    data: Path
    weights: Path | None = None
    num_classes: int | None = None
    batch: int = 64
    img_size: int | None = None
    threads: int = 0
    spec: ModelSpec | None = None


def evaluate(cfg: EvalConfig, progress: Callable[[int, int], None] | None = None) -> dict:
    with torch_threads(cfg.threads):
        return _evaluate(cfg, progress)


def _evaluate(cfg: EvalConfig, progress: Callable[[int, int], None] | None) -> dict:
    if cfg.batch < 1:
        raise GhostedgeError("--batch must be at least 1")
    model, info = load_model(cfg.weights, cfg.num_classes, spec=cfg.spec)
    size = cfg.img_size or info.input.input_size
    if size < 32:
        raise GhostedgeError(f"--img-size {size} is too small: GhostNet downsamples 32x, use >= 32")
    check_batch(cfg.batch, size, info.width)
    ds = labelled_set(cfg.data, info.classes, info.wnids)
    logits, labels = [], []
    chunk = 256
    for i in range(0, len(ds.paths), chunk):
        u8, kept, _ = load_images(ds.paths[i:i + chunk], info.input, size, what=f"images in {cfg.data}")
        logits.append(torch_logits(model, normalize(u8, info.input), cfg.batch))
        labels += [ds.labels[i + k] for k in kept]
        if progress:
            progress(min(i + chunk, len(ds.paths)), len(ds.paths))
    lg = np.concatenate(logits)
    y = np.asarray(labels)
    acc = accuracy(lg, y)
    pred = lg.argmax(1)
    per_class, confusions = [], []
    for c in np.unique(y):
        sel = y == c
        wrong = pred[sel][pred[sel] != c]
        top_wrong = np.bincount(wrong, minlength=info.num_classes).argmax() if len(wrong) else None
        per_class.append({"class": info.classes[c], "wnid": info.wnids[c] if info.wnids else None,
                          "n": int(sel.sum()), "top1": round(float((pred[sel] == c).mean() * 100), 2),
                          "most_confused_with": info.classes[top_wrong] if top_wrong is not None else None})
    pairs: dict[tuple[int, int], int] = {}
    for t, p in zip(y, pred):
        if t != p:
            pairs[(int(t), int(p))] = pairs.get((int(t), int(p)), 0) + 1
    for (t, p), n in sorted(pairs.items(), key=lambda kv: -kv[1])[:10]:
        confusions.append({"true": info.classes[t], "predicted": info.classes[p], "count": n})
    return {"data": str(cfg.data), "weights": info.source, "fingerprint": info.fingerprint, "img_size": size,
            "preprocess": info.input.describe(), "class_folders": dict(zip(ds.folder_names, ds.folder_classes)),
            "n": acc.n, "top1": round(acc.top1, 2), "top5": round(acc.top5, 2), "per_class": per_class,
            "top_confusions": confusions, "skipped": len(ds.paths) - acc.n}
