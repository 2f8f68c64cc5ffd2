"""Top-K classes of images, with any engine ghostedge builds or a checkpoint (``ghostedge predict``).

The preprocessing is the model's own description (the engine's manifest or ONNX metadata, the checkpoint's
metadata or sidecar), applied by the same code eval uses (``data.decode_images`` -> ``data.normalize``), so
predict's top-1 is eval's. Engines run through ``bench.open_runner``, the runner bench times; a uint8-input
engine (``build --input uint8``) gets the uint8 pixels. Folders stream: their files are listed, then decoded
one batch at a time (the next batch decodes while the current one runs). An image that cannot be read is
reported on its own and the others are still classified.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np

from .backends.base import BaseRunner, logits_in_batches
from .card import ModelCard
from .checkpoint import ModelSpec
from .data import IMAGE_EXTS, decode_images, find_images
from .errors import GhostedgeError
from .input_uint8 import FLOAT32, InputFormat, check_engine_input, engine_batch, engine_format

#: checkpoint files predict runs with PyTorch (everything else is an engine)
CHECKPOINT_SUFFIXES = (".safetensors", ".pth", ".pt")


@dataclass
class PredictConfig:
    model: Path                     # an engine (.plan / .engine / .onnx / .xml) or a checkpoint
    images: list[Path]              # image files and folders (searched recursively)
    top: int = 5
    batch: int = 32
    threads: int = 0
    spec: ModelSpec | None = None   # --num-classes / --preprocess / --classes (a checkpoint's description)


@dataclass
class Prediction:
    path: str
    classes: list[str] = field(default_factory=list)       # best first
    indices: list[int] = field(default_factory=list)
    probabilities: list[float] = field(default_factory=list)
    error: str | None = None

    def to_dict(self) -> dict:
        if self.error is not None:
            return {"path": self.path, "error": self.error}
        return {"path": self.path, "top": [{"class": c, "index": i, "probability": round(p, 6)} for c, i, p in
                                           zip(self.classes, self.indices, self.probabilities)]}


@dataclass
class PredictSummary:
    model: str
    backend: str
    precision: str
    input: InputFormat
    preprocess: str
    img_size: int
    classified: int = 0
    failed: int = 0

    def to_dict(self) -> dict:
        return {"model": self.model, "backend": self.backend, "precision": self.precision,
                "input": self.input.to_dict(), "preprocess": self.preprocess, "img_size": self.img_size,
                "classified": self.classified, "failed": self.failed}


@dataclass
class Opened:
    runner: BaseRunner
    info: ModelCard
    fmt: InputFormat
    size: int


def open_model(path: Path, threads: int = 0, spec: ModelSpec | None = None) -> Opened:
    """The runner and description of an engine or a checkpoint."""
    path = Path(path)
    if path.suffix.lower() in CHECKPOINT_SUFFIXES:
        from .backends.torch import TorchRunner
        from .checkpoint import load_model

        model, info = load_model(path, spec=spec)
        return Opened(TorchRunner(model, name=path.name, threads=threads), info, FLOAT32, info.input.input_size)
    from .backends.registry import backend_for_path
    from .bench import open_runner
    from .card import read_onnx_card
    from .checkpoint import check_against

    runner, man = open_runner(path, threads)
    info = None
    if man and man.get("model"):
        info = ModelCard.from_dict(man["model"])
    elif backend_for_path(path).onnx_engine:
        info = read_onnx_card(path)
    if info is None:
        raise GhostedgeError(f"{path} carries no model description (classes, preprocessing) and has no ghostedge "
                             "manifest: predict with an engine from ghostedge build, or with the checkpoint")
    check_against(info, spec, path.name)
    size = int((man or {}).get("img_size") or info.input.input_size)
    return Opened(runner, info, engine_format(path, man), size)


def image_paths(inputs: Iterable[Path]) -> Iterator[Path]:
    """Each input file as it is, each folder's images (recursive, sorted); a missing path is yielded too (it
    then fails on its own line)."""
    for p in inputs:
        p = Path(p)
        if p.is_dir():
            found = find_images(p)
            if not found:
                raise GhostedgeError(f"no images in {p} (looked for {', '.join(sorted(IMAGE_EXTS))}): pass image "
                                     "files or a folder of images")
            yield from found
        else:
            yield p


def _chunks(paths: Iterator[Path], n: int) -> Iterator[list[Path]]:
    chunk: list[Path] = []
    for p in paths:
        chunk.append(p)
        if len(chunk) == n:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def top_k(logits: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(indices, probabilities) of the k best classes per row, best first (ties: lower index first, as argmax)."""
    p = softmax(logits)
    idx = np.argsort(-logits, axis=1, kind="stable")[:, :k]
    return idx, np.take_along_axis(p, idx, axis=1)


def predict(cfg: PredictConfig, emit: Callable[[Prediction], None]) -> PredictSummary:
    """Classify every image, calling ``emit`` once per image in input order; returns the counts."""
    if cfg.top < 1:
        raise GhostedgeError("--top must be at least 1")
    if cfg.batch < 1:
        raise GhostedgeError("--batch must be at least 1")
    if not cfg.images:
        raise GhostedgeError("no images given: pass image files or folders")
    om = open_model(cfg.model, cfg.threads, cfg.spec)
    info, pre = om.info, om.info.input
    k = min(cfg.top, info.num_classes)
    summary = PredictSummary(str(cfg.model), om.runner.backend, om.runner.precision, om.fmt, pre.describe(),
                             om.size)

    def decode(chunk: list[Path]):  # noqa: ANN202
        u8, kept, rep = decode_images(chunk, pre, om.size)
        return chunk, u8, kept, dict(rep.bad)

    with om.runner as runner, ThreadPoolExecutor(max_workers=1, thread_name_prefix="ghostedge-decode") as pool:
        check_engine_input(runner, om.fmt, Path(cfg.model).name)
        chunks = _chunks(image_paths(cfg.images), cfg.batch)
        pending = [pool.submit(decode, c) for c in [next(chunks, None)] if c is not None]
        while pending:
            chunk, u8, kept, bad = pending.pop().result()
            nxt = next(chunks, None)
            if nxt is not None:
                pending.append(pool.submit(decode, nxt))   # decodes while this batch runs
            idx = prob = None
            if kept:
                idx, prob = top_k(logits_in_batches(runner, engine_batch(u8, pre, om.fmt), cfg.batch), k)
            row = {j: r for r, j in enumerate(kept)}
            for j, p in enumerate(chunk):
                if j in row:
                    r = row[j]
                    emit(Prediction(str(p), [info.classes[c] for c in idx[r]], [int(c) for c in idx[r]],
                                    [float(v) for v in prob[r]]))
                    summary.classified += 1
                else:
                    why = bad.get(str(p), "unreadable")
                    emit(Prediction(str(p), error=("not found" if not p.exists() else f"cannot read it as an "
                                                   f"image: {why}")))
                    summary.failed += 1
    return summary
