"""Explicit quantization: insert Q/DQ pairs into the FP32 ONNX following TensorRT's placement rules.

- weights: symmetric int8, per output channel (axis 0), Q->DQ on the FP32 initializer
- activations: symmetric int8 (zero point 0), per tensor, one Q/DQ pair per tensor shared by all
  quantized consumers, placed at the inputs of Conv / Gemm (so the conv runs in INT8)
- residual Add: both inputs quantized, so TensorRT fuses the add into the producing conv
- Concat (the Ghost module's): all inputs and the output share one scale, so the concat runs in INT8
  with no requantization; only when every consumer of the concat output is itself quantized
- nothing else gets Q/DQ (no dangling pairs TensorRT would have to run as standalone scale layers)
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper, numpy_helper

QMAX = 127.0


@dataclass
class Placement:
    """Which tensors get activation Q/DQ, with which shared-scale groups; which nodes get weight Q/DQ."""

    weight_nodes: list[str] = field(default_factory=list)         # Conv/Gemm node names
    act_consumers: dict[str, list[tuple[str, int]]] = field(default_factory=dict)  # tensor -> (node, input idx)
    groups: list[list[str]] = field(default_factory=list)         # tensors that must share a scale


def _consumers(model: onnx.ModelProto) -> dict[str, list[tuple[onnx.NodeProto, int]]]:
    cons: dict[str, list] = defaultdict(list)
    for n in model.graph.node:
        for i, t in enumerate(n.input):
            cons[t].append((n, i))
    return cons


def _is_residual_add(node: onnx.NodeProto, inits: set[str], consts: set[str]) -> bool:
    return node.op_type == "Add" and all(t not in inits and t not in consts for t in node.input)


def quantizable_nodes(model: onnx.ModelProto) -> list[str]:
    """The nodes whose precision the placement decides: Conv, Gemm, residual Add."""
    inits = {i.name for i in model.graph.initializer}
    consts = {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    return [n.name for n in model.graph.node
            if n.op_type in ("Conv", "Gemm") or _is_residual_add(n, inits, consts)]


def plan_placement(model: onnx.ModelProto, exclude: set[str] = frozenset(), concat_groups: bool = True,
                   residual_adds: bool = True) -> Placement:
    """Decide Q/DQ positions. ``exclude``: node names that stay in floating point.

    ``concat_groups`` / ``residual_adds`` False give the CPU variant (Q/DQ at conv inputs only, from the
    same ranges) that OpenVINO runs faithfully; TensorRT always gets both (the defaults)."""
    inits = {i.name for i in model.graph.initializer}
    consts = {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    cons = _consumers(model)
    pl = Placement()
    acts: dict[str, list[tuple[str, int]]] = defaultdict(list)
    quantized = set()
    for n in model.graph.node:
        if n.name in exclude:
            continue
        if n.op_type in ("Conv", "Gemm") and n.input[1] in inits:
            pl.weight_nodes.append(n.name)
            acts[n.input[0]].append((n.name, 0))
            quantized.add(n.name)
        elif residual_adds and _is_residual_add(n, inits, consts):
            for i, t in enumerate(n.input):
                acts[t].append((n.name, i))
            quantized.add(n.name)
    # Concat: quantize inputs with the output's scale when every consumer of the output is quantized
    for n in model.graph.node:
        if not concat_groups or n.op_type != "Concat" or n.name in exclude:
            continue
        out = n.output[0]
        users = cons.get(out, [])
        if users and all(u.name in quantized for u, _ in users):
            for i, t in enumerate(n.input):
                acts[t].append((n.name, i))
            pl.groups.append([out, *n.input])
    pl.act_consumers = dict(acts)
    return pl


def scale_groups(groups: list[list[str]]) -> dict[str, str]:
    """tensor -> the root of its shared-scale group (union-find over overlapping groups)."""
    parent: dict[str, str] = {}

    def find(a: str) -> str:
        parent.setdefault(a, a)
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    for g in groups:
        for t in g[1:]:
            ra, rb = find(t), find(g[0])
            if ra != rb:
                parent[ra] = rb
    return {t: find(t) for t in list(parent)}


def group_amax(amax: dict[str, float], groups: list[list[str]]) -> dict[str, float]:
    """Tensors of one group share the largest amax among them."""
    root = scale_groups(groups)
    best: dict[str, float] = {}
    for t, r in root.items():
        best[r] = max(best.get(r, 0.0), amax.get(t, 0.0))
    out = dict(amax)
    for t, r in root.items():
        out[t] = best[r]
    return out


def _const(name: str, arr: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(arr, name)


def insert_qdq(model: onnx.ModelProto, placement: Placement, amax: dict[str, float],
               unsigned: frozenset[str] | set[str] = frozenset(),
               weight_amax: dict[str, np.ndarray] | None = None) -> onnx.ModelProto:
    """A copy of model with symmetric int8 Q/DQ inserted per placement; amax per activation tensor.

    ``unsigned``: activation tensors known to be >= 0 (ReLU outputs) that get uint8 [0, amax] instead
    (zero point 0, scale amax/255): the same calibrated range on the CPU's native u8 grid (the OpenVINO
    CPU variant). TensorRT always gets the default (all symmetric int8).
    ``weight_amax``: per-channel weight amax by node name (refined weights keep their own grid); other
    nodes take max |w| per output channel."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    g = m.graph
    inits = {i.name: i for i in g.initializer}
    amax = group_amax(amax, placement.groups)
    new_nodes: list[onnx.NodeProto] = []
    new_inits: list[onnx.TensorProto] = []
    by_name = {n.name: n for n in g.node}

    # activations: one Q/DQ pair per tensor, right after its producer
    dq_of: dict[str, str] = {}
    for t in placement.act_consumers:
        a = float(amax.get(t, 0.0))
        u = t in unsigned
        scale = np.float32(max(a, 1e-8) / (255.0 if u else QMAX))
        s_name, z_name = f"{t}_scale", f"{t}_zero_point"
        new_inits += [_const(s_name, np.array(scale, np.float32)),
                      _const(z_name, np.array(0, np.uint8 if u else np.int8))]
        q_out, dq_out = f"{t}_quantized", f"{t}_dequantized"
        new_nodes.append(helper.make_node("QuantizeLinear", [t, s_name, z_name], [q_out], name=f"{t}_QuantizeLinear"))
        new_nodes.append(helper.make_node("DequantizeLinear", [q_out, s_name, z_name], [dq_out],
                                          name=f"{t}_DequantizeLinear"))
        dq_of[t] = dq_out
    for t, users in placement.act_consumers.items():
        for node_name, idx in users:
            by_name[node_name].input[idx] = dq_of[t]

    # weights: per output channel (axis 0), Q -> DQ on the float initializer
    for node_name in placement.weight_nodes:
        n = by_name[node_name]
        w_name = n.input[1]
        w = numpy_helper.to_array(inits[w_name]).astype(np.float32)
        ch_amax = np.abs(w.reshape(w.shape[0], -1)).max(axis=1)
        if weight_amax and node_name in weight_amax:
            ch_amax = np.asarray(weight_amax[node_name], np.float32)
        scale = (np.maximum(ch_amax, 1e-8) / QMAX).astype(np.float32)
        s_name, z_name = f"{w_name}_scale", f"{w_name}_zero_point"
        new_inits += [_const(s_name, scale), _const(z_name, np.zeros(w.shape[0], np.int8))]
        q_out, dq_out = f"{w_name}_quantized", f"{w_name}_dequantized"
        new_nodes.append(helper.make_node("QuantizeLinear", [w_name, s_name, z_name], [q_out], axis=0,
                                          name=f"{w_name}_QuantizeLinear"))
        new_nodes.append(helper.make_node("DequantizeLinear", [q_out, s_name, z_name], [dq_out], axis=0,
                                          name=f"{w_name}_DequantizeLinear"))
        n.input[1] = dq_out

    g.initializer.extend(new_inits)
    g.node.extend(new_nodes)
    _toposort(g)
    onnx.checker.check_model(m)
    return m


