"""Images in, model-ready arrays out: discovery, decoding, preprocessing, sampling, fingerprints.

One preprocessing code path serves eval, calibration, drift and training's validation, so a model
sees the same pixels whichever command feeds it.
"""

from __future__ import annotations

import hashlib
import os
import random
import warnings
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
from PIL import Image, ImageOps

from .card import InputSpec, unnamed_classes
from .errors import GhostedgeError

IMAGE_EXTS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"})
#: more than this share of unreadable images in a set is an error, not a warning
MAX_BAD_FRACTION = 0.1

_INTERP = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC, "nearest": Image.NEAREST,
           "lanczos": Image.LANCZOS}


def find_images(root: str | Path) -> list[Path]:
    """All image files under root (recursive, sorted); other files are ignored."""
    root = Path(root)
    if not root.exists():
        raise GhostedgeError(f"image folder {root} does not exist: pass a folder of images")
    if not root.is_dir():
        raise GhostedgeError(f"{root} is not a folder: pass a folder of images")
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTS and p.is_file())


def open_rgb(path: str | Path) -> Image.Image:
    """Decode any pixel mode (L, LA, P, RGBA, CMYK, I;16, ...) to RGB, honouring EXIF orientation."""
    with Image.open(path) as im:
        im.load()
        try:
            im = ImageOps.exif_transpose(im)
        except Exception:  # a broken EXIF block must not cost the image
            pass
        if im.mode in ("I;16", "I;16B", "I;16L", "I"):
            arr = np.asarray(im, dtype=np.float64)
            hi = 65535.0 if arr.max() > 255 else 255.0
            im = Image.fromarray(np.clip(arr / hi * 255.0, 0, 255).astype(np.uint8), "L")
        elif im.mode == "F":
            arr = np.asarray(im, dtype=np.float64)
            im = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "L")
        if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
            rgba = im.convert("RGBA")
            bg = Image.new("RGB", rgba.size, (255, 255, 255))
            bg.paste(rgba, mask=rgba.split()[3])
            return bg
        return im.convert("RGB")


def resize_crop(im: Image.Image, pre: InputSpec, size: int | None = None) -> Image.Image:
    """Resize the short side to size/crop_pct, then center-crop size x size.

    Pixel for pixel as torchvision's ``Resize(short) + CenterCrop(size)`` on PIL images (what timm and
    most training code use): the long side is truncated, the crop offset rounded.
    """
    size = size or pre.input_size
    scale_size = pre.resize_for(size)
    w, h = im.size
    if w <= h:
        nw, nh = scale_size, max(size, int(scale_size * h / w))
    else:
        nh, nw = scale_size, max(size, int(scale_size * w / h))
    if (nw, nh) != (w, h):
        im = im.resize((nw, nh), _INTERP[pre.interpolation])
    left, top = int(round((nw - size) / 2.0)), int(round((nh - size) / 2.0))
    return im.crop((left, top, left + size, top + size))


def normalize(batch_u8: np.ndarray, pre: InputSpec) -> np.ndarray:
    """NHWC uint8 -> NCHW float32 normalized."""
    x = batch_u8.astype(np.float32) / 255.0
    x = (x - np.asarray(pre.mean, np.float32)) / np.asarray(pre.std, np.float32)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def load_image(path: str | Path, pre: InputSpec, size: int | None = None) -> np.ndarray:
    """One image as HWC uint8 after resize and crop."""
    return np.asarray(resize_crop(open_rgb(path), pre, size), dtype=np.uint8)


