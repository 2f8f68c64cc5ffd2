"""The host-independent estimate of TensorRT INT8: the Q/DQ graph computed with TensorRT's arithmetic.

TensorRT's INT8 kernels multiply int8 by int8 and accumulate in int32: nothing saturates, and the result
is the Q/DQ graph's float semantics (QuantizeLinear: round-half-even(x / s) clamped to [-128, 127];
DequantizeLinear: q * s) up to float rounding. ONNX Runtime's default CPU session does something else: it
fuses DequantizeLinear -> Conv -> QuantizeLinear into QLinearConv and runs the host's int8 kernels, which
requantize in integer arithmetic and, on x86 without VNNI, add pairs of u8 x s8 products into a saturating
int16 (vpmaddubsw). The figure quantize reported for a TensorRT engine then depended on the CPU it was
computed on (97.38% vs 98.04% agreement for one GhostNet on an AVX2-only EPYC, issue #16).

So every accuracy figure that stands for TensorRT INT8 (quantize's drift, the ``--max-drop`` gate and its
search, the CPU engine choice's reference) is computed here: ONNX Runtime with its Q/DQ fusions off
(``session.disable_quant_qdq``), at the EXTENDED optimization level (float fusions only; no NCHWc layout,
whose channel blocking follows the host's vector width), so every QuantizeLinear / DequantizeLinear runs as
a float op and every conv in float32 on dequantized values. The PyTorch interpreter of ``refine.py`` is a
second, independent computation of the same numbers; the tests hold the two to each other image by image.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import onnx

#: ONNX Runtime ops that compute with the host's integer kernels (the result of a Q/DQ fusion)
INT8_KERNEL_OPS = frozenset({
    "QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger", "QGemm", "QLinearAdd", "QLinearMul",
    "QLinearConcat", "QLinearAveragePool", "QLinearGlobalAveragePool", "QLinearSigmoid", "QLinearLeakyRelu",
    "QLinearSoftmax", "QLinearReduceMean", "QLinearWhere", "QLinearConvTranspose", "QAttention",
    "DynamicQuantizeMatMul", "MatMulIntegerToFloat", "DynamicQuantizeLSTM", "QEmbedLayerNormalization",
    "NhwcQLinearConv", "QLinearPRelu", "QLinearHardSigmoid",
})

#: what reports name as the arithmetic of the estimate
MEASURED_WITH = "ONNX Runtime CPU, Q/DQ in float (TensorRT's arithmetic, not this CPU's int8 kernels)"


def estimate_session(model: onnx.ModelProto | str | Path, threads: int = 0,
                     optimized_path: str | Path | None = None):  # noqa: ANN201 (onnxruntime.InferenceSession)
    """An ONNX Runtime session that runs a Q/DQ graph with Q/DQ as float ops (see the module docstring)."""
    from .export import ort_session

    return ort_session(model, threads=threads, float_qdq=True, optimized_path=optimized_path)


def qdq_runner(model: onnx.ModelProto | str | Path, threads: int = 0):  # noqa: ANN201 (batch -> logits)
    """One estimate session as a batch -> logits callable (for streamed images)."""
    sess = estimate_session(model, threads=threads)
    name = sess.get_inputs()[0].name
    return lambda xb: sess.run(None, {name: xb})[0]


def qdq_logits(model: onnx.ModelProto | str | Path, x: np.ndarray, batch: int = 64, threads: int = 0) -> np.ndarray:
    """Logits of a Q/DQ graph with TensorRT's arithmetic, in batches of ``batch``."""
    run = qdq_runner(model, threads)
    outs = [run(x[i:i + batch]) for i in range(0, len(x), batch)]
    return np.concatenate(outs) if outs else np.zeros((0, 0), np.float32)


def executed_graph(model: onnx.ModelProto | str | Path, threads: int = 1) -> onnx.ModelProto:
    """The graph the estimate session really runs, after ONNX Runtime's optimizations."""
    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / "optimized.onnx"
        estimate_session(model, threads=threads, optimized_path=out)
        return onnx.load(str(out))


def int8_kernels(model: onnx.ModelProto) -> list[str]:
    """Nodes of a (session-optimized) graph that compute with the host's int8 kernels: none may be left in
    the graph of an estimate."""
    return [f"{n.op_type} {n.name}" for n in model.graph.node if n.op_type in INT8_KERNEL_OPS]
