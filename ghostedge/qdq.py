"""Explicit quantization: insert Q/DQ pairs into the FP32 ONNX following TensorRT's placement rules.

- weights: symmetric int8, per output channel (axis 0), Q->DQ on the FP32 initializer
- activations: symmetric int8 (zero point 0), per tensor, one Q/DQ pair per tensor shared by all
  quantized consumers, placed at the inputs of Conv / Gemm (so the conv runs in INT8)
- residual Add: the input coming straight from a conv (BN folded; optionally through BN / ReLU) stays
  unquantized so TensorRT fuses the add into that conv, the other (residual) input is quantized; an Add
  with no conv-fed input (GhostNet's ordinary blocks: Ghost-module Concat + identity) gets both inputs
  quantized and runs as an INT8 elementwise layer. Sources: TensorRT developer guide, Q/DQ layer-placement
  recommendations (an extra Q/DQ on the conv's side "forces the separation of the convolution operator from
  the element-wise addition"); NVIDIA Model-Optimizer ``modelopt/onnx/quantization/graph_utils.py``
  ``build_non_residual_input_map`` + ``remove_partial_input_qdq`` (the input on the fusible conv backbone, found
  by ``get_fusible_backbone``, loses its Q/DQ); trex's ResNet QAT example, where the downsample 1x1 conv is
  fused "Conv_95 + Add_97 + Relu_98" with the other branch as its second input. In GhostNet that is the
  downsampling blocks, whose shortcut ends in a 1x1 conv.
- Concat (the Ghost module's): all inputs and the output share one scale, so the concat runs in INT8
  with no requantization; only when every consumer of the concat output is itself quantized (ModelOpt's
  ``get_concat_eliminated_tensors`` does the same, so TensorRT can eliminate the concat). NVIDIA/TensorRT#4366
  measured explicit Q/DQ around Concat ~30% slower than implicit INT8 on one network: ``tests/test_gpu.py``
  checks on a GPU that the convs still run INT8 and the residual adds fuse.
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


#: ops a conv's output may pass through and still fuse into it (ModelOpt's fusible paths: BN, ReLU)
_FUSIBLE = ("BatchNormalization", "Relu")


def conv_fed(tensor: str, producers: dict[str, onnx.NodeProto], cons: dict, depth: int = 2) -> bool:
    """Whether ``tensor`` comes straight from a Conv (optionally through BN / ReLU, each with no other consumer):
    the conv a following Add can fuse into."""
    n = producers.get(tensor)
    if n is None:
        return False
    if n.op_type == "Conv":
        return len(cons.get(tensor, [])) == 1
    if n.op_type in _FUSIBLE and depth > 0 and len(cons.get(tensor, [])) == 1:
        return conv_fed(n.input[0], producers, cons, depth - 1)
    return False


def residual_inputs(node: onnx.NodeProto, producers: dict[str, onnx.NodeProto], cons: dict) -> list[int]:
    """The inputs of a residual Add that get Q/DQ: all but one conv-fed input (the add fuses into that conv).
    When both are conv-fed, the first keeps its Q/DQ and the second is fused (ModelOpt picks by the longer path
    to the common ancestor; GhostNet has no such Add)."""
    fed = [i for i, t in enumerate(node.input) if conv_fed(t, producers, cons)]
    return [i for i in range(len(node.input)) if not fed or i != fed[-1]]


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
    producers = {o: n for n in model.graph.node for o in n.output}
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
            for i in residual_inputs(n, producers, cons):
                acts[n.input[i]].append((n.name, i))
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


def strip_qdq(model: onnx.ModelProto, snap_weights: bool = False) -> onnx.ModelProto:
    """The float graph behind a Q/DQ graph: every QuantizeLinear -> DequantizeLinear pair removed and its
    users fed the pair's input again. Node and tensor names stay; weights and biases are the ones the Q/DQ
    graph carries (refined by quantize), so a CPU backend quantizing it again starts from them.

    ``snap_weights``: a quantized weight is replaced by its dequantized value (its point on the Q/DQ graph's
    per-channel int8 grid), so a backend quantizing it again with per-channel max |w| scales (TensorRT's
    implicit INT8) lands on the same int8 weights wherever a channel reaches +-127."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    g = m.graph
    prod = {o: n for n in g.node for o in n.output}
    inits = {i.name: i for i in g.initializer}
    src: dict[str, str] = {}
    for n in g.node:
        if n.op_type == "DequantizeLinear" and n.input[0] in prod and prod[n.input[0]].op_type == "QuantizeLinear":
            q = prod[n.input[0]]
            src[n.output[0]] = q.input[0]
            if snap_weights and q.input[0] in inits:
                _snap(inits[q.input[0]], inits[q.input[1]], q)
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


def _snap(w_init: onnx.TensorProto, s_init: onnx.TensorProto, q: onnx.NodeProto) -> None:
    """Replace a weight initializer by DQ(Q(w)) (symmetric int8, the Q node's axis)."""
    w = numpy_helper.to_array(w_init).astype(np.float32)
    scale = numpy_helper.to_array(s_init).astype(np.float32)
    axis = next((a.i for a in q.attribute if a.name == "axis"), 1)
    if scale.ndim:
        shape = [1] * w.ndim
        shape[axis] = -1
        scale = scale.reshape(shape)
    w_init.CopyFrom(numpy_helper.from_array(np.clip(np.round(w / scale), -QMAX, QMAX) * scale, w_init.name))


def implicit_cache_tensors(model: onnx.ModelProto, placement: Placement) -> list[str]:
    """The tensors a legacy calibration cache carries so that TensorRT's implicit INT8 quantizes what the Q/DQ
    graph quantizes and nothing else: the Q/DQ graph's int8 activations, plus the outputs of its INT8 Conv/Gemm
    that only a ReLU or a quantized residual Add consumes (the tensor disappears into the fused layer, which
    needs a range for its INT8 kernel). Tensors of float layers (the squeeze-excite branch, --max-drop
    exclusions) get none, so implicit INT8 leaves those layers in FP16 as the Q/DQ graph does."""
    cons = _consumers(model)
    keep = list(placement.act_consumers)
    quantized_adds = {name for users in placement.act_consumers.values() for name, _ in users}
    by_name = {n.name: n for n in model.graph.node}
    for name in placement.weight_nodes:
        out = by_name[name].output[0]
        users = cons.get(out, [])
        if users and all(u.op_type == "Relu" or (u.op_type == "Add" and u.name in quantized_adds)
                         for u, _ in users) and out not in keep:
            keep.append(out)
    return keep


def off_grid_channels(qdq: onnx.ModelProto) -> tuple[int, int]:
    """(channels, of all quantized weight channels) whose largest |q| is below 127: there TensorRT's implicit
    INT8, which takes each channel's scale as max |w| / 127, puts the weights on a finer grid than the Q/DQ
    graph's (refined scales can exceed max |w|), so the two engines differ in those channels."""
    inits = {i.name: i for i in qdq.graph.initializer}
    off = total = 0
    for q, _ in _weight_quantizers(qdq):
        w = numpy_helper.to_array(inits[q.input[0]]).astype(np.float32)
        scale = numpy_helper.to_array(inits[q.input[1]]).astype(np.float32).reshape(-1, *([1] * (w.ndim - 1)))
        top = np.abs(np.clip(np.round(w / scale), -QMAX, QMAX)).reshape(w.shape[0], -1).max(1)
        off += int((top < QMAX).sum())
        total += w.shape[0]
    return off, total