@dataclass
class LoadReport:
    ok: int = 0
    bad: list[tuple[str, str]] = field(default_factory=list)

    def warn_or_fail(self, what: str, needed: int = 1, strict: bool = True) -> None:
        """Warn about unreadable images; fail below ``needed`` usable ones or (``strict``) beyond
        MAX_BAD_FRACTION unreadable."""
        total = self.ok + len(self.bad)
        if self.bad:
            warnings.warn(f"{what}: skipped {len(self.bad)} unreadable image(s) of {total} "
                          f"(first: {self.bad[0][0]}: {self.bad[0][1]})", stacklevel=2)
        if self.ok < needed:
            raise GhostedgeError(f"{what}: only {self.ok} usable image(s) of {total}, "
                                 f"{needed} needed: add readable images or lower the count asked for")
        if strict and total and len(self.bad) / total > MAX_BAD_FRACTION:
            raise GhostedgeError(f"{what}: {len(self.bad)} of {total} images are unreadable "
                                 f"(first: {self.bad[0][0]}): repair or remove them")


def decode_images(paths: Sequence[Path], pre: InputSpec, size: int | None = None) -> tuple[np.ndarray, list[int],
                                                                                          LoadReport]:
    """Decode paths to NHWC uint8; unreadable files are skipped and counted (nothing raised). Returns the
    kept indices."""
    out, kept, rep = [], [], LoadReport()
    for i, p in enumerate(paths):
        try:
            out.append(load_image(p, pre, size))
            kept.append(i)
            rep.ok += 1
        except Exception as e:  # PIL raises many types for corrupt / truncated / non-image files
            rep.bad.append((str(p), str(e).splitlines()[0] if str(e) else type(e).__name__))
    s = size or pre.input_size
    arr = np.stack(out) if out else np.zeros((0, s, s, 3), np.uint8)
    return arr, kept, rep


def load_images(paths: Sequence[Path], pre: InputSpec, size: int | None = None,
                what: str = "images", needed: int = 1, strict: bool = True
                ) -> tuple[np.ndarray, list[int], LoadReport]:
    """decode_images, then a warning for skipped files and an error below needed usable ones or (strict)
    beyond MAX_BAD_FRACTION unreadable."""
    arr, kept, rep = decode_images(paths, pre, size)
    rep.warn_or_fail(what, needed, strict)
    return arr, kept, rep


# --------------------------------------------------------------------------------------------
# Labelled folders (ImageFolder layout)

@dataclass
class LabelledSet:
    root: Path
    paths: list[Path]
    labels: list[int]           # model class indices
    folder_names: list[str]     # class folders, sorted
    folder_classes: list[int] = field(default_factory=list)   # the model class index of each folder


def class_folders(root: str | Path) -> list[Path]:
    root = Path(root)
    if not root.is_dir():
        raise GhostedgeError(f"data folder {root} does not exist or is not a folder: pass an "
                             "ImageFolder tree (<class>/<images>)")
    dirs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not dirs:
        raise GhostedgeError(f"{root} has no class subfolders: expected ImageFolder layout "
                             "<class>/<images> (e.g. imagenette/val/n01440764/*.JPEG)")
    return dirs


def _norm(name: str) -> str:
    return "".join(ch for ch in name.lower() if ch.isalnum())


