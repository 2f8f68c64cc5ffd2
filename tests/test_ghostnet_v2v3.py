"""GhostNetV2 / V3: timm's checkpoints (and the official huawei-noah ones) load strictly, give timm's logits in
PyTorch and in the exported ONNX, V3 is re-parameterized into single convs, V2's gate exports as a
constant-scale Resize.

The reference is timm's own model code (``timm.models.ghostnet``, see ``timm_reference``) with random weights
and randomised BatchNorm statistics; these tests skip where timm is not installed."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from ghostedge.arch.ghostnetv2 import bind_input_size, gate_scale, ghostnetv2, upsample_gate
from ghostedge.arch.ghostnetv3 import GhostModuleV3, ghostnetv3, reparameterize
from ghostedge.checkpoint import load_model
from ghostedge.errors import GhostedgeError
from ghostedge.model import ARCHITECTURES, filter_state_dict, parse_timm_name, recognise

from .timm_reference import import_timm_ghostnet

tg = import_timm_ghostnet()
needs_timm = pytest.mark.skipif(tg is None, reason="timm is not installed (the reference the V2/V3 tests compare "
                                                   "against): pip install --no-deps timm==1.0.31")
NAMES = ("ghostnetv2_100", "ghostnetv3_100")


def randomise(m: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Non-trivial BatchNorm statistics and affine terms (a fresh model's are 0 / 1), logits of order 1."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                n = mod.num_features
                mod.running_mean.copy_(torch.rand(n, generator=g) * 0.4 - 0.2)
                mod.running_var.copy_(torch.rand(n, generator=g) + 0.5)
                mod.weight.copy_(torch.rand(n, generator=g) + 0.5)
                mod.bias.copy_(torch.rand(n, generator=g) * 0.2 - 0.1)
        m.classifier.weight.mul_(20.0)
    return m.eval()


@pytest.fixture(scope="module")
def timm_models() -> dict[str, torch.nn.Module]:
    if tg is None:
        pytest.skip("timm is not installed")
    out = {}
    for i, name in enumerate(NAMES):
        torch.manual_seed(i)
        out[name] = randomise(getattr(tg, name)(num_classes=10), seed=i)
    return out


def _logits(m: torch.nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        return m.eval()(torch.from_numpy(x)).numpy()


def _x(size: int, n: int = 2, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 3, size, size)).astype(np.float32)


def _official_v3(sd: dict[str, torch.Tensor]) -> dict:
    """timm's V3 state dict in the official repository's layout: branch BatchNorms named ``.bn``, wrapped in
    'state_dict', with thop's counters beside every module."""
    out = {}
    for k, v in sd.items():
        if ".ghost" in k or ".dw_rpr_" in k:
            k = k.replace(".bn1.", ".bn.")
        out[k] = v
    out["total_ops"] = torch.tensor([1.0e8], dtype=torch.float64)
    out["blocks.0.0.total_params"] = torch.tensor([123.0], dtype=torch.float64)
    return {"state_dict": out, "epoch": 300}


def _load_timm(ref: torch.nn.Module, name: str, tmp_path: Path):
    """timm's state dict as a plain torch.save file, through ghostedge's loader (no flag but the path)."""
    p = tmp_path / f"{name}.pth"
    torch.save(ref.state_dict(), p)
    return load_model(p)


@needs_timm
@pytest.mark.parametrize("name", NAMES)
def test_timm_state_dict_loads_strictly_and_gives_timms_logits(timm_models, name: str, tmp_path: Path):
    ref = timm_models[name]
    model, info = _load_timm(ref, name, tmp_path)
    family, width = parse_timm_name(name)
    assert (info.family, info.width, info.num_classes) == (family, width, 10)
    assert info.reparameterized == (family == "ghostnetv3")
    for size in (64, 96):   # 96: the last stage is 3x3, an odd size under the gate
        x = _x(size)
        want = _logits(ref, x)
        assert np.abs(want).max() > 0.5
        assert np.abs(_logits(model, x) - want).max() <= 1e-5, size


@needs_timm
def test_official_checkpoints_load_through_timms_filter(timm_models, tmp_path: Path):
    v3 = timm_models["ghostnetv3_100"]
    p = tmp_path / "ghostnetv3-1.0.pth.tar"
    official = _official_v3(v3.state_dict())
    assert any(".bn." in k for k in official["state_dict"]) and not any(
        "_rpr_" in k and ".bn1." in k for k in official["state_dict"])
    torch.save(official, p)
    model, info = load_model(p)
    assert info.family == "ghostnetv3"
    x = _x(64)
    assert np.abs(_logits(model, x) - _logits(v3, x)).max() <= 1e-5

    v2 = timm_models["ghostnetv2_100"]
    p2 = tmp_path / "ck_ghostnetv2_10.pth.tar"
    torch.save({"state_dict": {**v2.state_dict(), "total_ops": torch.zeros(1), "total_params": torch.zeros(1)}}, p2)
    model2, info2 = load_model(p2)
    assert (info2.family, info2.reparameterized) == ("ghostnetv2", False)
    assert np.abs(_logits(model2, x) - _logits(v2, x)).max() <= 1e-5


