"""OpenVINO on the CPU: the runtime a CPU user would pick, fed from ghostedge's own calibration.

OpenVINO reads the TensorRT-rule Q/DQ ONNX directly (each Q/DQ pair becomes a FakeQuantize; its
low-precision transformations then run the convs in u8/i8), so one calibration and one quantized graph
serve TensorRT on the GPU and OpenVINO on the CPU. Engines are saved as OpenVINO IR (``.xml`` + ``.bin``)
with a dynamic batch; ``precision_hint`` records whether float layers may run in bf16 (OpenVINO's
default on CPUs with AVX-512 BF16 / AMX) or must stay f32.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import GhostedgeError
from ..manifest import read_manifest
from .base import Backend, BaseRunner, TensorInfo
from .layers import annotate_layers


def import_openvino() -> Any:
    try:
        import openvino as ov
    except ImportError:
        raise GhostedgeError("OpenVINO is not installed: pip install 'openvino>=2026.4,<2026.5' (or use "
                             "--backend onnxruntime)") from None
    return ov


def save_ir(onnx_path: Path, dst: Path, img_size: int | None = None, layout: str = "nchw") -> Path:
    """ONNX -> OpenVINO IR (.xml + .bin), dynamic batch, weights kept as they are (no FP16 compression).
    ``layout`` nhwc: the input is [N, H, W, 3] (uint8 pixels). Written under temporary names and renamed,
    .bin first, so a reader never sees a half pair."""
    ov = import_openvino()
    model = ov.Core().read_model(str(onnx_path))
    if img_size:
        model.reshape([-1, img_size, img_size, 3] if layout == "nhwc" else [-1, 3, img_size, img_size])
    dst = Path(dst)
    if dst.suffix != ".xml":
        raise GhostedgeError(f"--out {dst}: an OpenVINO engine is an .xml (+ .bin) pair: pass a name ending in .xml")
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.stem}.{os.getpid()}.tmp.xml")
    try:
        ov.save_model(model, str(tmp), compress_to_fp16=False)
        os.replace(tmp.with_suffix(".bin"), dst.with_suffix(".bin"))
        os.replace(tmp, dst)
    finally:
        for f in (tmp, tmp.with_suffix(".bin")):
            if f.exists():
                f.unlink()
    return dst


def compile_config(threads: int = 0, precision_hint: str | None = "f32") -> dict:
    """``precision_hint`` None: OpenVINO's own default (bf16 float layers on CPUs that have bf16)."""
    cfg = {"PERFORMANCE_HINT": "LATENCY"}
    if precision_hint:
        cfg["INFERENCE_PRECISION_HINT"] = precision_hint
    if threads:
        cfg["INFERENCE_NUM_THREADS"] = int(threads)
    return cfg


class OpenVinoRunner(BaseRunner):
    """Runs an OpenVINO IR (or ONNX) on OpenVINO's CPU plugin, any batch."""

    backend = "openvino"

    def __init__(self, path: str | Path, threads: int = 0, precision_hint: str | None = "f32",
                 name: str | None = None):
        super().__init__(name or Path(path).name)
        self.path = Path(path)
        self.threads = threads
        self.precision_hint = precision_hint
        self.compiled = None

    def activate_impl(self) -> None:
        ov = import_openvino()
        core = ov.Core()
        try:
            model = core.read_model(str(self.path))
            shape = model.input(0).get_partial_shape()
            if shape.rank.is_static and shape.rank.get_length() == 4 and not shape[0].is_dynamic:
                model.reshape([-1, *[d.get_length() for d in list(shape)[1:]]])
            self.compiled = core.compile_model(model, "CPU", compile_config(self.threads, self.precision_hint))
        except RuntimeError as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise GhostedgeError(f"{self.path}: OpenVINO cannot load it ({first[:200]}): rebuild it with "
                                 "ghostedge build") from None
        self.request = self.compiled.create_infer_request()

    def infer_impl(self, x: np.ndarray) -> np.ndarray:
        try:
            return np.array(self.request.infer({0: x})[0], copy=True)
        except RuntimeError as e:
            if "incompatible" in str(e) or "dims" in str(e):
                shape = self.compiled.input(0).get_partial_shape()
                raise GhostedgeError(f"{self.path.name} takes inputs of shape {shape}, not {tuple(x.shape)}: bench it "
                                     "at the --img-size it was built for, or rebuild with --img-size") from None
            raise

    def deactivate_impl(self) -> None:
        self.request = self.compiled = None

    def io_impl(self) -> tuple[list[TensorInfo], list[TensorInfo]]:
        def info(port) -> TensorInfo:  # noqa: ANN001 (openvino Output port)
            shape = tuple(d.get_length() if d.is_static else -1 for d in port.get_partial_shape())
            return TensorInfo(port.get_any_name(), port.get_element_type().to_dtype().name, shape)

        return [info(p) for p in self.compiled.inputs], [info(p) for p in self.compiled.outputs]

    def layers(self) -> list[dict]:
        """Per-layer rows of the compiled (runtime) model: type, the precision it runs in."""
        rows = []
        for op in self.compiled.get_runtime_model().get_ordered_ops():
            info = op.get_rt_info()
            get = lambda k: info[k].astype(str) if k in info else "?"  # noqa: E731
            kind = get("layerType")
            if kind in ("Const", "Input", "Output"):
                continue
            prec = get("runtimePrecision").lower()
            rows.append({"name": op.get_friendly_name(), "type": kind,
                         "precision": {"u8": "int8", "i8": "int8", "f32": "fp32", "bf16": "bf16",
                                       "f16": "fp16"}.get(prec, prec),
                         "device": "CPU", "tactic": get("primitiveType")})
        return rows


def open_engine(path: Path, threads: int = 0, cuda_graph: bool = False,
                precision_hint: str | None = None) -> tuple[OpenVinoRunner, dict | None]:
    """A runner for an OpenVINO IR, with the float-layer precision hint (``precision_hint``, else what its
    manifest records, else f32) and the precision its manifest records."""
    from .onnxruntime import guess_precision

    man = read_manifest(path, required=False)
    hint = precision_hint or (man or {}).get("precision_hint") or "f32"
    runner = OpenVinoRunner(path, threads=threads, precision_hint=hint)
    runner.precision = (man or {}).get("precision") or guess_precision(path)
    return runner, man


def inspect_openvino(path: Path) -> list[dict]:
    """The compiled model's runtime view: each layer's type and the precision OpenVINO runs it in."""
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


BACKEND = Backend(name="openvino", label="ov", suffixes=(".ov.xml", ".xml"), loads=("onnx", "qdq-onnx"),
                  open_runner=open_engine, build=save_ir, inspect=inspect_openvino, companions=(".bin",))
