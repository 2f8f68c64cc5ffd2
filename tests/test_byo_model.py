"""Bring your own GhostNet: a plain state dict with a one-line (or sidecar) description of its input goes
through every command with its own preprocessing, classes and resolution."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from PIL import Image

from ghostedge.errors import GhostedgeError
from ghostedge.card import IMAGENET_MEAN, IMAGENET_STD, InputSpec, parse_preprocess
from ghostedge.checkpoint import ModelSpec, load_model

from .conftest import WNIDS, tiny_ghostnet
from .test_cli import ge

SIDE = {"input_size": 48, "resize": 56, "interpolation": "bicubic", "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}


def _plain_model(seed: int = 0, classes: int = 3) -> torch.nn.Module:
    return tiny_ghostnet(seed, classes, bn_mean=False)  # zero means: the exporter dedupes the zero biases


@pytest.fixture(scope="module")
def foreign(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A plain torch.save state dict (official key names, no metadata) with a sidecar, unnamed classes."""
    d = tmp_path_factory.mktemp("byo")
    torch.save(_plain_model().state_dict(), d / "mine.pth")
    (d / "mine.pth.json").write_text(json.dumps(SIDE))
    return d / "mine.pth"


@pytest.fixture(scope="module")
def odd_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Non-square images in wnid-named class folders (so resize and crop offsets matter)."""
    root = tmp_path_factory.mktemp("odd") / "val"
    rng = np.random.default_rng(1)
    for ci, c in enumerate(WNIDS):
        (root / c).mkdir(parents=True)
        for i in range(4):
            w, h = (71 + 9 * i, 53) if i % 2 else (50, 67 + 5 * i)
            arr = np.clip(rng.normal(60 + 60 * ci, 50, (h, w, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(arr).save(root / c / f"im{i}.png")
    return root


def _torchvision_style_inputs(root: Path) -> tuple[np.ndarray, np.ndarray]:
    """What a user's own eval code does: Resize(56, bicubic) + CenterCrop(48) + Normalize(0.5, 0.5),
    sorted class folders -> indices (torchvision ImageFolder), written out independently here."""
    xs, ys = [], []
    for ci, c in enumerate(sorted(p.name for p in root.iterdir())):
        for f in sorted((root / c).iterdir()):
            im = Image.open(f).convert("RGB")
            w, h = im.size
            short, long_ = (w, h) if w <= h else (h, w)
            new_long = int(56 * long_ / short)
            im = im.resize((56, new_long) if w <= h else (new_long, 56), Image.BICUBIC)
            a = np.asarray(im, np.float32) / 255.0
            top, left = int(round((a.shape[0] - 48) / 2.0)), int(round((a.shape[1] - 48) / 2.0))
            a = (a[top:top + 48, left:left + 48] - 0.5) / 0.5
            xs.append(a.transpose(2, 0, 1))
            ys.append(ci)
    return np.stack(xs).astype(np.float32), np.asarray(ys)


def test_sidecar_describes_a_plain_state_dict(foreign: Path):
    model, info = load_model(foreign)
    p = info.preprocess
    assert (p.input_size, p.resize, p.interpolation, p.mean, p.std) == (48, 56, "bicubic", (0.5,) * 3, (0.5,) * 3)
    assert info.classes == ["0", "1", "2"] and info.extra["described_by"] == [str(foreign) + ".json"]
    # the command line wins over the sidecar, key by key
    _, info2 = load_model(foreign, spec=ModelSpec(preprocess="size=64 norm=imagenet"))
    assert info2.preprocess.input_size == 64 and info2.preprocess.mean == IMAGENET_MEAN
    assert info2.preprocess.interpolation == "bicubic" and info2.preprocess.resize == round(64 * 56 / 48)


def test_timm_and_hugging_face_configs_are_read(tmp_path: Path):
    torch.save(_plain_model().state_dict(), tmp_path / "pytorch_model.bin")
    (tmp_path / "config.json").write_text(json.dumps({
        "architecture": "ghostnet_050", "num_classes": 3, "label_names": WNIDS,
        "pretrained_cfg": {"input_size": [3, 96, 96], "crop_pct": 0.9, "interpolation": "bilinear",
                           "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)}}))
    _, info = load_model(tmp_path / "pytorch_model.bin")
    assert info.preprocess.input_size == 96 and info.preprocess.crop_pct == 0.9
    assert info.wnids == WNIDS and info.classes[0] == "tench"   # wnids are looked up to names
    (tmp_path / "config.json").write_text(json.dumps({"id2label": {"1": "dog", "0": "fish", "2": "tape"}}))
    _, info = load_model(tmp_path / "pytorch_model.bin")
    assert info.classes == ["fish", "dog", "tape"] and info.preprocess.input_size == 224


@pytest.mark.parametrize("spec,msg", [
    ("size=16", "input size"), ("resize=40 size=48", "smaller than size"), ("std=0,1,1", "std"),
    ("interpolation=area", "interpolation"), ("mean=1,2", "three finite"), ("crop=x", "not a number"),
    ("sz=3", "KEY=VALUE"), ("norm=weird", "norm=weird"),
])
def test_bad_descriptions_name_the_field(spec: str, msg: str):
    with pytest.raises(GhostedgeError, match=msg):
        parse_preprocess(spec, InputSpec())


def test_one_line_round_trips():
    p, given = parse_preprocess("size=128 resize=146 interpolation=bilinear norm=imagenet")
    assert p.resize == 146 and given == {"input_size", "crop_pct", "interpolation", "mean", "std"}
    assert parse_preprocess(p.describe())[0] == p


def test_eval_gives_the_top1_of_the_users_own_code(foreign: Path, odd_folder: Path):
    from ghostedge.evaluate import EvalConfig, evaluate

    from ghostedge.data import labelled_set, load_images, normalize

    model, info = load_model(foreign)
    x, y = _torchvision_style_inputs(odd_folder)
    # the very pixels the user's code feeds the model (to float rounding), in the same class order
    with pytest.warns(UserWarning, match="ImageFolder convention"):
        ds = labelled_set(odd_folder, info.classes, info.wnids)
    u8, _, _ = load_images(ds.paths, info.preprocess)
    np.testing.assert_allclose(normalize(u8, info.preprocess), x, atol=1e-6)
    assert ds.labels == y.tolist()
    with torch.inference_mode():
        want = float((model(torch.from_numpy(x)).numpy().argmax(1) == y).mean() * 100)
    with pytest.warns(UserWarning, match="ImageFolder convention"):
        res = evaluate(EvalConfig(data=odd_folder, weights=foreign, threads=1))
    assert res["n"] == 12 and res["img_size"] == 48
    assert res["top1"] == pytest.approx(want, abs=0.005)
    assert res["class_folders"] == {w: i for i, w in enumerate(WNIDS)}


def test_unnamed_classes_and_a_folder_count_that_differs_ask_for_classes(foreign: Path, tmp_path: Path,
                                                                         odd_folder: Path):
    from ghostedge.evaluate import EvalConfig, evaluate

    two = tmp_path / "two"
    for c in WNIDS[:2]:
        (two / c).mkdir(parents=True)
        for f in (odd_folder / c).iterdir():
            (two / c / f.name).write_bytes(f.read_bytes())
    with pytest.raises(GhostedgeError, match="--classes"):
        evaluate(EvalConfig(data=two, weights=foreign, threads=1))
    # named through --classes (a text file), the subset evaluates by name
    names = tmp_path / "classes.txt"
    names.write_text("\n".join(WNIDS) + "\n")
    res = evaluate(EvalConfig(data=two, weights=foreign, threads=1, spec=ModelSpec(classes=names)))
    assert res["n"] == 8 and res["per_class"][0]["class"] == "tench"
    names.write_text("a\nb\n")
    with pytest.raises(GhostedgeError, match="names 2 classes, the checkpoint has 3"):
        load_model(foreign, spec=ModelSpec(classes=names))


@pytest.mark.parametrize("case", ["nan", "inf", "var_zero", "var_negative"])
def test_broken_weights_are_the_users_checkpoint(tmp_path: Path, case: str):
    sd = _plain_model().state_dict()
    key = {"nan": "blocks.3.0.conv_dw.weight", "inf": "classifier.bias", "var_zero": "bn1.running_var",
           "var_negative": "blocks.1.0.bn_dw.running_var"}[case]
    t = sd[key].clone()
    t.view(-1)[0] = {"nan": float("nan"), "inf": float("inf"), "var_zero": 0.0, "var_negative": -1.0}[case]
    sd[key] = t
    torch.save(sd, tmp_path / "bad.pth")
    r = ge("quantize", "--calib", str(tmp_path), "--weights", str(tmp_path / "bad.pth"), "--out", str(tmp_path / "e"))
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert "your checkpoint" in r.stderr and key in r.stderr and "report this" not in r.stderr
    assert not (tmp_path / "e").exists()


def test_a_batch_that_cannot_fit_is_refused_before_allocating(engines_dir: Path):
    r = ge("bench", str(engines_dir / "ghostnet.onnx"), "--batch", "200000", "--baseline", "none")
    assert r.returncode == 2 and "needs about" in r.stderr and "GiB" in r.stderr and "smaller --batch" in r.stderr
    r = ge("eval", "--data", str(engines_dir), "--batch", "99999999")
    assert r.returncode == 2 and "needs about" in r.stderr


def test_description_travels_from_quantize_to_build_and_bench(foreign: Path, odd_folder: Path, tmp_path: Path):
    eng = tmp_path / "engines"
    r = ge("quantize", "--calib", str(odd_folder), "--weights", str(foreign), "--out", str(eng), "--num-images", "8",
           "--batch", "4", "--threads", "1", "--json")
    assert r.returncode == 0, r.stderr
    rec = json.loads((eng / "ghostnet.calib.json").read_text())
    assert rec["img_size"] == 48 and rec["model"]["preprocess"]["interpolation"] == "bicubic"
    meta = {p.key: p.value for p in onnx.load(str(eng / "ghostnet.onnx")).metadata_props}
    assert json.loads(meta["preprocess"])["input_size"] == 48
    r = ge("build", "--int8", "--engines", str(eng), "--backend", "onnxruntime")
    assert r.returncode == 0, r.stderr   # the exporter's shared zero biases no longer break the CPU quantizer
    man = json.loads((eng / "ghostnet.int8.ort.onnx.json").read_text())
    assert man["model"]["preprocess"]["input_size"] == 48 and man["model"]["preprocess"]["mean"] == [0.5] * 3
    # bench: no flags needed, the engine carries the description; the baseline sees the same pixels
    r = ge("bench", str(eng / "ghostnet.int8.ort.onnx"), "--batch", "2", "--iters", "2", "--warmup", "1",
           "--eval", str(odd_folder), "--threads", "1", "--json")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["img_size"] == 48 and d["eval_img_size"] == 48 and d["engines"][0]["agreement"] is not None
    # a stage's flag that disagrees with what the engines carry is an error, not a silent re-description
    r = ge("bench", str(eng / "ghostnet.int8.ort.onnx"), "--batch", "1", "--iters", "1", "--baseline", "none",
           "--preprocess", "size=64")
    assert r.returncode == 2 and "carries 'size=48 resize=56" in r.stderr
    r = ge("build", "--int8", "--engines", str(eng), "--backend", "onnxruntime", "--preprocess", "norm=imagenet",
           "--out", str(eng / "x.onnx"))
    assert r.returncode == 2 and not (eng / "x.onnx").exists()
    # the same flag as the metadata is fine
    r = ge("build", "--fp32", "--engines", str(eng), "--backend", "onnxruntime", "--preprocess", "size=48 resize=56")
    assert r.returncode == 0, r.stderr
    # a changed description re-exports the ONNX rather than reusing the stale metadata
    r = ge("quantize", "--calib", str(odd_folder), "--weights", str(foreign), "--out", str(eng), "--num-images", "8",
           "--batch", "4", "--threads", "1", "--preprocess", "size=64")
    assert r.returncode == 0 and "exporting" in r.stderr, r.stderr
    assert json.loads((eng / "ghostnet.calib.json").read_text())["img_size"] == 64


BYO = Path(__file__).resolve().parent / "data" / "byo"
SHIPPED = sorted(BYO.glob("*.pth")) if BYO.is_dir() else []


@pytest.mark.slow
@pytest.mark.parametrize("weights", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_shipped_foreign_ghostnets_go_through_the_pipeline(weights: Path, tmp_path: Path):
    """GhostNets trained differently from the reference (width, resolution, optimizer, preprocessing), as
    plain state dicts + sidecars: pipeline end to end with no flag but --weights."""
    from .conftest import IMAGENETTE

    side = json.loads(Path(str(weights) + ".json").read_text())
    calib = IMAGENETTE / "train" if IMAGENETTE.is_dir() else Path(__file__).resolve().parents[1] / "calib"
    ev = IMAGENETTE / "val" if IMAGENETTE.is_dir() else calib
    eng = tmp_path / "engines"
    r = ge("pipeline", "--weights", str(weights), "--calib", str(calib), "--num-images", "48", "--calib-batch", "16",
           "--batch", "1,4", "--seconds", "0.2", "--eval", str(ev), "--max-eval-images", "300",
           "--engines", str(eng), "--report", str(tmp_path / "r.md"), "--json", "--threads", "2")
    assert r.returncode == 0, r.stderr[-3000:]
    d = json.loads(r.stdout)
    assert d["img_size"] == side["input_size"] and d["eval_img_size"] == side["input_size"]
    meta = {p.key: p.value for p in onnx.load(str(eng / "ghostnet.onnx")).metadata_props}
    pre = json.loads(meta["preprocess"])
    assert pre["interpolation"] == side["interpolation"] and pre["mean"] == side["mean"]
    assert round(pre["input_size"] / pre["crop_pct"]) == side["resize"]
    if IMAGENETTE.is_dir():
        if "classes" not in side:   # labels come from a labelled set only (a fresh clone evaluates on calib/)
            assert "ImageFolder convention" in r.stderr
        # the right preprocessing and class mapping: near the model's own validation top-1, far above chance
        assert d["baseline"]["top1"] > 100 * side["trained"]["val_top1"] - 8, (d["baseline"]["top1"], side)
        for e in d["engines"]:
            assert e["agreement"] > 85, e
