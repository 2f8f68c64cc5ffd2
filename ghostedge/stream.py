"""Image sets streamed through models in constant memory, and the FP32 reference logits cached per set.

Drift on an ImageNet-sized set cannot hold its images: 50,000 at 224 px are 30 GB as float32. So a set
is a list of files; a bounded pool of threads decodes the next few batches (PIL's decode and resize
release the GIL) while the current one runs through every model, and only the logits are kept (50,000 x
1,000 float32 is 200 MB). Peak memory is the models plus a few batches, whatever the number of images.

The FP32 PyTorch logits of a set depend only on the files, the weights, the preprocessing and the input
size, so they are computed once and cached under that key (``reference_cache_dir()``): a second bench of
the same set runs the engines only.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np

from .card import InputSpec, ModelCard
from .data import (
    MAX_BAD_FRACTION,
    LoadReport,
    decode_images,
    fingerprint_files,
    normalize,
)
from .errors import GhostedgeError, atomic_path

#: images per decode job (and per inference call unless the caller asks otherwise)
STREAM_BATCH = 32
REFERENCE_FORMAT = "ghostedge-reference-logits/2"


@dataclass
class ImageSet:
    """Images to stream, not decoded: their files, labels (None: unlabelled) and what to call them."""

    paths: list[Path]
    labels: np.ndarray | None
    what: str
    root: Path | None = None

    def __len__(self) -> int:
        return len(self.paths)

    def subset(self, idx: Sequence[int] | np.ndarray, what: str) -> "ImageSet":
        idx = np.asarray(idx, dtype=np.int64)
        return ImageSet([self.paths[i] for i in idx], None if self.labels is None else self.labels[idx], what,
                        self.root)


def default_workers() -> int:
    """Decode threads: one per core, at most four (more only queue behind inference)."""
    return max(1, min(4, os.cpu_count() or 1))


def decoded_batches(paths: Sequence[Path], pre: InputSpec, size: int, batch: int = STREAM_BATCH,
                    workers: int = 0, ahead: int = 0) -> Iterator[tuple[np.ndarray, list[int], LoadReport]]:
    """(normalized NCHW float32 batch, indices into paths of its images, what was skipped), in order. At most
    ``ahead`` batches (default workers + 1) are decoded or waiting at any time, so memory is bounded."""
    workers = workers or default_workers()
    ahead = ahead or workers + 1

    def job(lo: int) -> tuple[np.ndarray, list[int], LoadReport]:
        u8, kept, rep = decode_images(paths[lo:lo + batch], pre, size)
        return normalize(u8, pre), [lo + k for k in kept], rep

    starts = iter(range(0, len(paths), batch))
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="ghostedge-decode") as pool:
        pending: deque = deque()
        try:
            for lo in starts:
                pending.append(pool.submit(job, lo))
                if len(pending) >= ahead:
                    break
            while pending:
                out = pending.popleft().result()
                nxt = next(starts, None)
                if nxt is not None:
                    pending.append(pool.submit(job, nxt))
                yield out
        finally:
            for f in pending:
                f.cancel()


@dataclass
class Streamed:
    """Logits per model over the images that decoded (``kept``: their indices in the set, in order)."""

    logits: dict[str, np.ndarray]
    kept: np.ndarray
    skipped: list[tuple[str, str]]

    def labels(self, images: ImageSet) -> np.ndarray | None:
        return None if images.labels is None else images.labels[self.kept]


def stream_logits(images: ImageSet, pre: InputSpec, size: int, models: dict[str, Callable[[np.ndarray], np.ndarray]],
                  batch: int = STREAM_BATCH, progress: Callable[[int, int], None] | None = None,
                  workers: int = 0, needed: int = 1) -> Streamed:
    """Every image of the set through every model, decoding overlapped with inference; unreadable files are
    skipped and counted (an error beyond MAX_BAD_FRACTION of the set, or when fewer than needed decode)."""
    n = len(images)
    out: dict[str, np.ndarray] = {}
    kept: list[int] = []
    rep = LoadReport()
    done = 0
    for x, idx, r in decoded_batches(images.paths, pre, size, batch, workers):
        rep.ok += r.ok
        rep.bad += r.bad
        if len(rep.bad) > MAX_BAD_FRACTION * n:      # the set fails anyway: say so now, not after the last image
            rep.warn_or_fail(images.what, needed)
        if len(x):
            at = len(kept)
            for name, fn in models.items():
                lg = np.asarray(fn(x), dtype=np.float32)
                if name not in out:
                    out[name] = np.empty((n, lg.shape[1]), np.float32)
                out[name][at:at + len(x)] = lg
            kept += idx
        done += len(idx) + len(r.bad)
        if progress:
            progress(done, n)
    rep.warn_or_fail(images.what, needed)
    return Streamed({k: v[:len(kept)] for k, v in out.items()}, np.asarray(kept, np.int64), rep.bad)


# ---------------------------------------------------------------------------------------------
# FP32 reference logits, cached per set

def reference_cache_dir() -> Path:
    """$GHOSTEDGE_CACHE_DIR, else $XDG_CACHE_HOME/ghostedge, else ~/.cache/ghostedge; then reference-logits/."""
    base = os.environ.get("GHOSTEDGE_CACHE_DIR")
    if not base:
        base = str(Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "ghostedge")
    return Path(base) / "reference-logits"


def reference_key(images: ImageSet, info: ModelCard, pre: InputSpec, size: int) -> str:
    """What the FP32 logits of a set depend on: the files (names and content), the weights, the
    preprocessing, the input size and torch's version."""
    import torch

    from . import __version__

    parts = {"format": REFERENCE_FORMAT, "ghostedge": __version__,
             "files": fingerprint_files(images.paths, images.root),
             "n": len(images), "weights": info.fingerprint, "preprocess": pre.describe(), "size": size,
             "torch": ".".join(torch.__version__.split(".")[:2])}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:24]