def _toposort(g: onnx.GraphProto) -> None:
    produced = {i.name for i in g.input} | {i.name for i in g.initializer} | {""}
    pending = list(g.node)
    ordered: list[onnx.NodeProto] = []
    while pending:
        rest = []
        for n in pending:
            if all(t in produced for t in n.input):
                ordered.append(n)
                produced.update(n.output)
            else:
                rest.append(n)
        if len(rest) == len(pending):
            raise RuntimeError(f"graph has a cycle or a missing input near {rest[0].name}")
        pending = rest
    del g.node[:]
    g.node.extend(ordered)


def strip_qdq(model: onnx.ModelProto) -> onnx.ModelProto:
    """The float graph behind a Q/DQ graph: every QuantizeLinear -> DequantizeLinear pair removed and its
    users fed the pair's input again. Node and tensor names stay; weights and biases are the ones the Q/DQ
    graph carries (refined by quantize), so a CPU backend quantizing it again starts from them."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    g = m.graph
    prod = {o: n for n in g.node for o in n.output}
    src: dict[str, str] = {}
    for n in g.node:
        if n.op_type == "DequantizeLinear" and n.input[0] in prod and prod[n.input[0]].op_type == "QuantizeLinear":
            src[n.output[0]] = prod[n.input[0]].input[0]
    paired_q = {prod[n.input[0]].name for n in g.node if n.op_type == "DequantizeLinear" and n.output[0] in src}
    keep = [n for n in g.node if not (n.op_type == "DequantizeLinear" and n.output[0] in src)
            and n.name not in paired_q]
    for n in keep:
        for i, t in enumerate(n.input):
            if t in src:
                n.input[i] = src[t]
    for o in g.output:
        if o.name in src:
            raise ValueError(f"graph output {o.name} is a DequantizeLinear output")
    del g.node[:]
    g.node.extend(keep)
    used = {t for n in keep for t in n.input}
    inits = [i for i in g.initializer if i.name in used]
    del g.initializer[:]
    g.initializer.extend(inits)
    return m


def _weight_quantizers(model: onnx.ModelProto) -> list[tuple[onnx.NodeProto, onnx.NodeProto]]:
    """(weight QuantizeLinear, the Conv/Gemm it feeds through its DequantizeLinear) pairs."""
    inits = {i.name for i in model.graph.initializer}
    prod = {o: n for n in model.graph.node for o in n.output}
    out = []
    for n in model.graph.node:
        if n.op_type not in ("Conv", "Gemm") or len(n.input) < 2:
            continue
        dq = prod.get(n.input[1])
        q = prod.get(dq.input[0]) if dq is not None and dq.op_type == "DequantizeLinear" else None
        if q is not None and q.op_type == "QuantizeLinear" and q.input[0] in inits:
            out.append((q, n))
    return out


def weight_grids(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """node -> per-channel weight amax (scale * 127) of a Q/DQ graph: the grid its weights were refined on."""
    inits = {i.name: i for i in model.graph.initializer}
    return {n.name: numpy_helper.to_array(inits[q.input[1]]).astype(np.float32) * np.float32(QMAX)
            for q, n in _weight_quantizers(model)}


def with_weight_bits(model: onnx.ModelProto, bits: int) -> onnx.ModelProto:
    """A copy of a Q/DQ graph whose weights are on a ``bits``-bit symmetric grid: codes in
    [-2**(bits-1), 2**(bits-1)] over the same per-channel range (7 bits: |w| <= 64, so on CPUs without
    VNNI no pair of u8 x s8 products can overflow an int16)."""
    qmax = float(2 ** (bits - 1))
    m = onnx.ModelProto()
    m.CopyFrom(model)
    inits = {i.name: i for i in m.graph.initializer}
    done: set[str] = set()
    for q, _ in _weight_quantizers(m):
        name = q.input[1]
        if name in done:
            continue
        s = numpy_helper.to_array(inits[name]).astype(np.float32)
        inits[name].CopyFrom(numpy_helper.from_array((s * np.float32(QMAX / qmax)).astype(np.float32), name))
        done.add(name)
    return m


def qdq_weight_code_max(model: onnx.ModelProto) -> int:
    """The largest |int8 code| any weight QuantizeLinear of a Q/DQ graph produces (the value the int8
    kernels multiply with)."""
    inits = {i.name: i for i in model.graph.initializer}
    worst = 0
    for q, _ in _weight_quantizers(model):
        w = numpy_helper.to_array(inits[q.input[0]]).astype(np.float32)
        s = numpy_helper.to_array(inits[q.input[1]]).astype(np.float32)
        s = s.reshape(-1, *[1] * (w.ndim - 1)) if s.ndim == 1 else s
        codes = np.clip(np.rint(w / s), -128, 127)
        worst = max(worst, int(np.abs(codes).max()))
    return worst
