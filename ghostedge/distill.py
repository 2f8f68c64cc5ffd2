"""Data-free calibration images (ZeroQ-style): optimize inputs so that every BatchNorm layer's batch
statistics match its running statistics, so a fresh clone can quantize without any dataset.

A small cross-entropy term towards round-robin target classes (as in DeepInversion) keeps the set
spread over the classes. Images are saved as PNG at input_size / crop_pct, so the model's own
preprocessing (resize + center crop) sees the optimized pixels unchanged in the center.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

from .checkpoint import ModelSpec, load_model
from .errors import GhostedgeError, atomic_path, write_text_atomic
from .resources import check_batch
from .state import seeded, torch_threads


@dataclass
class DistillConfig:
    out: Path = Path("calib")
    n: int = 128
    batch: int = 32
    iters: int = 200
    lr: float = 0.1
    class_weight: float = 0.05
    seed: int = 0
    weights: Path | None = None
    threads: int = 0
    spec: ModelSpec | None = None


def distill(cfg: DistillConfig, progress: Callable[[int, int, float], None] | None = None) -> dict:
    if cfg.n < 1 or cfg.batch < 1 or cfg.iters < 1:
        raise GhostedgeError("--n, --batch and --iters must be at least 1")
    if cfg.out.exists() and not cfg.out.is_dir():
        raise GhostedgeError(f"--out {cfg.out} exists and is not a folder: pass a folder")
    with torch_threads(cfg.threads), seeded(cfg.seed):
        return _distill(cfg, progress)


def _distill(cfg: DistillConfig, progress: Callable[[int, int, float], None] | None) -> dict:
    model, info = load_model(cfg.weights, spec=cfg.spec)
    model.eval()
    pre = info.input
    size = pre.resize
    check_batch(cfg.batch * 3, size, info.width)  # forward + backward through the input
    mean = torch.tensor(pre.mean).view(1, 3, 1, 1)
    std = torch.tensor(pre.std).view(1, 3, 1, 1)
    lo, hi = (0 - mean) / std, (1 - mean) / std

    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    stats: list[tuple[torch.Tensor, torch.Tensor]] = []

    def hook(mod: nn.BatchNorm2d, inp: tuple[torch.Tensor]) -> None:
        x = inp[0]
        stats.append((x.mean(dim=(0, 2, 3)), x.var(dim=(0, 2, 3), unbiased=False)))

    handles = [b.register_forward_pre_hook(hook) for b in bns]
    for p in model.parameters():
        p.requires_grad_(False)
    t0 = time.time()
    images: list[np.ndarray] = []
    n_batches = (cfg.n + cfg.batch - 1) // cfg.batch
    try:
        for bi in range(n_batches):
            nb = min(cfg.batch, cfg.n - bi * cfg.batch)
            x = torch.randn(nb, 3, size, size, requires_grad=True)
            targets = torch.arange(bi * cfg.batch, bi * cfg.batch + nb) % info.num_classes
            opt = torch.optim.Adam([x], lr=cfg.lr)
            sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, cfg.iters)
            for it in range(cfg.iters):
                stats.clear()
                logits = model(x)
                loss_bn = sum(torch.norm(m - b.running_mean, 2) + torch.norm(v - b.running_var, 2)
                              for (m, v), b in zip(stats, bns))
                loss = loss_bn + cfg.class_weight * F.cross_entropy(logits, targets)
                opt.zero_grad()
                loss.backward()
                opt.step()
                sched.step()
                with torch.no_grad():
                    x.data = torch.max(torch.min(x.data, hi), lo)
                if progress:
                    progress(bi * cfg.iters + it + 1, n_batches * cfg.iters, loss_bn.item())
            with torch.no_grad():
                u8 = ((x * std + mean).clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).numpy()
            images += list(u8)
    finally:
        for h in handles:
            h.remove()
    cfg.out.mkdir(parents=True, exist_ok=True)
    for i, im in enumerate(images):
        with atomic_path(cfg.out / f"distilled_{i:04d}.png") as tmp:
            Image.fromarray(im).save(tmp, format="PNG")
    meta = {"method": "ZeroQ BatchNorm-statistics matching + DeepInversion class term",
            "model_fingerprint": info.fingerprint, "weights": info.source, "n": len(images),
            "size": size, "iters": cfg.iters, "lr": cfg.lr, "class_weight": cfg.class_weight,
            "seed": cfg.seed, "seconds": round(time.time() - t0, 1)}
    write_text_atomic(cfg.out / "distill.json", json.dumps(meta, indent=1))
    return meta