@needs_timm
@pytest.mark.parametrize("name", NAMES)
def test_exported_onnx_gives_timms_logits(timm_models, name: str, tmp_path: Path):
    from ghostedge.export import INPUT_NAME, export_onnx, ort_session

    ref = timm_models[name]
    model, info = _load_timm(ref, name, tmp_path)
    dst = tmp_path / f"{name}.onnx"
    size = 96
    res = export_onnx(model, info, dst, img_size=size)
    assert res.passed
    import onnx

    proto = onnx.load(str(dst))
    ops = [n.op_type for n in proto.graph.node]
    resizes = [n for n in proto.graph.node if n.op_type == "Resize"]
    assert len(resizes) == 14 and ops.count("Sigmoid") == 14          # one DFC gate per bottleneck past the 2nd
    inits = {i.name for i in proto.graph.initializer}
    for n in resizes:   # constant scales, no size computed from the input's shape
        assert n.input[2] in inits and (len(n.input) < 4 or not n.input[3])
    assert "Shape" not in ops
    dims = [d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim[2:]]
    assert dims == [size, size]
    # V3 re-parameterized: one Conv per conv of the deployed model, and one Add per bottleneck (the residual);
    # the multi-branch form would add 3-5 convs and their Adds per Ghost module
    assert ops.count("Conv") == sum(isinstance(c, torch.nn.Conv2d) for c in model.modules())
    assert ops.count("Add") == 16
    sess = ort_session(dst)
    x = _x(size, 3, seed=1)
    got = sess.run(None, {INPUT_NAME: x})[0]
    assert np.abs(got - _logits(ref, x)).max() <= 1e-4
    with pytest.raises(Exception):      # the graph is fixed to its size: another one is refused, not miscomputed
        sess.run(None, {INPUT_NAME: _x(size + 32)})


def test_v3_reparameterization_folds_every_branch_and_keeps_the_logits():
    torch.manual_seed(0)
    m = randomise(ghostnetv3(0.5, 3))
    rep = reparameterize(m)
    assert any(isinstance(x, GhostModuleV3) and not x.deployed for x in m.modules())   # input left as it was
    assert not any("_rpr_" in k for k in rep.state_dict())
    assert rep.reparameterized and not m.reparameterized
    x = torch.from_numpy(_x(64))
    with torch.no_grad():
        want = m(x)
        assert (rep(x) - want).abs().max().item() <= 1e-4 * max(1.0, want.abs().max().item())
    n_conv = lambda mod: sum(isinstance(c, torch.nn.Conv2d) for c in mod.modules())  # noqa: E731
    assert n_conv(rep) == n_conv(ghostnetv2(0.5, 3))   # deployed V3 has V2's layout of single convs


def test_gate_scale_gives_interpolates_nearest_indices():
    for small in range(1, 80):
        for big in (2 * small, 2 * small + 1):
            s = gate_scale(small, big)
            s32 = float(np.float32(s))            # as the ONNX initializer stores it
            assert math.floor(small * s32) == big
            assert all(math.floor(i / s32) == (i * small) // big for i in range(big)), (small, big)
    with pytest.raises(ValueError):
        gate_scale(3, 9)
    g = torch.rand(1, 2, 3, 3)
    like = torch.zeros(1, 2, 7, 7)
    assert torch.equal(upsample_gate(g, like, None), upsample_gate(g, like, (gate_scale(3, 7),) * 2))


def test_bound_gates_reject_inputs_too_small_and_the_loader_names_the_minimum(tmp_path: Path):
    m = ghostnetv2(1.0, 3).eval()
    assert bind_input_size(m, 64)
    with pytest.raises(ValueError, match="smaller than 2x2"):
        bind_input_size(m, 32)
    assert not bind_input_size(ARCHITECTURES["ghostnet"].build(0.5, 3), 32)
    p = tmp_path / "v2.pth"
    torch.save(m.state_dict(), p)
    (tmp_path / "v2.pth.json").write_text(json.dumps({"input_size": 32}))
    with pytest.raises(GhostedgeError, match="at least 64"):
        load_model(p)


def test_families_are_recognised_from_keys_and_descriptions(tmp_path: Path):
    v2, v3 = ghostnetv2(1.3, 5).state_dict(), ghostnetv3(0.5, 5).state_dict()
    assert recognise(v2).family == "ghostnetv2" and ARCHITECTURES["ghostnetv2"].guess_width(v2) == 1.3
    assert recognise(v3).family == "ghostnetv3" and ARCHITECTURES["ghostnetv3"].guess_width(v3) == 0.5
    assert recognise(ARCHITECTURES["ghostnet"].build(1.0, 5).state_dict()).family == "ghostnet"
    assert parse_timm_name("ghostnetv3_160") == ("ghostnetv3", 1.6) and parse_timm_name("resnet50") is None
    assert parse_timm_name("ghostnet_050.untrained") == ("ghostnet", 0.5)
    assert "x.total_ops" not in filter_state_dict({"x.total_ops": torch.zeros(1), "a.weight": torch.zeros(1)})
    # a hub config.json names the architecture and width; one that contradicts the keys is refused
    d = tmp_path / "hub"
    d.mkdir()
    torch.save(v2, d / "pytorch_model.bin")
    (d / "config.json").write_text(json.dumps({"architecture": "ghostnetv2_130", "num_classes": 5,
                                               "pretrained_cfg": {"input_size": [3, 96, 96]}}))
    _, info = load_model(d / "pytorch_model.bin")
    assert (info.family, info.width, info.input.input_size) == ("ghostnetv2", 1.3, 96)
    (d / "config.json").write_text(json.dumps({"architecture": "ghostnetv3_130", "num_classes": 5}))
    with pytest.raises(GhostedgeError, match="key layout of ghostnetv2"):
        load_model(d / "pytorch_model.bin")
