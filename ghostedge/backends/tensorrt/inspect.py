"""Per-layer view of a TensorRT engine from its engine inspector (any release's JSON)."""

from __future__ import annotations

import re
from pathlib import Path
from types import ModuleType
from typing import Any

from ..layers import annotate_layers


#: the long format strings of the inspector's raw JSON (``trtexec --exportLayerInfo``, IEngineInspector) name the
#: data type inside the sentence: "Thirty-two wide channel vectorized row major Int8 format", "Row major linear
#: FP32", "Channel major FP16 format where channel % 8 == 0", "Row major linear BFloat16 format"; TensorRT 11 adds a
#: "(kCHW32)"-style suffix. NVIDIA's trex translates them with a table (tools/experimental/trt-engine-explorer/
#: trex/activations.py, ``_regionFormatDict``) whose data-type words are these; kgen layers print the bare names
#: ("Half", "Float", "Int8"), as the 11.x "DataType" field does (TensorRT 10.x -> 11.x IEngineInspector migration
#: page: "I/O Tensors" entries carry "DataType": "Float" beside "Format": "Row major linear FP32 format (kLINEAR)").
_DTYPE_WORDS = {
    "int8": "int8", "fp32": "fp32", "float": "fp32", "fp16": "fp16", "half": "fp16", "bfloat16": "bf16",
    "bf16": "bf16", "fp8": "fp8", "int4": "int4", "fp4": "fp4", "int32": "int32", "int64": "int64",
    "bool": "bool", "uint8": "uint8", "double": "fp64", "int16": "int16",
}


def datatype_precision(fmt: str) -> str:
    """The precision a tensor description names, from any TensorRT release's inspector JSON: the word of the
    description that is a data type ('Thirty-two wide channel vectorized row major Int8 format' -> int8,
    'Row major linear FP32' -> fp32, 'Half' -> fp16, 'BFloat16' -> bf16; a whole word, so 'BFloat16' is not
    'Float'); '?' when it names none."""
    for word in re.findall(r"[A-Za-z]+[0-9]*", fmt or ""):
        p = _DTYPE_WORDS.get(word.lower())
        if p:
            return p
    return "?"


def tensor_precision(t: dict) -> str:
    """One tensor of a layer's Inputs/Outputs: 11.x's "DataType" first, else the 8.x-10.x "Format/Datatype"
    sentence, else 11.x's "Format"."""
    for key in ("DataType", "Format/Datatype", "Format"):
        if t.get(key):
            p = datatype_precision(str(t[key]))
            if p != "?":
                return p
    return "?"


def layer_rows(info: dict) -> list[dict]:
    """Per-layer records from the inspector's parsed JSON (``{"Layers": [...]}``, any version).

    As NVIDIA's trex reads it: the kind is ``ParameterType`` (``LayerType`` is the kernel family, e.g.
    CaskConvolution), the precision is that of ``Inputs[0]`` (an INT8 conv may write a float output); a layer
    fused with a residual add has the add's other operand as a further input."""
    rows = []
    for layer in info.get("Layers", []):
        if isinstance(layer, str):  # built without DETAILED verbosity: names only
            rows.append({"name": layer, "type": "?", "precision": "?", "device": "?", "tactic": "?"})
            continue
        ins = layer.get("Inputs") or layer.get("Outputs") or [{}]
        kind = str(layer.get("ParameterType") or layer.get("LayerType", "?"))
        impl = str(layer.get("LayerType", ""))
        rows.append({
            "name": layer.get("Name", "?"),
            "type": kind,
            "precision": tensor_precision(ins[0] if isinstance(ins[0], dict) else {}),
            "inputs": [tensor_precision(t) for t in ins if isinstance(t, dict)],
            "device": "DLA" if "DLA" in impl or "ForeignNode" in impl or "DLA" in kind else "GPU",
            "tactic": str(layer.get("TacticName", layer.get("TacticValue", "?"))),
        })
    return annotate_layers(rows)


def inspect_engine(trt: ModuleType, engine: Any) -> list[dict]:
    """Per-layer records from the engine inspector (needs ProfilingVerbosity.DETAILED at build)."""
    import json as _json

    insp = engine.create_engine_inspector()
    raw = insp.get_engine_information(trt.LayerInformationFormat.JSON)
    return layer_rows(_json.loads(raw) if raw else {})


def inspect_plan(path: Path) -> list[dict]:
    """Per-layer records of a .plan (opened as bench opens it, so a wrong TensorRT / GPU is named first)."""
    from .loader import open_engine

    runner, _ = open_engine(path)
    with runner:
        return inspect_engine(runner.trt, runner.engine)
