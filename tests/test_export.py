"""ONNX export: opset 17, BN folded, dynamic batch, one file, metadata, parity with PyTorch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from ghostedge.card import read_onnx_card
from ghostedge.checkpoint import load_model
from ghostedge.errors import CheckFailed
from ghostedge.export import INPUT_NAME, export_onnx, fold_batchnorm, fp16_onnx, ort_session, to_onnx_proto


def test_export_is_self_contained_opset17_with_metadata(tmp_path: Path, tiny_weights: Path):
    model, info = load_model(tiny_weights)
    dst = tmp_path / "g.onnx"
    r = export_onnx(model, info, dst)
    assert r.passed and r.parity_random <= 1e-4
    m = onnx.load(str(dst))
    assert m.opset_import[0].version == 17
    assert not list(tmp_path.glob("*.data"))
    ops = {n.op_type for n in m.graph.node}
    assert "BatchNormalization" not in ops and "Constant" not in ops
    dims = m.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param == "batch"
    stored = read_onnx_card(m)
    assert stored.fingerprint == info.fingerprint and stored.classes == info.classes
    # dynamic batch really works
    sess = ort_session(dst)
    for b in (1, 3):
        x = np.random.default_rng(b).standard_normal((b, 3, 32, 32)).astype(np.float32)
        with torch.no_grad():
            ref = model(torch.from_numpy(x)).numpy()
        assert np.abs(sess.run(None, {INPUT_NAME: x})[0] - ref).max() <= 1e-4


def test_bn_folding_is_exact(tiny_weights: Path):
    model, _ = load_model(tiny_weights)
    folded = fold_batchnorm(model)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(model(x), folded(x), atol=1e-5)


def test_parity_failure_writes_nothing(tmp_path: Path, tiny_weights: Path, monkeypatch: pytest.MonkeyPatch):
    import ghostedge.export as ex

    model, info = load_model(tiny_weights)
    monkeypatch.setattr(ex, "parity", lambda *a, **k: 1.0)
    dst = tmp_path / "g.onnx"
    with pytest.raises(CheckFailed):
        ex.export_onnx(model, info, dst)
    assert not dst.exists() and not list(tmp_path.iterdir())


def test_fp16_onnx_is_fp16_typed_with_fp32_io(tiny_weights: Path):
    model, info = load_model(tiny_weights)
    m16 = fp16_onnx(to_onnx_proto(model, info))
    assert m16.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert m16.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    floats = [i for i in m16.graph.initializer if i.data_type == onnx.TensorProto.FLOAT]
    assert not floats
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    got = ort_session(m16).run(None, {INPUT_NAME: x})[0]
    assert np.abs(got - ref).max() < 0.05
