"""Triton Inference Server: a model repository entry (``NAME/config.pbtxt`` + ``NAME/1/model.*``) for an engine.

The config is Triton's ``ModelConfig`` protobuf in text format (model_config.proto of
triton-inference-server/common; the tests parse every config against the copy ``tritonclient`` ships):
``platform: "tensorrt_plan"`` for a TensorRT plan, ``backend: "onnxruntime"`` for an ONNX (ghostedge's
ONNX Runtime CPU engine, or the TensorRT ONNX run by ONNX Runtime), ``backend: "openvino"`` for an OpenVINO
IR; the engine's real input/output names, data types and dims; a dynamic batch dimension becomes
``max_batch_size`` (a plan's: its build profile's max) and leaves the dims; a static one gives
``max_batch_size: 0`` and the full dims; ``dynamic_batching`` where the engine batches; the output's
``label_filename`` (one label per line) serves the classification extension (``class_count``).
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from .. import __version__
from ..errors import GhostedgeError
from .engine import EngineInfo, EngineKind, Tensor, atomic_dir, describe_engine, labels

#: numpy dtype name -> Triton DataType (model_config.proto)
TRITON_DTYPE = {"float32": "TYPE_FP32", "float16": "TYPE_FP16", "uint8": "TYPE_UINT8", "int8": "TYPE_INT8",
                "int32": "TYPE_INT32", "int64": "TYPE_INT64", "bool": "TYPE_BOOL", "float64": "TYPE_FP64"}
#: ONNX / OpenVINO files get the default batch limit of ghostedge build's profile (1:8:32) when none is recorded
DEFAULT_MAX_BATCH = 32
NAME_RE = re.compile(r"^[A-Za-z0-9_.-]+$")


@dataclass
class TritonSettings:
    out: Path = Path("deploy/triton")      # the model repository
    name: str = "ghostnet"
    max_batch: int | None = None           # ONNX / OpenVINO: max_batch_size (default: the manifest's profile max)
    instances: int = 1


@dataclass
class TritonResult:
    repo: Path
    model_dir: Path
    config: Path
    backend: str
    max_batch_size: int
    files: list[Path]
    notes: list[str] = field(default_factory=list)


def _backend(info: EngineInfo) -> tuple[str, str, str, list[str]]:
    """(config lines naming the backend, model file name, instance kind, extra files)."""
    if info.kind == EngineKind.tensorrt:
        return 'platform: "tensorrt_plan"', "model.plan", "KIND_GPU", []
    if info.kind == EngineKind.openvino:
        return 'backend: "openvino"', "model.xml", "KIND_CPU", ["model.bin"]
    kind = "KIND_CPU" if info.kind == EngineKind.onnxruntime else "KIND_AUTO"
    return 'backend: "onnxruntime"', "model.onnx", kind, []


def _dims(t: Tensor, batched: bool) -> str:
    dims = t.shape[1:] if batched else t.shape
    return "[ " + ", ".join(str(d) for d in dims) + " ]"


def _tensor_block(t: Tensor, batched: bool, label_file: str | None = None) -> list[str]:
    if t.dtype not in TRITON_DTYPE:
        raise GhostedgeError(f"tensor {t.name!r} has data type {t.dtype}, which Triton's model config has no type "
                             "for: rebuild the engine with ghostedge build")
    lines = ["  {", f"    name: {json.dumps(t.name)}", f"    data_type: {TRITON_DTYPE[t.dtype]}",
             f"    dims: {_dims(t, batched)}"]
    if label_file:
        lines.append(f'    label_filename: "{label_file}"')
    return lines + ["  }"]


def config_text(info: EngineInfo, s: TritonSettings) -> tuple[str, int, list[str]]:
    """config.pbtxt's text, its max_batch_size and notes."""
    backend_line, model_file, kind, _ = _backend(info)
    notes: list[str] = []
    batched = all(t.shape and t.shape[0] == -1 for t in info.inputs + info.outputs)
    if batched:
        profile_max = info.batch[2] if info.batch else None
        if info.kind == EngineKind.tensorrt:
            if s.max_batch is not None and profile_max is not None and s.max_batch > profile_max:
                raise GhostedgeError(f"max batch {s.max_batch} is above the plan's profile ({profile_max}): rebuild "
                                     f"with ghostedge build --batch 1:8:{s.max_batch}")
            max_batch = s.max_batch or profile_max or 1
            if info.batch and info.batch[0] > 1:
                notes.append(f"the plan's profile starts at batch {info.batch[0]}: smaller requests fail")
        else:
            max_batch = s.max_batch or profile_max or DEFAULT_MAX_BATCH
    else:
        if s.max_batch:
            raise GhostedgeError(f"{info.path.name} has a static batch dimension: it cannot batch up to {s.max_batch}")
        max_batch = 0
        notes.append(f"{info.path.name} has a static batch dimension: max_batch_size 0, full dims, no batching")
    if max_batch < 0 or (batched and max_batch < 1):
        raise GhostedgeError(f"max batch {max_batch} must be at least 1")
    if s.instances < 1:
        raise GhostedgeError(f"instance count {s.instances} must be at least 1")
    if len(info.outputs) != 1:
        notes.append("more than one output: the label file is attached to the first")
    pre = info.pre
    lines = [f"# written by ghostedge {__version__} from {info.path.name} ({info.kind.value}, {info.precision})",
             f"# input: RGB, resize short side {pre.resize}, center crop {pre.input_size}, {pre.interpolation}"
             + ("" if info.uint8_input else
                f", (x/255 - mean) / std with mean {list(pre.mean)} std {list(pre.std)}"),
             f'name: "{s.name}"', backend_line, f"max_batch_size: {max_batch}", "input ["]
    for i, t in enumerate(info.inputs):
        lines += _tensor_block(t, batched)
        lines[-1] += "," if i < len(info.inputs) - 1 else ""
    lines += ["]", "output ["]
    for i, t in enumerate(info.outputs):
        lines += _tensor_block(t, batched, "labels.txt" if i == 0 else None)
        lines[-1] += "," if i < len(info.outputs) - 1 else ""
    lines += ["]"]
    if max_batch > 0:
        lines += ["dynamic_batching { }"]
    lines += [f"instance_group [ {{ count: {s.instances} kind: {kind} }} ]", f'default_model_filename: "{model_file}"']
    man = info.manifest or {}
    if info.kind == EngineKind.tensorrt:
        notes.append(f"a TensorRT plan runs only on the TensorRT it was built with ({man.get('tensorrt', '?')}) and "
                     f"the same GPU model ({(man.get('gpu') or {}).get('name', '?')}): use the Triton release that "
                     "ships that TensorRT")
    if info.kind == EngineKind.openvino and man.get("precision_hint"):
        notes.append(f"measured by ghostedge with OpenVINO's inference precision hint {man['precision_hint']}")
    return "\n".join(lines) + "\n", max_batch, notes