def load_reference(key: str) -> Streamed | None:
    """The cached reference logits under key, or None (absent or unreadable: then they are recomputed)."""
    p = reference_cache_dir() / f"{key}.npz"
    if not p.is_file():
        return None
    try:
        with np.load(p, allow_pickle=False) as z:
            if str(z["format"]) != REFERENCE_FORMAT or str(z["key"]) != key:
                return None
            skipped = [tuple(s.split("\t", 1)) for s in z["skipped"].tolist()]
            return Streamed({"reference": z["logits"]}, z["kept"].astype(np.int64), skipped)
    except (OSError, ValueError, KeyError):
        return None


def store_reference(key: str, ref: Streamed) -> Path | None:
    """Cache the reference logits (written atomically); a cache that cannot be written is not an error."""
    p = reference_cache_dir() / f"{key}.npz"
    try:
        with atomic_path(p) as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, format=REFERENCE_FORMAT, key=key, logits=ref.logits["reference"], kept=ref.kept,
                         skipped=np.asarray(["\t".join(s) for s in ref.skipped], dtype=str))
    except OSError:
        return None
    return p


def _still_true(cached: Streamed, images: ImageSet, pre: InputSpec, size: int, batch: int,
                reference: Callable[[], Callable[[np.ndarray], np.ndarray]]) -> bool:
    """A cache entry is used only if the model, run again on the set's first batch, gives its logits: one
    batch of FP32 guards against an entry written by another (or a broken) version under the same key."""
    x, idx, _ = next(decoded_batches(images.paths[:batch], pre, size, batch, workers=1), (None, [], None))
    if x is None or not len(idx):
        return True
    if len(cached.kept) < len(idx) or list(cached.kept[:len(idx)]) != idx:
        return False
    got = np.asarray(reference()(x), np.float32)
    want = cached.logits["reference"][:len(idx)]
    return got.shape == want.shape and bool(np.allclose(got, want, rtol=1e-3, atol=1e-3 * (np.abs(want).max() + 1)))


def with_reference(images: ImageSet, info: ModelCard, pre: InputSpec, size: int,
                   models: dict[str, Callable[[np.ndarray], np.ndarray]],
                   reference: Callable[[], Callable[[np.ndarray], np.ndarray]] | None,
                   batch: int = STREAM_BATCH, progress: Callable[[int, int], None] | None = None,
                   use_cache: bool = True, say: Callable[[str], None] = lambda s: None,
                   needed: int = 1) -> Streamed:
    """stream_logits over models plus the FP32 reference (logits under "reference"), the reference taken from
    the cache when this set, model and preprocessing were seen before; ``reference()`` makes its callable."""
    key = reference_key(images, info, pre, size) if use_cache else None
    cached = load_reference(key) if key else None
    if reference is not None:   # the model is made at most once, for the check and for the run
        make, made = reference, []
        reference = lambda: made[0] if made else (made.append(make()) or made[0])  # noqa: E731
    if cached is not None and reference is not None and not _still_true(cached, images, pre, size, batch, reference):
        say(f"the cached FP32 reference logits of {images.what} do not match the model on its first images "
            f"(a stale or damaged cache in {reference_cache_dir()}): recomputing them")
        cached = None
    if cached is not None:
        say(f"FP32 reference logits of {images.what} from the cache ({reference_cache_dir()})")
        if not models:
            return cached
    run = dict(models)
    if cached is None and reference is not None:
        run["reference"] = reference()
    res = stream_logits(images, pre, size, run, batch, progress, needed=needed)
    if cached is not None:
        if not np.array_equal(cached.kept, res.kept):
            raise GhostedgeError(f"{images.what}: the images that decode differ from when the FP32 reference "
                                 f"was cached: delete {reference_cache_dir()} and rerun")
        res.logits["reference"] = cached.logits["reference"]
    elif key and "reference" in res.logits:
        store_reference(key, Streamed({"reference": res.logits["reference"]}, res.kept, res.skipped))
    return res
