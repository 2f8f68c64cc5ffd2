"""ONNX Runtime on the CPU: the embedded default backend where there is no GPU.

The INT8 CPU graph is not the TensorRT graph. On x86 (VNNI) a symmetric s8s8 Q/DQ graph runs slower
than FP32, while asymmetric uint8 activations with int8 per-channel weights, every op quantized
(QOperator format: QLinearConv, QLinearConcat, QLinearAdd, ...), runs well ahead of it. Both are
materialized from the same calibration record (its per-tensor min/max).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx

from ..errors import GhostedgeError, atomic_path
from ..manifest import read_manifest
from ..record import CalibrationRecord, TensorRange
from .base import Backend, BaseRunner, TensorInfo
from .layers import annotate_layers


def concat_groups(model: onnx.ModelProto) -> list[list[str]]:
    return [[n.output[0], *n.input] for n in model.graph.node if n.op_type == "Concat"]


def shared_ranges(ranges: dict[str, tuple[float, float]], groups: list[list[str]]) -> dict[str, tuple[float, float]]:
    """Give every tensor of a Concat group the union range, so QLinearConcat is a plain copy."""
    out = dict(ranges)
    changed = True
    while changed:  # groups can chain (a concat output feeding another concat)
        changed = False
        for g in groups:
            present = [out[t] for t in g if t in out]
            if not present:
                continue
            lo, hi = min(r[0] for r in present), max(r[1] for r in present)
            for t in g:
                if t in out and out[t] != (lo, hi):
                    out[t] = (lo, hi)
                    changed = True
    return out


#: the onnxruntime releases quantize_for_cpu is tested with: it drives ONNX Runtime's ONNXQuantizer,
#: whose constructor is not a public API and has changed between releases (pyproject pins the same range)
ORT_TESTED = ((1, 32), (1, 33))


def check_ort_version(version: str) -> None:
    v = tuple(int("".join(c for c in p if c.isdigit()) or 0) for p in (version.split(".") + ["0"])[:2])
    lo, hi = ORT_TESTED
    if not lo <= v < hi:
        raise GhostedgeError(f"onnxruntime {version} is outside the range ghostedge's CPU INT8 builder is tested "
                             f"with ({lo[0]}.{lo[1]} to below {hi[0]}.{hi[1]}): pip install "
                             f"'onnxruntime>={lo[0]}.{lo[1]},<{hi[0]}.{hi[1]}', or build with --backend openvino")


def calibrated_ranges(tensors: dict[str, TensorRange]) -> dict[str, tuple[float, float]]:
    """Each tensor's observed min/max clipped to the calibration's chosen |range| (amax): the method's
    outlier clipping (mse, percentile, entropy) carries over to the asymmetric uint8 graph."""
    out = {}
    for k, t in tensors.items():
        out[k] = (max(t.min, -t.amax), min(t.max, t.amax))
    return out


def quantize_for_cpu(fp32: onnx.ModelProto, record: CalibrationRecord, exclude: list[str] | None = None,
                     reduce_range: bool = False) -> onnx.ModelProto:
    """u8s8 QOperator model from the FP32 ONNX and the calibration record's calibrated ranges.
    ``reduce_range``: weights on ONNX Runtime's 7-bit grid [-64, 64], which its documentation recommends for
    x86 CPUs without VNNI, where the u8s8 kernels add pairs of products in a saturating int16."""
    import onnxruntime

    check_ort_version(onnxruntime.__version__)
    from onnxruntime.quantization import QuantType
    from onnxruntime.quantization.calibrate import CalibrationMethod, TensorData, TensorsData
    from onnxruntime.quantization.onnx_quantizer import ONNXQuantizer
    from onnxruntime.quantization.quant_utils import QuantizationMode
    from onnxruntime.quantization.registry import QLinearOpsRegistry

    tensors = record.tensors
    names = {o for n in fp32.graph.node for o in n.output} | {i.name for i in fp32.graph.input}
    missing = sorted(names - set(tensors))
    if missing:
        raise GhostedgeError(f"the calibration record lacks ranges for {len(missing)} tensor(s) of the FP32 "
                             f"ONNX (e.g. {missing[0]}): it was made for another model; rerun ghostedge quantize")
    ranges = shared_ranges(calibrated_ranges(tensors), concat_groups(fp32))
    data = TensorsData(CalibrationMethod.MinMax, {
        k: TensorData(lowest=np.float32(min(lo, 0.0)), highest=np.float32(max(hi, 0.0)))
        for k, (lo, hi) in ranges.items()})
    model = onnx.shape_inference.infer_shapes(fp32)
    q = ONNXQuantizer(model, True, reduce_range, QuantizationMode.QLinearOps, True, QuantType.QInt8,
                      QuantType.QUInt8, data, [], list(exclude or []), list(QLinearOpsRegistry), {})
    q.quantize_model()
    return q.model.model


#: QOperator ops with int8 weights: op -> (weight input, weight zero-point input)
_WEIGHT_INPUTS = {"QLinearConv": (3, 5), "QLinearMatMul": (3, 5), "QGemm": (3, 5)}


def _weights(model: onnx.ModelProto):  # noqa: ANN202 (iterator of (node, weight, zero point) initializers)
    inits = {i.name: i for i in model.graph.initializer}
    for n in model.graph.node:
        if n.op_type in _WEIGHT_INPUTS:
            w, z = _WEIGHT_INPUTS[n.op_type]
            if len(n.input) > z and n.input[w] in inits and n.input[z] in inits:
                yield n, inits[n.input[w]], inits[n.input[z]]


def to_uint8_weights(model: onnx.ModelProto) -> onnx.ModelProto:
    """The same QOperator model with uint8 weights: every int8 weight + 128, zero point + 128 (the same
    values exactly). ONNX Runtime then runs its u8u8 kernels, which widen both operands to int16 before
    multiplying (no int16 saturation on x86 without VNNI) where the u8s8 ones use vpmaddubsw."""
    from onnx import numpy_helper

    m = onnx.ModelProto()
    m.CopyFrom(model)
    seen: set[str] = set()
    for _, w, z in _weights(m):
        for t in (w, z):
            if t.name in seen or t.data_type != onnx.TensorProto.INT8:
                continue
            a = numpy_helper.to_array(t).astype(np.int16) + 128
            t.CopyFrom(numpy_helper.from_array(a.astype(np.uint8), t.name))
            seen.add(t.name)
    return m


def qoperator_weight_code_max(model: onnx.ModelProto) -> int | None:
    """The largest |weight - zero point| of the model's int8 weights; None when every weight is uint8."""
    from onnx import numpy_helper

    worst = None
    for _, w, z in _weights(model):
        if w.data_type != onnx.TensorProto.INT8:
            continue
        a, zp = numpy_helper.to_array(w).astype(np.int32), numpy_helper.to_array(z).astype(np.int32)
        if zp.size > 1 and a.shape[0] == zp.size:      # per output channel on axis 0 (QLinearConv, QGemm transB)
            zp = zp.reshape(-1, *[1] * (a.ndim - 1))
        worst = max(worst or 0, int(np.abs(a - zp).max()))
    return worst