def deploy_triton(engine: str | Path, s: TritonSettings) -> TritonResult:
    """Write ``s.out/s.name/`` = config.pbtxt + labels.txt + 1/model.* (replacing an older one atomically)."""
    if not NAME_RE.match(s.name):
        raise GhostedgeError(f"model name {s.name!r}: use letters, digits, '_', '-' and '.' only (it names a folder)")
    info = describe_engine(engine)
    text, max_batch, notes = config_text(info, s)
    _, model_file, _, extra = _backend(info)
    repo = Path(s.out)
    dst = repo / s.name
    with atomic_dir(dst) as tmp:
        (tmp / "1").mkdir()
        shutil.copy2(info.path, tmp / "1" / model_file)
        for e in extra:   # the OpenVINO weights, named after the .xml
            shutil.copy2(info.path.with_suffix(Path(e).suffix), tmp / "1" / e)
        (tmp / "labels.txt").write_text("\n".join(labels(info.card)) + "\n")
        (tmp / "config.pbtxt").write_text(text)
    files = [dst / "config.pbtxt", dst / "labels.txt", dst / "1" / model_file] + [dst / "1" / e for e in extra]
    backend = {EngineKind.tensorrt: "tensorrt_plan", EngineKind.openvino: "openvino"}.get(info.kind, "onnxruntime")
    return TritonResult(repo, dst, dst / "config.pbtxt", backend, max_batch, files, notes)
