"""The backend registry: every engine file is looked up by suffix in one place, and runners report the tensors
the engine itself declares."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from ghostedge.backends.registry import all_backends, backend_for_path, get, strip_engine_suffix
from ghostedge.errors import GhostedgeError


def test_suffixes_name_one_backend_each():
    assert backend_for_path("e/ghostnet.int8.ort.onnx").name == "onnxruntime"
    assert backend_for_path("ghostnet.onnx").name == "onnxruntime"
    assert backend_for_path("ghostnet.int8.ov.xml").name == "openvino"
    assert backend_for_path("ghostnet.plan").name == backend_for_path("x.engine").name == "tensorrt"
    with pytest.raises(GhostedgeError, match=r"unknown engine kind '\.txt'.*\.plan.*\.ort\.onnx.*\.ov\.xml"):
        backend_for_path("notes.txt")
    assert strip_engine_suffix("ghostnet.int8.ov.xml") == "ghostnet.int8" and strip_engine_suffix("a.b") == "a.b"
    with pytest.raises(GhostedgeError, match="unknown backend"):
        get("tflite")


def test_every_backend_says_what_it_loads_and_does():
    b = all_backends()
    assert set(b) == {"tensorrt", "torch_tensorrt", "onnxruntime", "openvino", "torch"}
    assert all(x.loads for x in b.values())
    for name in ("tensorrt", "onnxruntime", "openvino"):   # engine runtimes: open, build, inspect
        assert b[name].suffixes and b[name].open_runner and b[name].build and b[name].inspect
    assert b["torch_tensorrt"].produces == "tensorrt" and b["torch_tensorrt"].build and not b["torch_tensorrt"].suffixes
    assert b["openvino"].companions == (".bin",) and not b["onnxruntime"].fixed_shape


def _tiny_onnx(path: Path) -> Path:
    x = helper.make_tensor_value_info("pixels", TensorProto.FLOAT, ["n", 3, 4, 4])
    y = helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["n", 3])
    g = helper.make_graph([helper.make_node("ReduceMean", ["pixels"], ["scores"], axes=[2, 3], keepdims=0)],
                          "t", [x], [y])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_onnxruntime_runner_reports_the_engines_tensors(tmp_path: Path):
    from ghostedge.bench import open_runner

    runner, man = open_runner(_tiny_onnx(tmp_path / "t.onnx"))
    assert man is None
    with pytest.raises(RuntimeError, match="before activate"):
        runner.inputs_info()
    with runner:
        (i,), (o,) = runner.inputs_info(), runner.outputs_info()
        assert (i.name, i.dtype, i.shape) == ("pixels", "float32", ("n", 3, 4, 4))
        assert (o.name, o.dtype, o.shape) == ("scores", "float32", ("n", 3))
        assert runner.infer(np.ones((2, 3, 4, 4), np.float32)).shape == (2, 3)


def test_openvino_runner_reports_the_engines_tensors(tmp_path: Path):
    pytest.importorskip("openvino")
    from ghostedge.backends.openvino import save_ir
    from ghostedge.bench import open_runner

    xml = save_ir(_tiny_onnx(tmp_path / "t.onnx"), tmp_path / "t.ov.xml", 4)
    runner, _ = open_runner(xml)
    with runner:
        (i,), (o,) = runner.inputs_info(), runner.outputs_info()
        assert (i.name, i.dtype, i.shape) == ("pixels", "float32", (-1, 3, 4, 4))
        assert (o.name, o.dtype) == ("scores", "float32") and o.shape[1:] == (3,)