def match_classes(folders: Sequence[str], classes: Sequence[str], wnids: Sequence[str],
                  root: str | Path = "") -> dict[str, int]:
    """Map class folder names to model class indices by wnid or class name.

    A model whose classes are unnamed (0..N-1, a plain state dict without a description) gets
    torchvision's ImageFolder convention when the folder count is N: sorted folder names -> indices.
    """
    if unnamed_classes(classes, wnids) and not all(f.isdigit() for f in folders):
        if len(folders) != len(classes):
            raise GhostedgeError(f"{root}: the model's {len(classes)} classes are unnamed and the folder has "
                                 f"{len(folders)} class folders, so the ImageFolder convention (sorted folder "
                                 "names -> 0..N-1) does not apply: pass --classes FILE (one name per line, "
                                 "in the model's output order)")
        order = sorted(folders)
        warnings.warn(f"the model's classes are unnamed: using the ImageFolder convention for {root or 'the set'}, "
                      f"sorted folder names -> class indices ({order[0]} -> 0 ... {order[-1]} -> "
                      f"{len(order) - 1}); pass --classes to name them otherwise", stacklevel=2)
        return {f: i for i, f in enumerate(order)}
    lookup: dict[str, int] = {}
    for i, c in enumerate(classes):
        lookup.setdefault(_norm(c), i)
    for i, w in enumerate(wnids):
        if w:
            lookup[_norm(w)] = i
    mapping, unknown = {}, []
    for f in folders:
        idx = lookup.get(_norm(f))
        if idx is None and f.isdigit() and int(f) < len(classes) and not wnids:
            idx = int(f)
        if idx is None:
            unknown.append(f)
        else:
            mapping[f] = idx
    if unknown:
        shown = ", ".join(unknown[:5]) + (" ..." if len(unknown) > 5 else "")
        known = ", ".join((list(wnids) or list(classes))[:3])
        raise GhostedgeError(f"{len(unknown)} class folder(s) match no class of the model ({shown}): "
                             f"name folders by wnid or class name (e.g. {known}), pass --classes with the "
                             "model's class names in output order, or the --weights of a model trained on "
                             "these classes")
    return mapping


def labelled_set(root: str | Path, classes: Sequence[str], wnids: Sequence[str]) -> LabelledSet:
    dirs = class_folders(root)
    mapping = match_classes([d.name for d in dirs], classes, wnids, root)
    paths, labels, empty = [], [], []
    for d in dirs:
        imgs = sorted(p for p in d.rglob("*") if p.suffix.lower() in IMAGE_EXTS and p.is_file())
        if not imgs:
            empty.append(d.name)
        paths += imgs
        labels += [mapping[d.name]] * len(imgs)
    if empty:
        raise GhostedgeError(f"class folder(s) with no images in {root}: {', '.join(empty[:5])}: add "
                             "images or remove the folder")
    return LabelledSet(Path(root), paths, labels, [d.name for d in dirs], [mapping[d.name] for d in dirs])


# --------------------------------------------------------------------------------------------
# Calibration sampling and fingerprints

def sample_images(root: str | Path, n: int, seed: int = 0) -> list[Path]:
    """n images, deterministic; class-balanced (round-robin over subfolders) when root has them."""
    files = find_images(root)
    if not files:
        raise GhostedgeError(f"no images in {root} (looked for {', '.join(sorted(IMAGE_EXTS))}): "
                             "pass a folder of calibration images")
    rng = random.Random(seed)
    groups: dict[Path, list[Path]] = defaultdict(list)
    root = Path(root)
    for f in files:
        rel = f.relative_to(root)
        groups[root / rel.parts[0] if len(rel.parts) > 1 else root].append(f)
    queues = []
    for key in sorted(groups):
        g = list(groups[key])
        rng.shuffle(g)
        queues.append(g)
    picked: list[Path] = []
    while len(picked) < min(n, len(files)):
        for q in queues:
            if q and len(picked) < n:
                picked.append(q.pop())
    return picked


def _file_digest(p: Path) -> bytes:
    h = hashlib.sha256()
    with open(p, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.digest()


def fingerprint_files(paths: Sequence[Path], root: str | Path | None = None) -> str:
    """sha256 over the sorted relative file list and each file's content (files hashed by a few threads:
    hashlib releases the GIL, so a 50,000-image set takes seconds)."""
    h = hashlib.sha256()
    base = Path(root) if root else None
    ordered = sorted(paths, key=str)
    with ThreadPoolExecutor(max_workers=min(8, (os.cpu_count() or 1) + 2)) as pool:
        for p, digest in zip(ordered, pool.map(_file_digest, ordered, chunksize=64)):
            name = str(p.relative_to(base)) if base and p.is_relative_to(base) else p.name
            h.update(name.encode())
            h.update(digest)
    return h.hexdigest()[:16]


def batches(x: np.ndarray, batch: int) -> Iterator[np.ndarray]:
    for i in range(0, len(x), batch):
        yield x[i:i + batch]
