"""Shared fixtures: tiny models, tiny generated image folders, one tiny quantized engines/ folder."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
DATASETS = SHARED / "datasets"
IMAGENETTE = DATASETS / "imagenette"

needs_data = pytest.mark.skipif(not IMAGENETTE.is_dir(),
                                reason="../shared/datasets/imagenette is absent (a fresh clone): real-data check")


def has_cuda() -> bool:
    """Called inside tests / fixtures only, never at collection time."""
    return torch.cuda.is_available()


def has_tensorrt() -> bool:
    return importlib.util.find_spec("tensorrt") is not None


def gpu_ready() -> bool:
    return has_tensorrt() and has_cuda()


def pytest_runtest_setup(item: pytest.Item) -> None:
    """gpu / tensorrt tests skip at run time (never at collection) where no GPU with TensorRT is."""
    if ("gpu" in item.keywords or "tensorrt" in item.keywords) and not gpu_ready():
        pytest.skip("needs a CUDA GPU with TensorRT (run these on the target board)")


@pytest.fixture(scope="session", autouse=True)
def _reference_cache(tmp_path_factory: pytest.TempPathFactory):
    """The FP32 reference-logit cache of every test (and of the CLI it starts) in a temporary folder."""
    import os

    old = os.environ.get("GHOSTEDGE_CACHE_DIR")
    os.environ["GHOSTEDGE_CACHE_DIR"] = str(tmp_path_factory.mktemp("ghostedge-cache"))
    yield
    if old is None:
        os.environ.pop("GHOSTEDGE_CACHE_DIR", None)
    else:
        os.environ["GHOSTEDGE_CACHE_DIR"] = old


WNIDS = ["n01440764", "n02102040", "n02979186"]


def make_image_folder(root: Path, per_class: int = 4, size: int = 40, classes: list[str] = WNIDS,
                      seed: int = 0) -> Path:
    """ImageFolder tree of small synthetic JPEG/PNG images, one colour tendency per class."""
    rng = np.random.default_rng(seed)
    for ci, c in enumerate(classes):
        d = root / c
        d.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            base = np.zeros((size, size, 3), np.float32)
            base[..., ci % 3] = 160
            arr = np.clip(base + rng.normal(0, 40, base.shape), 0, 255).astype(np.uint8)
            ext = ".JPEG" if i % 2 == 0 else ".png"
            Image.fromarray(arr).save(d / f"img_{i}{ext}")
    return root


def tiny_ghostnet(seed: int = 0, classes: int = 3, bn_mean: bool = True) -> torch.nn.Module:
    """A random 0.5x GhostNet in eval mode with non-trivial BN statistics (running means stay 0 with
    ``bn_mean=False``, which makes the exporter dedupe the zero folded biases)."""
    from ghostedge.model import ghostnet

    torch.manual_seed(seed)
    m = ghostnet(0.5, classes)
    for mod in m.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            if bn_mean:
                mod.running_mean.uniform_(-0.2, 0.2)
            mod.running_var.uniform_(0.5, 1.5)
    return m.eval()


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 0.5x GhostNet with 3 Imagenette classes at 32 px, random weights with non-trivial BN stats."""
    from ghostedge.card import InputSpec, ModelCard
    from ghostedge.checkpoint import save_checkpoint

    m = tiny_ghostnet(0)
    info = ModelCard(width=0.5, num_classes=3, classes=["tench", "English springer", "cassette player"],
                     wnids=WNIDS, input=InputSpec(input_size=32))
    p = tmp_path_factory.mktemp("weights") / "tiny.safetensors"
    save_checkpoint(m, info, p, half=False)
    return p


@pytest.fixture(scope="session")
def image_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_image_folder(tmp_path_factory.mktemp("images") / "set", per_class=6)


@pytest.fixture(scope="session")
def engines_dir(tmp_path_factory: pytest.TempPathFactory, tiny_weights: Path, image_folder: Path) -> Path:
    """engines/ as `ghostedge quantize` leaves it, for the tiny model."""
    from ghostedge.quantize import QuantizeConfig, quantize

    out = tmp_path_factory.mktemp("engines")
    quantize(QuantizeConfig(calib=image_folder, out=out, weights=tiny_weights, num_images=12, batch=4,
                            holdout=6, threads=1))
    return out


@pytest.fixture
def engines_copy(engines_dir: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "engines"
    shutil.copytree(engines_dir, dst)
    return dst
