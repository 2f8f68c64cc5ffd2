"""``ghostedge predict``: top-K per image with engines and checkpoints, eval's preprocessing, streamed folders."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from ghostedge.errors import GhostedgeError
from ghostedge.predict import PredictConfig, Prediction, predict, top_k

from .conftest import IMAGENETTE, needs_data
from .test_cli import ge


def _run(model: Path, images: list[Path], **kw) -> tuple[list[Prediction], object]:
    got: list[Prediction] = []
    s = predict(PredictConfig(model=model, images=images, threads=1, **kw), got.append)
    return got, s


def test_checkpoint_and_its_onnx_engine_give_the_same_classes(tiny_weights: Path, engines_dir: Path,
                                                              image_folder: Path):
    a, sa = _run(tiny_weights, [image_folder], top=2, batch=5)
    b, sb = _run(engines_dir / "ghostnet.onnx", [image_folder], top=2, batch=5)
    assert sa.classified == sb.classified == 18 and sa.failed == sb.failed == 0
    assert sa.backend == "torch" and sb.backend == "onnxruntime"
    assert [p.path for p in a] == [p.path for p in b]            # input order, folders sorted
    assert [p.indices for p in a] == [p.indices for p in b]
    for p, q in zip(a, b):
        assert len(p.classes) == 2 and p.probabilities[0] >= p.probabilities[1] > 0
        np.testing.assert_allclose(p.probabilities, q.probabilities, atol=1e-4)
        assert p.classes[0] in ("tench", "English springer", "cassette player")


def test_top_k_is_softmax_ordered_and_ties_go_to_the_lower_index():
    lg = np.array([[1.0, 3.0, 3.0, -2.0]], np.float32)
    idx, p = top_k(lg, 3)
    assert idx.tolist() == [[1, 2, 0]] and lg.argmax(1).tolist() == [1]
    e = np.exp(lg[0] - 3.0)
    np.testing.assert_allclose(p[0], e[[1, 2, 0]] / e.sum(), rtol=1e-6)


def test_unreadable_images_are_reported_one_by_one_and_the_rest_classified(tiny_weights: Path, image_folder: Path,
                                                                           tmp_path: Path):
    d = tmp_path / "mixed"
    shutil.copytree(image_folder / "n01440764", d)
    (d / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (d / "empty.png").write_bytes(b"")
    res = ge("predict", str(tiny_weights), str(d), str(tmp_path / "missing.jpg"), "--top", "1")
    assert res.returncode == 1
    ok = [x for x in res.stdout.splitlines() if x.strip()]
    assert len(ok) == 6 and all(":" in x for x in ok)
    err = res.stderr
    assert "broken.jpg: cannot read it as an image" in err and "empty.png: cannot read it as an image" in err
    assert "missing.jpg: not found" in err and "3 of 9 image(s) could not be read" in err
    assert "Traceback" not in err
    js = ge("predict", str(tiny_weights), str(d), "--json", "--top", "2")
    assert js.returncode == 1
    doc = json.loads(js.stdout)
    assert doc["classified"] == 6 and doc["failed"] == 2 and len(doc["predictions"]) == 8
    bad = [p for p in doc["predictions"] if "error" in p]
    assert {Path(p["path"]).name for p in bad} == {"broken.jpg", "empty.png"}
    good = [p for p in doc["predictions"] if "top" in p]
    assert all(len(p["top"]) == 2 and set(p["top"][0]) == {"class", "index", "probability"} for p in good)


def test_a_folder_streams_in_batches(tiny_weights: Path, image_folder: Path, monkeypatch: pytest.MonkeyPatch):
    import ghostedge.predict as pr

    sizes: list[int] = []
    real = pr.decode_images

    def spy(paths, pre, size=None):  # noqa: ANN001
        sizes.append(len(paths))
        return real(paths, pre, size)

    monkeypatch.setattr(pr, "decode_images", spy)
    got, s = _run(tiny_weights, [image_folder], batch=4)
    assert s.classified == 18 and sizes == [4, 4, 4, 4, 2]     # never the whole folder at once
    assert len(got) == 18


def test_predict_errors_are_clear(tiny_weights: Path, engines_dir: Path, tmp_path: Path, image_folder: Path):
    img = next(image_folder.rglob("*.png"))
    with pytest.raises(GhostedgeError, match="--top must be at least 1"):
        _run(tiny_weights, [img], top=0)
    empty = tmp_path / "none"
    empty.mkdir()
    with pytest.raises(GhostedgeError, match="no images in"):
        _run(tiny_weights, [empty])
    foreign = tmp_path / "foreign.onnx"
    import onnx

    m = onnx.load(str(engines_dir / "ghostnet.onnx"))
    del m.metadata_props[:]
    onnx.save(m, str(foreign))
    with pytest.raises(GhostedgeError, match="carries no model description"):
        _run(foreign, [img])
    # a TensorRT plan goes through bench's runner, which explains why it cannot run here
    plan = tmp_path / "g.plan"
    plan.write_bytes(b"plan")
    res = ge("predict", str(plan), str(img))
    assert res.returncode == 2 and "manifest" in res.stderr and "Traceback" not in res.stderr
    big, _ = _run(tiny_weights, [img], top=50)   # more than the model has: all of its classes
    assert len(big[0].classes) == 3


# ---------------------------------------------------------------------------------------------
# real data: predict's top-1 is eval's on every val image

def _eval_top1(weights: Path | None, monkeypatch: pytest.MonkeyPatch) -> np.ndarray:
    """eval's own per-image top-1 over imagenette/val (its logits, as evaluate passes them to accuracy)."""
    import ghostedge.evaluate as ev

    seen = []
    real = ev.accuracy
    monkeypatch.setattr(ev, "accuracy", lambda lg, y: seen.append(lg) or real(lg, y))
    res = ev.evaluate(ev.EvalConfig(IMAGENETTE / "val", weights, threads=2, batch=64))
    assert res["skipped"] == 0
    return seen[0].argmax(1)


def _val_paths() -> list[str]:
    """The val images in eval's order (class folders sorted, then files sorted)."""
    dirs = sorted(d for d in (IMAGENETTE / "val").iterdir() if d.is_dir())
    return [str(p) for d in dirs for p in sorted(q for q in d.rglob("*") if q.is_file())]


@needs_data
@pytest.mark.data
@pytest.mark.slow
def test_predict_matches_eval_on_every_val_image(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """The reference model's FP32 ONNX engine and a user's GhostNet (tests/data/byo, a plain .pth with a sidecar):
    predict's top-1 equals eval's (the reference checkpoint's, the user's checkpoint's) on each val image."""
    from ghostedge.export import export_onnx
    from ghostedge.checkpoint import load_model

    byo = Path(__file__).parent / "data" / "byo" / "ghostnet_050_sgd192.pth"
    paths = _val_paths()
    model, info = load_model(None)
    engine = tmp_path / "reference.onnx"
    export_onnx(model, info, engine)
    for weights, runs in ((None, (engine,)), (byo, (byo,))):
        want = _eval_top1(weights, monkeypatch)
        for m in runs:
            per_image: dict[str, int] = {}
            s = predict(PredictConfig(model=m, images=[IMAGENETTE / "val"], top=1, batch=64, threads=2),
                        lambda p, seen=per_image: seen.__setitem__(p.path, p.indices[0]))
            got = np.array([per_image[p] for p in paths])
            assert s.failed == 0 and len(got) == len(want) == len(paths)
            assert (got == want).all(), f"{m}: {int((got != want).sum())} of {len(got)} val images differ from eval"
