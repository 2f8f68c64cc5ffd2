"""Train (or fine-tune) GhostNet on an ImageFolder tree, fast on a small CPU.

JPEGs are decoded once and cached as uint8 arrays; augmentation (random-resized crop + flip) runs
batched on tensors with one ``grid_sample``; weights are averaged (EMA) and the EMA model is what is
validated and saved. ``--resume`` continues from the last complete epoch.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shlex
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from .card import InputSpec, ModelCard, parse_preprocess
from .checkpoint import imagenet_classes, read_checkpoint, save_checkpoint
from .data import LabelledSet, class_folders, labelled_set, load_images, normalize
from .errors import GhostedgeError, SettingError, atomic_path
from .model import GhostNet, architecture
from .modes import Optimizer, Schedule
from .state import seeded, torch_threads


@dataclass
class TrainConfig:
    data: Path
    out: Path = Path("runs/ghostnet.safetensors")
    width: float = 1.0
    arch: str = "ghostnet"           # a family of model.ARCHITECTURES
    img_size: int = 128
    eval_img_size: int | None = None  # native (deployment) resolution; default img_size
    epochs: int = 30
    batch: int = 64
    lr: float = 2e-3
    weight_decay: float = 0.05
    optimizer: Optimizer = Optimizer.adamw
    momentum: float = 0.9            # sgd only
    preprocess: str = ""             # one-line description (mean/std/interpolation/crop), see parse_preprocess
    warmup_epochs: float = 2.0
    schedule: Schedule = Schedule.cosine
    label_smoothing: float = 0.1
    min_scale: float = 0.25          # random-resized-crop scale lower bound (augmentation strength)
    ema_decay: float = 0.999
    seed: int = 0
    threads: int = 0                 # 0 = all cores
    weights: Path | None = None      # fine-tune from this checkpoint (classifier replaced)
    keep_classifier: bool = False    # ... keeping its classifier (same classes, same order)
    resume: bool = False
    cache_dir: Path | None = None
    max_train_images: int = 0        # 0 = all (tiny runs for tests)


def _cache_key(paths: list[Path], size: int, crop_pct: float, interpolation: str = "bilinear") -> str:
    h = hashlib.sha256(f"{size}:{crop_pct}".encode() + (b"" if interpolation == "bilinear" else interpolation.encode()))
    for p in paths:
        st = p.stat()
        h.update(f"{p}:{st.st_size}:{int(st.st_mtime)}".encode())
    return h.hexdigest()[:20]


def cached_arrays(ds: LabelledSet, pre: InputSpec, size: int, cache_dir: Path | None,
                  what: str) -> tuple[np.ndarray, np.ndarray]:
    """Decode (or load the cached decode of) a labelled set to NHWC uint8 + labels."""
    cache_dir = cache_dir or Path(os.environ.get("GHOSTEDGE_CACHE", Path.home() / ".cache" / "ghostedge"))
    key = _cache_key(ds.paths, size, pre.crop_pct, pre.interpolation)
    f = cache_dir / f"{what}-{key}.npz"
    if f.is_file():
        with np.load(f) as z:
            return z["x"], z["y"]
    x, kept, _ = load_images(ds.paths, pre, size, what=f"{what} images in {ds.root}")
    y = np.asarray([ds.labels[i] for i in kept], np.int64)
    try:
        with atomic_path(f) as tmp:
            with open(tmp, "wb") as fh:
                np.savez(fh, x=x, y=y)
    except OSError:
        pass  # a read-only cache location only costs speed
    return x, y


def _augment(xb: torch.Tensor, size: int, min_scale: float, gen: torch.Generator) -> torch.Tensor:
    """Random-resized crop (scale, 3/4..4/3 aspect) and horizontal flip, batched via grid_sample."""
    n = xb.shape[0]
    area = torch.empty(n).uniform_(min_scale, 1.0, generator=gen)
    logr = torch.empty(n).uniform_(math.log(3 / 4), math.log(4 / 3), generator=gen)
    ratio = torch.exp(logr)
    sw = torch.sqrt(area * ratio).clamp(max=1.0)
    sh = torch.sqrt(area / ratio).clamp(max=1.0)
    cx = (torch.rand(n, generator=gen) * 2 - 1) * (1 - sw)
    cy = (torch.rand(n, generator=gen) * 2 - 1) * (1 - sh)
    flip = torch.where(torch.rand(n, generator=gen) < 0.5, -1.0, 1.0)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = sw * flip
    theta[:, 0, 2] = cx
    theta[:, 1, 1] = sh
    theta[:, 1, 2] = cy
    grid = F.affine_grid(theta, [n, 3, size, size], align_corners=False)
    return F.grid_sample(xb, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def _to_input(x_u8: np.ndarray, pre: InputSpec) -> torch.Tensor:
    return torch.from_numpy(normalize(x_u8, pre))


def evaluate_arrays(model: torch.nn.Module, x: np.ndarray, y: np.ndarray, pre: InputSpec,
                    batch: int = 128) -> float:
    model.eval()
    correct = 0
    with torch.inference_mode():
        for i in range(0, len(x), batch):
            xb = _to_input(x[i:i + batch], pre).contiguous(memory_format=torch.channels_last)
            correct += int((model(xb).argmax(1).numpy() == y[i:i + batch]).sum())
    return correct / max(1, len(x))


def _lr_at(cfg: TrainConfig, step: float, steps_per_epoch: int) -> float:
    e = step / steps_per_epoch
    if e < cfg.warmup_epochs:
        return cfg.lr * (e + 1 / steps_per_epoch) / cfg.warmup_epochs
    if cfg.schedule == "constant":
        return cfg.lr
    if cfg.schedule == "step":
        return cfg.lr * (0.1 ** int(3 * e / cfg.epochs))
    t = (e - cfg.warmup_epochs) / max(1e-9, cfg.epochs - cfg.warmup_epochs)
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))


def train(cfg: TrainConfig, progress: Callable[[str], None] | None = None) -> dict:
    """Train and save the best (by EMA val top-1) checkpoint to cfg.out. Returns the training record."""
    say = progress or (lambda s: print(s, file=sys.stderr, flush=True))
    root = Path(cfg.data)
    train_dir, val_dir = root / "train", root / "val"
    if not root.is_dir():
        raise GhostedgeError(f"training data {root} does not exist: pass an ImageFolder tree with "
                             "train/<class>/ and val/<class>/")
    if not train_dir.is_dir() or not val_dir.is_dir():
        raise GhostedgeError(f"{root} needs train/ and val/ subfolders (ImageFolder layout, e.g. "
                             "imagenette/train/n01440764/*.JPEG)")
    if cfg.epochs < 1 or cfg.batch < 1 or cfg.img_size < 32 or cfg.lr <= 0:
        raise GhostedgeError("epochs, batch, lr must be positive and img-size at least 32")
    if cfg.optimizer not in tuple(Optimizer):
        raise SettingError("optimizer", f"{{optimizer}} {cfg.optimizer!r}: use adamw or sgd")
    if cfg.schedule not in tuple(Schedule):
        raise SettingError("schedule", f"{{schedule}} {cfg.schedule!r}: use cosine, step or constant")
    with torch_threads(cfg.threads), seeded(cfg.seed, deterministic=True):
        return _train(cfg, say, root, train_dir, val_dir, torch.Generator().manual_seed(cfg.seed))


def _train(cfg: TrainConfig, say: Callable[[str], None], root: Path, train_dir: Path, val_dir: Path,
           gen: torch.Generator) -> dict:
    """train()'s body, run with the thread count and seeds set (and restored afterwards)."""
    folders = [d.name for d in class_folders(train_dir)]
    names_1k, wnids_1k = imagenet_classes()
    wn = {w: n for w, n in zip(wnids_1k, names_1k)}
    classes = [wn.get(f, f) for f in folders]
    wnids = [f if f in wn else "" for f in folders]
    tr = labelled_set(train_dir, folders, [])
    va = labelled_set(val_dir, folders, [])
    pre, _ = parse_preprocess(cfg.preprocess, InputSpec(input_size=cfg.eval_img_size or cfg.img_size))
    if pre.input_size != (cfg.eval_img_size or cfg.img_size):
        raise GhostedgeError("--preprocess size= conflicts with --img-size / --eval-img-size: give the size once")
    store = pre.resize_for(cfg.img_size)
    t0 = time.time()
    xtr, ytr = cached_arrays(tr, InputSpec(input_size=store, crop_pct=1.0, interpolation=pre.interpolation), store,
                             cfg.cache_dir, "train")
    xva, yva = cached_arrays(va, pre, pre.input_size, cfg.cache_dir, "val")
    if cfg.max_train_images and cfg.max_train_images < len(xtr):
        # a seeded random subset: the decoded set is in class order, so a prefix would hold the first classes only
        keep = np.sort(np.random.default_rng(cfg.seed).permutation(len(xtr))[:cfg.max_train_images])
        xtr, ytr = xtr[keep], ytr[keep]
    if len(xtr) < cfg.batch:
        raise GhostedgeError(f"only {len(xtr)} training images, fewer than --batch {cfg.batch}: "
                             "lower --batch or add images")
    say(f"data: {len(xtr)} train / {len(xva)} val images, {len(folders)} classes, "
        f"decoded in {time.time() - t0:.0f}s")

    arch = architecture(cfg.arch)
    if min(cfg.img_size, pre.input_size) < arch.min_input:
        raise GhostedgeError(f"{cfg.arch} needs inputs of at least {arch.min_input} px: raise the training / "
                             "evaluation size")
    model: GhostNet = arch.build(cfg.width, len(folders), 0.2)
    source = "random init"
    if cfg.weights:
        sd, _ = read_checkpoint(cfg.weights)
        sd = {k: v.float() for k, v in arch.filter_state_dict(sd).items()
              if cfg.keep_classifier or not k.startswith("classifier.")}
        missing, unexpected = model.load_state_dict(sd, strict=False)
        bad = [k for k in missing if cfg.keep_classifier or not k.startswith("classifier.")] + list(unexpected)
        if bad:
            raise GhostedgeError(f"{cfg.weights} does not fit {cfg.arch} {cfg.width}x ({', '.join(bad[:4])}): "
                                 "pass the matching --width")
        source = f"fine-tuned from {Path(cfg.weights).name}"
    model = model.to(memory_format=torch.channels_last)
    ema = torch.optim.swa_utils.AveragedModel(
        model, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(cfg.ema_decay), use_buffers=True)
    decay, no_decay = [], []
    for n_, p in model.named_parameters():
        (no_decay if p.ndim <= 1 else decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    opt = torch.optim.AdamW(groups, lr=cfg.lr) if cfg.optimizer == "adamw" else \
        torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.momentum > 0)
    steps_per_epoch = len(xtr) // cfg.batch
    state_path = Path(str(cfg.out) + ".last.pt")
    start_epoch, best, history = 0, -1.0, []
    if cfg.resume:
        if not state_path.is_file():
            raise GhostedgeError(f"--resume: no training state at {state_path}: start without --resume")
        st = torch.load(state_path, map_location="cpu", weights_only=True)
        model.load_state_dict(st["model"])
        ema.load_state_dict(st["ema"])
        opt.load_state_dict(st["opt"])
        start_epoch, best, history = st["epoch"], st["best"], json.loads(st["history"])
        gen.set_state(st["gen"])
        say(f"resumed after epoch {start_epoch} (best val top-1 {best:.4f})")

    command = "ghostedge " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv else ""
    info = ModelCard(family=cfg.arch, width=cfg.width, num_classes=len(folders), classes=classes, wnids=wnids,
                     input=pre, source=str(cfg.out))
    t_start = time.time()
    for epoch in range(start_epoch, cfg.epochs):
        model.train()
        perm = torch.randperm(len(xtr), generator=gen).numpy()
        t_ep, seen, loss_sum = time.time(), 0, 0.0
        for it in range(steps_per_epoch):
            idx = np.sort(perm[it * cfg.batch:(it + 1) * cfg.batch])
            xb = torch.from_numpy(xtr[idx]).permute(0, 3, 1, 2).float().div_(255.0)
            xb = _augment(xb, cfg.img_size, cfg.min_scale, gen)
            mean = torch.tensor(pre.mean).view(1, 3, 1, 1)
            std = torch.tensor(pre.std).view(1, 3, 1, 1)
            xb = ((xb - mean) / std).contiguous(memory_format=torch.channels_last)
            yb = torch.from_numpy(ytr[idx])
            for g in opt.param_groups:
                g["lr"] = _lr_at(cfg, epoch * steps_per_epoch + it, steps_per_epoch)
            loss = F.cross_entropy(model(xb), yb, label_smoothing=cfg.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            ema.update_parameters(model)
            seen += len(idx)
            loss_sum += loss.item() * len(idx)
            if it % 20 == 0 or it == steps_per_epoch - 1:
                rate = seen / max(1e-9, time.time() - t_ep)
                left = (steps_per_epoch - it - 1) * cfg.batch / rate + \
                    (cfg.epochs - epoch - 1) * len(xtr) / rate
                say(f"epoch {epoch + 1}/{cfg.epochs} step {it + 1}/{steps_per_epoch} "
                    f"loss {loss_sum / seen:.3f} {rate:.0f} img/s eta {left / 60:.1f} min")
        # best-checkpoint rule: the higher val top-1 of the EMA and the raw weights, over all epochs
        # (the EMA lags badly early in a short from-scratch run, and wins once the LR has decayed)
        top1_ema = evaluate_arrays(ema.module, xva, yva, pre)
        top1_raw = evaluate_arrays(model, xva, yva, pre)
        top1, which = (top1_ema, "ema") if top1_ema >= top1_raw else (top1_raw, "raw")
        history.append({"epoch": epoch + 1, "loss": round(loss_sum / seen, 4), "val_top1_ema": round(top1_ema, 4),
                        "val_top1_raw": round(top1_raw, 4), "seconds": round(time.time() - t_ep, 1)})
        say(f"epoch {epoch + 1}: train loss {loss_sum / seen:.3f}, val top-1 EMA {top1_ema * 100:.2f}% / "
            f"raw {top1_raw * 100:.2f}%{' (best)' if top1 > best else ''}")
        if top1 > best:
            best = top1
            info.extra = {"val_top1": round(top1, 4), "epoch": epoch + 1, "weights": which, "init": source, "train_config": _jsonable(cfg),
                          "command": command, "data_fingerprint": _cache_key(tr.paths + va.paths, 0, 0),
                          "train_seconds": round(time.time() - t_start, 1)}
            save_checkpoint(ema.module if which == "ema" else model, info, cfg.out, half=False)
        with atomic_path(state_path) as tmp:
            torch.save({"model": model.state_dict(), "ema": ema.state_dict(), "opt": opt.state_dict(),
                        "epoch": epoch + 1, "best": best, "history": json.dumps(history),
                        "gen": gen.get_state()}, tmp)
    return {"best_val_top1": best, "history": history, "out": str(cfg.out),
            "seconds": round(time.time() - t_start, 1)}


def _jsonable(cfg: TrainConfig) -> dict:
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()}
