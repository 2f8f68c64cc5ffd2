"""Images of any kind, training a tiny run, evaluation, and the bad inputs users hit."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ghostedge.data import load_image, match_classes, open_rgb, sample_images
from ghostedge.errors import GhostedgeError
from ghostedge.evaluate import EvalConfig, evaluate
from ghostedge.card import InputSpec
from ghostedge.checkpoint import load_model
from ghostedge.train import TrainConfig, train

from .conftest import IMAGENETTE, WNIDS, make_image_folder, needs_data


@pytest.mark.parametrize("mode", ["L", "LA", "P", "RGBA", "CMYK", "I;16", "I", "1"])
def test_any_pixel_mode_becomes_rgb(tmp_path: Path, mode: str):
    arr = (np.random.default_rng(0).random((20, 30)) * 255).astype(np.uint8)
    base = Image.fromarray(arr, "L")
    im = base.convert(mode) if mode != "I;16" else Image.fromarray(arr.astype(np.uint16) * 257)
    ext = ".tif" if mode in ("CMYK", "I;16", "I") else ".png"
    p = tmp_path / f"x{ext}"
    im.save(p)
    out = open_rgb(p)
    assert out.mode == "RGB" and out.size == (30, 20)
    if mode == "I;16":
        assert abs(np.asarray(out)[..., 0].astype(int) - arr.astype(int)).max() <= 1


def test_exif_orientation_is_honoured(tmp_path: Path):
    im = Image.new("RGB", (40, 20), (255, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    p = tmp_path / "rot.jpg"
    im.save(p, exif=exif)
    assert open_rgb(p).size == (20, 40)


def test_preprocess_resizes_and_center_crops(tmp_path: Path):
    p = tmp_path / "wide.png"
    Image.new("RGB", (300, 100), (10, 20, 30)).save(p)
    x = load_image(p, InputSpec(input_size=64))
    assert x.shape == (64, 64, 3) and x.dtype == np.uint8


def test_sampling_is_deterministic_and_class_balanced(tmp_path: Path):
    root = make_image_folder(tmp_path / "c", per_class=10)
    a = sample_images(root, 9, seed=3)
    assert a == sample_images(root, 9, seed=3)
    assert sorted({p.parent.name for p in a}) == sorted(WNIDS)
    assert all(sum(p.parent.name == w for p in a) == 3 for w in WNIDS)
    (root / "notes.txt").write_text("ignored")
    assert all(p.suffix.lower() in (".jpeg", ".png") for p in sample_images(root, 100))


def test_class_matching_by_wnid_or_name():
    classes, wnids = ["tench", "English springer"], ["n01440764", "n02102040"]
    assert match_classes(["n02102040", "tench"], classes, wnids) == {"n02102040": 1, "tench": 0}
    with pytest.raises(GhostedgeError, match="match no class"):
        match_classes(["n99999999"], classes, wnids)


def test_train_tiny_run_then_eval_and_resume(tmp_path: Path):
    data = tmp_path / "data"
    make_image_folder(data / "train", per_class=8, size=48, seed=1)
    make_image_folder(data / "val", per_class=3, size=48, seed=2)
    (data / "train" / WNIDS[0] / "broken.JPEG").write_bytes(b"not a jpeg")
    out = tmp_path / "run" / "m.safetensors"
    cfg = TrainConfig(data=data, out=out, width=0.5, img_size=32, epochs=2, batch=8, lr=0.01, seed=0, threads=1,
                      cache_dir=tmp_path / "cache", ema_decay=0.5)
    with pytest.warns(UserWarning, match="skipped 1 unreadable"):
        rec = train(cfg, progress=lambda s: None)
    assert len(rec["history"]) == 2 and 0 <= rec["best_val_top1"] <= 1
    model, info = load_model(out)
    assert info.wnids == WNIDS and info.classes[0] == "tench" and info.preprocess.input_size == 32
    assert info.extra["val_top1"] == pytest.approx(rec["best_val_top1"], abs=1e-4)
    assert info.extra["data_fingerprint"]
    # deterministic on CPU with a seed
    out2 = tmp_path / "run2" / "m.safetensors"
    rec2 = train(TrainConfig(**{**cfg.__dict__, "out": out2}), progress=lambda s: None)
    assert rec2["history"][-1]["loss"] == rec["history"][-1]["loss"]
    # resume continues after the last complete epoch
    cfg3 = TrainConfig(**{**cfg.__dict__, "epochs": 3, "resume": True})
    rec3 = train(cfg3, progress=lambda s: None)
    assert [h["epoch"] for h in rec3["history"]] == [1, 2, 3]
    # eval by class folder name
    res = evaluate(EvalConfig(data=data / "val", weights=out, threads=1))
    assert res["n"] == 9 and 0 <= res["top1"] <= 100 and len(res["per_class"]) == 3


@pytest.mark.parametrize("case", ["missing", "no_split", "empty_class"])
def test_train_bad_data(tmp_path: Path, case: str):
    data = tmp_path / "d"
    if case == "no_split":
        make_image_folder(data, per_class=2)
    elif case == "empty_class":
        make_image_folder(data / "train", per_class=2)
        make_image_folder(data / "val", per_class=1)
        (data / "train" / "n03000684").mkdir()
    with pytest.raises(GhostedgeError):
        train(TrainConfig(data=data, out=tmp_path / "o.safetensors", epochs=1, batch=2, img_size=32,
                          cache_dir=tmp_path / "c"), progress=lambda s: None)
    assert not (tmp_path / "o.safetensors").exists()


def test_eval_unknown_class_folder(tmp_path: Path, tiny_weights: Path):
    data = make_image_folder(tmp_path / "v", per_class=1, classes=["n01440764", "n99999999"])
    with pytest.raises(GhostedgeError, match="n99999999"):
        evaluate(EvalConfig(data=data, weights=tiny_weights))


@needs_data
@pytest.mark.data
def test_reference_model_accuracy_on_imagenette_val():
    """The README's stated figure (within 0.2 pt), on the shipped reference weights."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    import re

    stated = float(re.search(r"reference top-1 on imagenette/val: \*\*([\d.]+)%\*\*", readme).group(1))
    res = evaluate(EvalConfig(data=IMAGENETTE / "val", threads=0))
    assert res["n"] == 3925
    assert abs(res["top1"] - stated) <= 0.2, (res["top1"], stated)


def test_distill_writes_images_that_match_bn_statistics_better(tmp_path: Path, tiny_weights: Path):
    from ghostedge.distill import DistillConfig, distill

    losses = []
    meta = distill(DistillConfig(out=tmp_path / "calib", n=5, batch=4, iters=15, weights=tiny_weights, threads=1),
                   progress=lambda d, t, loss: losses.append(loss))
    files = sorted((tmp_path / "calib").glob("*.png"))
    assert len(files) == 5 and meta["n"] == 5
    assert Image.open(files[0]).size == (37, 37)  # input_size / crop_pct, so the center crop is the optimized area
    assert losses[14] < losses[0] and losses[-1] < losses[15]  # per batch, BN mismatch goes down
    assert json.loads((tmp_path / "calib" / "distill.json").read_text())["model_fingerprint"]
