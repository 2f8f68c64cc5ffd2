"""Per-layer view of an engine: TensorRT's engine inspector for .plan, the graph for ONNX Runtime engines."""

from __future__ import annotations

from pathlib import Path

from .errors import GhostedgeError


def inspect_onnx(path: Path) -> list[dict]:
    import onnx

    from .backends.tensorrt import annotate_layers

    try:
        m = onnx.load(str(path), load_external_data=False)
    except Exception:
        raise GhostedgeError(f"{path} is not a readable ONNX model: rebuild it with ghostedge build") from None
    int8_ops = {"QLinearConv", "QLinearAdd", "QLinearConcat", "QLinearMul", "QLinearGlobalAveragePool", "QGemm",
                "QLinearMatMul", "QuantizeLinear", "DequantizeLinear", "QLinearSigmoid"}
    quantized = any(n.op_type in int8_ops for n in m.graph.node)
    rows = []
    for n in m.graph.node:
        prec = "int8" if n.op_type in int8_ops else "fp32"
        rows.append({"name": n.name or n.output[0], "type": n.op_type, "precision": prec, "device": "CPU",
                     "tactic": n.domain or "ai.onnx"})
    rows = annotate_layers(rows)
    for r in rows:  # only a float Conv/Gemm in an INT8 engine is a fallback; elsewhere float is the point
        if not quantized or r["type"] not in ("Conv", "Gemm", "MatMul"):
            r["flags"] = [f for f in r["flags"] if f != "fp32"]
    return rows


def inspect_plan(path: Path) -> list[dict]:
    from .backends.tensorrt import TensorRTRunner, inspect_engine
    from .bench import open_runner

    runner, _ = open_runner(path)
    if not isinstance(runner, TensorRTRunner):
        raise GhostedgeError(f"{path} is not a TensorRT engine: pass a .plan")
    with runner:
        return inspect_engine(runner.trt, runner.engine)


def inspect_openvino(path: Path) -> list[dict]:
    """The compiled model's runtime view: each layer's type and the precision OpenVINO runs it in."""
    from .backends.openvino import OpenVinoRunner
    from .backends.tensorrt import annotate_layers
    from .manifest import read_manifest

    man = read_manifest(path, required=False) or {}
    with OpenVinoRunner(path, precision_hint=man.get("precision_hint") or "f32") as r:
        rows = annotate_layers(r.layers())
    quantized = any(x["precision"] == "int8" for x in rows)
    for x in rows:  # a float conv in an INT8 engine is a fallback; reorders / float glue are not
        if not quantized or x["type"] not in ("Convolution", "FullyConnected", "MatMul"):
            x["flags"] = [f for f in x["flags"] if f != "fp32"]
        if x["type"] == "Reorder" and "reformat" not in x["flags"]:
            x["flags"].append("reformat")
    return rows


def inspect_path(path: Path) -> list[dict]:
    if not path.is_file():
        raise GhostedgeError(f"engine {path} not found: build it with ghostedge build")
    if path.suffix == ".onnx":
        return inspect_onnx(path)
    if path.suffix == ".xml":
        return inspect_openvino(path)
    if path.suffix in (".plan", ".engine"):
        return inspect_plan(path)
    raise GhostedgeError(f"{path}: unknown engine kind {path.suffix!r}: pass a .plan, .onnx or .xml engine")