def u8s8_probe(uint8_weights: bool = False) -> int:
    """One 4x4 1x1 QLinearConv on this CPU's ONNX Runtime kernels whose exact int32 sum overflows any int16
    pair sum: 64 input channels of 255 times weights of 127 (2 * 255 * 127 = 64770 > 32767). Returns the
    output code: 200 when the kernels accumulate exactly, about 101 when they add product pairs in a
    saturating int16 (vpmaddubsw on x86 without VNNI); ``uint8_weights`` runs the u8u8 kernels instead."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    k, exact, target = 64, 64 * 255 * 127, 200
    w = np.full((1, k, 1, 1), 127, np.int16)
    wt, zp = (np.uint8, 128) if uint8_weights else (np.int8, 0)
    inits = [numpy_helper.from_array(np.array(1.0, np.float32), "one"),
             numpy_helper.from_array(np.array(0, np.uint8), "x_zp"),
             numpy_helper.from_array((w + zp).astype(wt), "w"),
             numpy_helper.from_array(np.array([zp], wt), "w_zp"),
             numpy_helper.from_array(np.array(exact / target, np.float32), "y_scale"),
             numpy_helper.from_array(np.array(0, np.uint8), "y_zp")]
    node = helper.make_node("QLinearConv", ["x", "one", "x_zp", "w", "one", "w_zp", "y_scale", "y_zp"], ["y"])
    g = helper.make_graph([node], "probe", [helper.make_tensor_value_info("x", TensorProto.UINT8, [1, k, 4, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.UINT8, [1, 1, 4, 4])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
    y = sess.run(None, {"x": np.full((1, k, 4, 4), 255, np.uint8)})[0]
    return int(y.min())


def optimize_to(model: onnx.ModelProto, dst: str | Path) -> Path:
    """Write the ONNX Runtime-optimized model (portable EXTENDED level) to dst, atomically."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    so.log_severity_level = 3
    with atomic_path(dst) as tmp:
        so.optimized_model_filepath = str(tmp)
        ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return Path(dst)


