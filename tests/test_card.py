"""The model card: one place for the input rule, one way to store it, older layouts still read."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest
from onnx import TensorProto, helper

from ghostedge.card import InputSpec, ModelCard, card_for_onnx, parse_preprocess, read_onnx_card, write_onnx_card
from ghostedge.errors import GhostedgeError
from ghostedge.model import ARCHITECTURES

from .conftest import tiny_ghostnet


def test_resize_for_keeps_the_crop_ratio_at_any_size():
    spec, _ = parse_preprocess("size=192 resize=213")
    assert spec.resize == 213 == spec.resize_for(192)
    assert spec.resize_for(96) == round(96 * 213 / 192)
    assert InputSpec().resize == 256 and InputSpec().resize_for(160) == 183


def test_card_json_round_trips_and_reads_the_older_model_info_layout():
    card = ModelCard(width=0.5, num_classes=2, classes=["a", "b"], input=InputSpec(input_size=64, crop_pct=0.9),
                     fingerprint="f" * 16)
    d = json.loads(json.dumps(card.to_dict()))
    assert d["preprocess"]["input_size"] == 64 and d["family"] == "ghostnet" and d["reparameterized"] is False
    assert ModelCard.from_dict(d) == card
    old = {"width": 0.5, "num_classes": 2, "classes": ["a", "b"], "wnids": [], "source": "x", "fingerprint": "f",
           "extra": {}, "preprocess": {"input_size": 64, "crop_pct": 0.9, "interpolation": "bicubic",
                                       "mean": [0.5] * 3, "std": [0.5] * 3}}   # a ModelInfo of ghostedge <= 0.x
    c = ModelCard.from_dict(old)
    assert c.family == "ghostnet" and c.input.interpolation == "bicubic" and c.input.mean == (0.5, 0.5, 0.5)
    assert c.preprocess is c.input


def _bare_onnx(h: int | str) -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, h, h])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3, h, h])
    return helper.make_model(helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y]))


def test_onnx_card_under_one_key_and_older_flat_keys(tmp_path: Path):
    card = ModelCard(width=1.3, num_classes=3, classes=["x", "y", "z"], input=InputSpec(input_size=96),
                     fingerprint="abc")
    m = _bare_onnx(96)
    write_onnx_card(m, card)
    assert read_onnx_card(m) == card
    flat = {p.key: p.value for p in m.metadata_props if p.key != "ghostedge"}
    del m.metadata_props[:]
    for k, v in flat.items():        # only the flat keys: still a card
        m.metadata_props.add(key=k, value=v)
    got = read_onnx_card(m)
    assert got.input == card.input and got.classes == card.classes and got.width == 1.3 and got.fingerprint == "abc"
    del m.metadata_props[:]
    assert read_onnx_card(m) is None


def test_a_foreign_onnx_gets_its_static_input_size_or_a_clear_error(tmp_path: Path):
    onnx.save(_bare_onnx(160), str(tmp_path / "static.onnx"))
    assert card_for_onnx(tmp_path / "static.onnx").input.input_size == 160
    onnx.save(_bare_onnx("h"), str(tmp_path / "dynamic.onnx"))
    with pytest.raises(GhostedgeError, match="no ghostedge model card.*dynamic"):
        card_for_onnx(tmp_path / "dynamic.onnx")


def test_architectures_are_data():
    arch = ARCHITECTURES["ghostnet"]
    assert arch.widths == (0.5, 1.0, 1.3)
    sd = tiny_ghostnet(0).state_dict()
    assert arch.recognise(sd) and arch.guess_width(sd) == 0.5
    wrapped = {f"module.{k}": v for k, v in sd.items()}
    assert arch.filter_state_dict(wrapped).keys() == sd.keys()
    m = arch.build(0.5, 3, 0.0)
    assert arch.for_deploy(m) is m and not arch.recognise({"fc.weight": sd["classifier.weight"]})
