"""GhostNet as the paper and the official code define it; checkpoint loading users can trust."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from ghostedge.errors import GhostedgeError
from ghostedge.card import ModelCard
from ghostedge.checkpoint import load_model, read_checkpoint, save_checkpoint
from ghostedge.model import GhostModule, count_macs, count_params, ghostnet, make_divisible


def test_params_and_macs_match_the_paper():
    m = ghostnet(1.0, 1000)
    assert count_params(m) == 5_182_508
    # paper: 42M / 141M / 226M MACs at 224; 2.6M / 5.2M / 7.3M parameters
    for width, macs, params in ((0.5, 42e6, 2.6e6), (1.0, 141e6, 5.2e6), (1.3, 226e6, 7.3e6)):
        m = ghostnet(width, 1000)
        assert abs(count_macs(m, 224) - macs) / macs < 0.02, width
        assert abs(count_params(m) - params) / params < 0.03, width


def test_ghost_module_structure():
    gm = GhostModule(16, 30, relu=True)
    prim, cheap = gm.primary_conv[0], gm.cheap_operation[0]
    assert prim.out_channels == math.ceil(30 / 2) == 15
    assert cheap.groups == 15 and cheap.kernel_size == (3, 3) and cheap.out_channels == 15
    y = gm(torch.randn(2, 16, 8, 8))
    assert y.shape == (2, 30, 8, 8)


def test_make_divisible():
    assert make_divisible(16 * 0.5, 4) == 8
    assert make_divisible(960 * 1.3, 4) == 1248
    assert make_divisible(3, 4) == 4


def _official_keys():
    # names from the huawei-noah checkpoint / timm ghostnet_100
    return ["conv_stem.weight", "bn1.running_var", "blocks.0.0.ghost1.primary_conv.0.weight",
            "blocks.0.0.ghost1.cheap_operation.0.weight", "blocks.1.0.conv_dw.weight", "blocks.1.0.bn_dw.weight",
            "blocks.3.0.se.conv_reduce.weight", "blocks.3.0.se.conv_expand.bias", "blocks.1.0.shortcut.0.weight",
            "blocks.1.0.shortcut.3.running_mean", "blocks.9.0.conv.weight", "blocks.9.0.bn1.weight",
            "conv_head.weight", "classifier.weight"]


def test_state_dict_keys_are_official():
    sd = ghostnet(1.0).state_dict()
    for k in _official_keys():
        assert k in sd, k


@pytest.mark.parametrize("wrap", ["plain", "state_dict", "model", "module"])
def test_official_format_checkpoint_loads_strict(tmp_path: Path, wrap: str):
    torch.manual_seed(1)
    ref = ghostnet(1.0, 1000)
    sd = {k: v for k, v in ref.state_dict().items() if not k.endswith("num_batches_tracked")}
    obj = {"plain": sd, "state_dict": {"state_dict": sd}, "model": {"model": sd, "epoch": 3},
           "module": {f"module.{k}": v for k, v in sd.items()}}[wrap]
    p = tmp_path / "state_dict_73.98.pth"
    torch.save(obj, p)
    model, info = load_model(p)
    assert info.num_classes == 1000 and info.width == 1.0
    assert info.classes[0] == "tench" and info.wnids[0] == "n01440764"
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(model(x), ref.eval()(x), atol=1e-5)


def test_width_is_inferred_for_foreign_checkpoints(tmp_path: Path):
    p = tmp_path / "g050.pth"
    torch.save(ghostnet(0.5, 1000).state_dict(), p)
    _, info = load_model(p)
    assert info.width == 0.5


def test_mismatch_names_keys_and_shapes(tmp_path: Path):
    p = tmp_path / "ten.pth"
    torch.save(ghostnet(1.0, 10).state_dict(), p)
    with pytest.raises(GhostedgeError) as e:
        load_model(p, num_classes=1000)
    msg = str(e.value)
    assert "classifier.weight: checkpoint (10, 1280) vs model (1000, 1280)" in msg
    assert "--num-classes 10" in msg


def test_unexpected_and_missing_keys_are_listed(tmp_path: Path):
    sd = ghostnet(1.0, 1000).state_dict()
    sd["extra.weight"] = torch.zeros(1)
    del sd["conv_head.bias"]
    p = tmp_path / "bad.pth"
    torch.save(sd, p)
    with pytest.raises(GhostedgeError) as e:
        load_model(p)
    assert "missing keys (1): conv_head.bias" in str(e.value)
    assert "unexpected keys (1): extra.weight" in str(e.value)


def test_pickled_code_is_refused(tmp_path: Path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    p = tmp_path / "evil.pth"
    torch.save({"state_dict": Evil()}, p)
    with pytest.raises(GhostedgeError, match="weights-only"):
        load_model(p)


def test_missing_and_corrupt_files(tmp_path: Path):
    with pytest.raises(GhostedgeError, match="not found"):
        load_model(tmp_path / "nope.pth")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00\x01garbage")
    with pytest.raises(GhostedgeError, match="safetensors"):
        load_model(bad)


def test_safetensors_round_trip_keeps_metadata(tmp_path: Path):
    torch.manual_seed(0)
    m = ghostnet(1.0, 3).eval()
    info = ModelCard(num_classes=3, classes=["a", "b", "c"], extra={"val_top1": 0.5})
    info.preprocess.input_size = 96
    p = save_checkpoint(m, info, tmp_path / "m.safetensors", half=False)
    m2, info2 = load_model(p)
    assert info2.classes == ["a", "b", "c"] and info2.preprocess.input_size == 96
    assert info2.extra["val_top1"] == 0.5 and info2.fingerprint == info.fingerprint
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(m(x), m2(x))
    sd, meta = read_checkpoint(p)
    assert meta["num_classes"] == 3


def test_half_storage_fingerprint_matches_what_loads(tmp_path: Path):
    torch.manual_seed(0)
    m = ghostnet(0.5, 3).eval()
    for mod in m.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.num_batches_tracked += 7
    info = ModelCard(width=0.5, num_classes=3)
    p = save_checkpoint(m, info, tmp_path / "h.safetensors", half=True)
    _, info2 = load_model(p)
    assert info2.fingerprint == info.fingerprint
    assert p.stat().st_size < count_params(m) * 2 + 200_000