def ort_session(model: onnx.ModelProto | str | Path, threads: int = 0, optimize: bool = True,
                float_qdq: bool = False, optimized_path: str | Path | None = None):
    """A CPU session. ``float_qdq``: Q/DQ nodes stay float ops (no fusion into the host's int8 kernels, see
    ``estimate``); ``optimized_path``: where ONNX Runtime writes the graph it actually runs."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    if threads:
        so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    # no spinning: a thread pool left spinning slows whatever runs next in this process
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.log_severity_level = 3
    if not optimize:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    elif float_qdq:
        # EXTENDED, not ALL: the NCHWc layout of level ALL blocks channels by the host's vector width, so its
        # summation order (and a rounding flip at a Q/DQ) would differ between AVX2 and AVX-512 hosts
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        so.add_session_config_entry("session.disable_quant_qdq", "1")
        # level 1's DoubleQDQPairsRemover has its own switch: it would merge Q->DQ->Q->DQ under a new scale
        so.add_session_config_entry("session.disable_double_qdq_remover", "1")
    if optimized_path is not None:
        so.optimized_model_filepath = str(optimized_path)
    src = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    return ort.InferenceSession(src, so, providers=["CPUExecutionProvider"])


class OnnxRuntimeRunner(BaseRunner):
    """Runs an ONNX file on ONNX Runtime's CPU execution provider."""

    backend = "onnxruntime"

    def __init__(self, path: str | Path, threads: int = 0, name: str | None = None):
        super().__init__(name or Path(path).name)
        self.path = Path(path)
        self.threads = threads
        self.sess = None

    def activate_impl(self) -> None:
        try:
            self.sess = ort_session(self.path, threads=self.threads)
        except Exception as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise GhostedgeError(f"{self.path}: ONNX Runtime cannot load it ({first[:200]}): rebuild it with "
                                 "ghostedge build") from None
        self.input_name = self.sess.get_inputs()[0].name

    def infer_impl(self, x: np.ndarray) -> np.ndarray:
        return self.sess.run(None, {self.input_name: x})[0]

    def deactivate_impl(self) -> None:
        self.sess = None

    def io_impl(self) -> tuple[list[TensorInfo], list[TensorInfo]]:
        return [_tensor_info(a) for a in self.sess.get_inputs()], [_tensor_info(a) for a in self.sess.get_outputs()]


#: ONNX Runtime's type strings -> numpy dtype names
_ORT_TYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(double)": "float64",
              "tensor(int8)": "int8", "tensor(uint8)": "uint8", "tensor(int32)": "int32", "tensor(int64)": "int64",
              "tensor(bool)": "bool"}


def _tensor_info(arg) -> TensorInfo:  # noqa: ANN001 (onnxruntime.NodeArg)
    shape = tuple(d if isinstance(d, (int, str)) else -1 for d in (arg.shape or ()))
    return TensorInfo(arg.name, _ORT_TYPES.get(arg.type, arg.type), shape)


def guess_precision(path: Path) -> str:
    """An engine's precision from its name, for engines without a manifest."""
    n = path.name.lower()
    return "int8" if "int8" in n else "fp16" if "fp16" in n else "fp32"


def open_engine(path: Path, threads: int = 0, cuda_graph: bool = False,
                precision_hint: str | None = None) -> tuple[OnnxRuntimeRunner, dict | None]:
    """A runner for an ONNX engine (ghostedge's .ort.onnx or any .onnx), with its manifest when it has one.
    (``cuda_graph``, ``precision_hint``: other runtimes' options; ONNX Runtime on the CPU has neither.)"""
    try:
        onnx.load(str(path), load_external_data=False)
    except Exception:  # protobuf's DecodeError and friends: truncated or not ONNX at all
        raise GhostedgeError(f"{path} is not a readable ONNX model (truncated or another kind of file): "
                             "rebuild it with ghostedge build") from None
    runner = OnnxRuntimeRunner(path, threads=threads)
    man = read_manifest(path, required=False)
    runner.precision = (man or {}).get("precision") or guess_precision(path)
    return runner, man


#: QOperator / Q/DQ ops that compute or carry int8
INT8_OPS = {"QLinearConv", "QLinearAdd", "QLinearConcat", "QLinearMul", "QLinearGlobalAveragePool", "QGemm",
            "QLinearMatMul", "QuantizeLinear", "DequantizeLinear", "QLinearSigmoid"}


def inspect_onnx(path: Path) -> list[dict]:
    """The graph's nodes as layers: an int8 op runs int8; only a float Conv/Gemm in an INT8 engine is a fallback."""
    try:
        m = onnx.load(str(path), load_external_data=False)
    except Exception:
        raise GhostedgeError(f"{path} is not a readable ONNX model: rebuild it with ghostedge build") from None
    quantized = any(n.op_type in INT8_OPS for n in m.graph.node)
    rows = []
    for n in m.graph.node:
        prec = "int8" if n.op_type in INT8_OPS else "fp32"
        rows.append({"name": n.name or n.output[0], "type": n.op_type, "precision": prec, "device": "CPU",
                     "tactic": n.domain or "ai.onnx"})
    rows = annotate_layers(rows)
    for r in rows:  # only a float Conv/Gemm in an INT8 engine is a fallback; elsewhere float is the point
        if not quantized or r["type"] not in ("Conv", "Gemm", "MatMul"):
            r["flags"] = [f for f in r["flags"] if f != "fp32"]
    return rows


BACKEND = Backend(name="onnxruntime", label="ort", suffixes=(".ort.onnx", ".onnx"),
                  loads=("onnx", "calibration"), open_runner=open_engine, build=optimize_to, inspect=inspect_onnx,
                  fixed_shape=False, onnx_engine=True)
