"""Label-free PTQ refinement of the TensorRT Q/DQ graph: per-tensor range choice, weight rounding, bias correction.

All three work on the calibration images only and change nothing TensorRT sees but numbers: the
activation scales of the Q/DQ pairs, the int8 weight values behind the per-channel weight DQ (scales
unchanged) and the float biases. The placement, the ops and the rules of the graph stay as they are.

- **range per tensor** (``ranges="auto"``, opt-in): every activation range method (mse, entropy,
  percentile 99.9 / 99.99 / 99.999, max) proposes an amax from the tensor's histogram; the one kept has
  the least Fisher-weighted quantization error (see ``choose_ranges``). Measured on three GhostNets it
  was no better than mse for every tensor on average (README), so the default keeps ``--method``.
- **weight rounding** (``rounding="gptq"``): weights are rounded column by column, each rounding error
  pushed onto the columns not yet rounded through the inverse Hessian of the layer's real (quantized)
  inputs, the way GPTQ/OPTQ does (Frantar et al., ICLR 2023; Optimal Brain Quantization), on the same
  per-channel symmetric grid. A closed-form alternative to AdaRound's per-layer optimization, fast
  enough for a CPU. On by default.
- **bias correction** (``bias_correction=True``): the mean shift that quantization leaves in each output
  channel of every quantized conv, measured on the calibration images with everything upstream already
  quantized, is taken out of the float bias (Nagel et al., "Data-Free Quantization", ICCV 2019, empirical
  variant; Finkelstein et al. 2019). On by default.

Everything runs on a small PyTorch interpreter of the FP32 ONNX graph (the ops GhostNet exports to), so
the numbers are those of the very graph the Q/DQ pairs go into. Implicit INT8 from the legacy cache (DLA
on TensorRT 8.x) takes the ranges only.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import numpy_helper

from .calibrate import TensorStats, amax_entropy, amax_mse, amax_percentile
from .modes import Ranges, Rounding
from .qdq import QMAX, Placement, group_amax, scale_groups
from .state import flush_denormals


class Unsupported(Exception):
    """The graph has an op the interpreter does not know: refinement is skipped, plain ranges are used."""


RANGE_CANDIDATES = ("mse", "entropy", "percentile 99.9", "percentile 99.99", "percentile 99.999", "max")


def candidate_amaxes(st: TensorStats) -> dict[str, float]:
    """Every range method's amax for one tensor (name -> amax)."""
    if st.hist is None or st.absmax == 0:
        return {"max": st.absmax}
    out = {"mse": amax_mse(st.hist, st.absmax), "entropy": amax_entropy(st.hist, st.absmax)}
    for p in (99.9, 99.99, 99.999):
        out[f"percentile {p}"] = amax_percentile(st.hist, st.absmax, p)
    out["max"] = st.absmax
    return out


# ---------------------------------------------------------------------------------------------
# fake quantization, as ONNX Runtime runs QuantizeLinear/DequantizeLinear: x times the float32 reciprocal of
# the scale, round half to even, saturate to int8, times the scale

def fq_act(x: torch.Tensor, amax: float) -> torch.Tensor:
    s = np.float32(max(float(amax), 1e-8) / QMAX)
    inv = torch.tensor(np.float32(1.0) / s)
    return torch.clamp(torch.round(x * inv), -128, 127) * torch.tensor(s)


def weight_scale(w: torch.Tensor, amax: torch.Tensor | None = None, qmax: float = QMAX) -> torch.Tensor:
    """Per-output-channel scale of a symmetric grid with codes in [-qmax, qmax] (127: int8; 64: the 7-bit
    grid of CPUs without VNNI)."""
    a = w.reshape(w.shape[0], -1).abs().amax(1) if amax is None else amax
    return (torch.clamp(a, min=1e-8) / qmax).to(torch.float32)


def fq_weight(w: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    s = scale.reshape(-1, *([1] * (w.dim() - 1)))
    return torch.clamp(torch.round(w * (1.0 / s)), -128, 127) * s


# ---------------------------------------------------------------------------------------------
# a PyTorch interpreter of the FP32 ONNX graph

def _attrs(node: onnx.NodeProto) -> dict:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _text(v: bytes | str) -> str:
    return v.decode() if isinstance(v, bytes) else v


def _resize_nearest(n: onnx.NodeProto, a: dict, ins: list[torch.Tensor | None]) -> torch.Tensor:
    """ONNX Resize in the one form ghostedge exports (GhostNetV2 / V3's attention gate): nearest, asymmetric,
    floor, by constant scales on H and W; as ONNX Runtime computes it in float32: output size
    int(in * scale), source index floor(out / scale)."""
    form = (_text(a.get("mode", "nearest")), _text(a.get("coordinate_transformation_mode", "half_pixel")),
            _text(a.get("nearest_mode", "round_prefer_floor")))
    sizes = ins[3] if len(ins) > 3 else None
    if form != ("nearest", "asymmetric", "floor") or len(ins) < 3 or ins[2] is None or sizes is not None:
        raise Unsupported(f"Resize {n.name} other than nearest / asymmetric / floor by constant scales")
    scales = [np.float32(v) for v in ins[2].tolist()]
    if scales[0] != 1 or scales[1] != 1:
        raise Unsupported(f"Resize {n.name} scales batch or channels")
    x = ins[0]
    for ax in (2, 3):
        s, n_in = scales[ax], x.shape[ax]
        n_out = int(np.float32(n_in) * s)
        idx = np.minimum(np.floor(np.arange(n_out, dtype=np.float32) / s).astype(np.int64), n_in - 1)
        x = x.index_select(ax, torch.from_numpy(idx))
    return x


class TorchGraph:
    """The FP32 ONNX graph, run op by op in PyTorch (float32, CPU)."""

    OPS = {"Conv", "Gemm", "Relu", "Add", "Mul", "Concat", "GlobalAveragePool", "HardSigmoid", "Sigmoid",
           "Flatten", "Slice", "Clip", "Reshape", "Identity", "MaxPool", "AveragePool", "HardSwish", "Constant",
           "Resize"}

    def __init__(self, model: onnx.ModelProto):
        self.model = model
        self.inits = {i.name: torch.from_numpy(numpy_helper.to_array(i).copy()) for i in model.graph.initializer}
        for n in model.graph.node:
            if n.op_type == "Constant":
                self.inits[n.output[0]] = torch.from_numpy(numpy_helper.to_array(_attrs(n)["value"]).copy())
        self.nodes = [n for n in model.graph.node if n.op_type != "Constant"]
        bad = sorted({n.op_type for n in self.nodes} - self.OPS)
        if bad:
            raise Unsupported(f"ops {', '.join(bad)}")
        self.input = model.graph.input[0].name
        self.output = model.graph.output[0].name
        self.last_use: dict[str, int] = {}
        for i, n in enumerate(self.nodes):
            for t in n.input:
                self.last_use[t] = i
        self.last_use[self.output] = len(self.nodes)

    def value(self, env: dict, t: str) -> torch.Tensor:
        return env[t] if t in env else self.inits[t]

    def run_node(self, n: onnx.NodeProto, ins: list[torch.Tensor | None]) -> torch.Tensor:
        a = _attrs(n)
        op = n.op_type
        if op == "Conv":
            k = a.get("kernel_shape", list(ins[1].shape[2:]))
            pads = a.get("pads", [0] * (2 * len(k)))
            if a.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
                raise Unsupported("Conv auto_pad")
            x = ins[0]
            if pads[: len(k)] != pads[len(k):]:
                x = F.pad(x, [p for i in reversed(range(len(k))) for p in (pads[i], pads[i + len(k)])])
                pad = 0
            else:
                pad = tuple(pads[: len(k)])
            return F.conv2d(x, ins[1], ins[2] if len(ins) > 2 else None, tuple(a.get("strides", [1, 1])), pad,
                            tuple(a.get("dilations", [1, 1])), a.get("group", 1))
        if op == "Gemm":
            x, w = ins[0], ins[1]
            if a.get("transA", 0):
                x = x.t()
            if a.get("transB", 0):
                w = w.t()
            y = a.get("alpha", 1.0) * (x @ w)
            return y + a.get("beta", 1.0) * ins[2] if len(ins) > 2 and ins[2] is not None else y
        if op == "Relu":
            return torch.relu(ins[0])
        if op == "Add":
            return ins[0] + ins[1]
        if op == "Mul":
            return ins[0] * ins[1]
        if op == "Concat":
            return torch.cat(ins, dim=a["axis"])
        if op == "GlobalAveragePool":
            return ins[0].mean(dim=(2, 3), keepdim=True)
        if op == "HardSigmoid":
            return torch.clamp(a.get("alpha", 0.2) * ins[0] + a.get("beta", 0.5), 0, 1)
        if op == "HardSwish":
            return F.hardswish(ins[0])
        if op == "Sigmoid":
            return torch.sigmoid(ins[0])
        if op == "Flatten":
            ax = a.get("axis", 1)
            return ins[0].reshape(int(np.prod(ins[0].shape[:ax])) if ax else 1, -1)
        if op == "Identity":
            return ins[0]
        if op == "Clip":
            lo = ins[1] if len(ins) > 1 and ins[1] is not None else None
            hi = ins[2] if len(ins) > 2 and ins[2] is not None else None
            return torch.clamp(ins[0], None if lo is None else float(lo), None if hi is None else float(hi))
        if op == "Reshape":
            shape = [int(s) for s in ins[1].tolist()]
            shape = [ins[0].shape[i] if s == 0 else s for i, s in enumerate(shape)]
            return ins[0].reshape(shape)
        if op == "Slice":
            starts, ends = ins[1].tolist(), ins[2].tolist()
            axes = ins[3].tolist() if len(ins) > 3 and ins[3] is not None else list(range(len(starts)))
            steps = ins[4].tolist() if len(ins) > 4 and ins[4] is not None else [1] * len(starts)
            idx = [slice(None)] * ins[0].dim()
            for s, e, ax, st in zip(starts, ends, axes, steps):
                if st != 1:
                    raise Unsupported("Slice with a step")
                dim = ins[0].shape[ax]
                idx[ax] = slice(max(min(s, dim), -dim), max(min(e, dim), -dim - 1))
            return ins[0][tuple(idx)]
        if op in ("MaxPool", "AveragePool"):
            k = a["kernel_shape"]
            pads = a.get("pads", [0] * 4)
            if pads[:2] != pads[2:]:
                raise Unsupported(f"{op} with asymmetric pads")
            fn = F.max_pool2d if op == "MaxPool" else F.avg_pool2d
            return fn(ins[0], k, a.get("strides", k), pads[:2])
        if op == "Resize":
            return _resize_nearest(n, a, ins)
        raise Unsupported(op)

    def inputs(self, n: onnx.NodeProto, env: dict) -> list[torch.Tensor | None]:
        return [self.value(env, t) if t else None for t in n.input]

    def free(self, env: dict, i: int) -> None:
        for t in list(env):
            if self.last_use.get(t, -1) <= i and t != self.output:
                del env[t]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        env = {self.input: x}
        with torch.no_grad():
            for i, n in enumerate(self.nodes):
                env[n.output[0]] = self.run_node(n, self.inputs(n, env))
                self.free(env, i)
        return env[self.output]


# ---------------------------------------------------------------------------------------------

@dataclass
class RefineConfig:
    ranges: Ranges = Ranges.fixed   # fixed: the amax table as given (the method's); auto: per-tensor choice
    rounding: Rounding = Rounding.gptq
    bias_correction: bool = True
    images: int = 256               # calibration images the refinement runs on (a subset of the calibration set)
    chunk: int = 32
    weight_qmax: float = QMAX       # the weight grid's largest code: 127 (int8), 64 (7-bit, CPUs without VNNI)


@dataclass
class Refined:
    amax: dict[str, float]
    weights: dict[str, np.ndarray] = field(default_factory=dict)        # node -> rounded float weight (s * q)
    weight_amax: dict[str, np.ndarray] = field(default_factory=dict)    # node -> per-channel amax (scale * 127)
    biases: dict[str, np.ndarray] = field(default_factory=dict)         # node -> corrected bias
    range_choice: dict[str, str] = field(default_factory=dict)          # tensor -> range method kept
    seconds: dict[str, float] = field(default_factory=dict)

    def summary(self) -> dict:
        counts: dict[str, int] = {}
        for m in self.range_choice.values():
            counts[m] = counts.get(m, 0) + 1
        return {"range_methods": dict(sorted(counts.items(), key=lambda kv: -kv[1])),
                "weights_rounded": len(self.weights), "biases_corrected": len(self.biases),
                "seconds": {k: round(v, 1) for k, v in self.seconds.items()}}


def _units(placement: Placement) -> dict[str, str]:
    """tensor -> unit (the tensors sharing one scale: a concat group, or the tensor alone)."""
    root = scale_groups(placement.groups)
    return {t: root.get(t, t) for t in set(placement.act_consumers) | set(root)}


def _in_chunks(x: np.ndarray, chunk: int):
    for i in range(0, len(x), chunk):
        yield torch.from_numpy(np.ascontiguousarray(x[i:i + chunk]))


def choose_ranges(fp32: onnx.ModelProto, placement: Placement, stats: dict[str, TensorStats],
                  base_amax: dict[str, float], x: np.ndarray, chunk: int = 16,
                  g: TorchGraph | None = None, seed: int = 0) -> tuple[dict[str, float], dict[str, str]]:
    """Per unit (a tensor, or the tensors of a concat group sharing one scale): the candidate amax with
    the least Fisher-weighted quantization error sum(F * (Q(t) - t)^2), F the squared gradient of the
    model's log-likelihood (labels drawn from the FP32 model's own softmax, so no labels are needed) with
    respect to t: the second-order estimate of what the error costs at the output (as BRECQ, Li et al.
    ICLR 2021, weights its reconstruction), rather than the error of the tensor alone."""
    g = g or TorchGraph(fp32)
    unit = _units(placement)
    members: dict[str, list[str]] = {}
    for t, u in unit.items():
        members.setdefault(u, []).append(t)
    # a unit's candidates come from the histogram of its widest member (for a concat group: the output)
    cands: dict[str, dict[str, float]] = {}
    for u, ts in members.items():
        widest = max((t for t in ts if t in stats), key=lambda t: stats[t].absmax, default=None)
        if widest is None:
            continue
        c = candidate_amaxes(stats[widest])
        given = max(base_amax.get(t, 0.0) for t in ts)
        if all(abs(given - v) > 1e-12 * max(given, 1.0) for v in c.values()):
            c["given"] = given
        cands[u] = c
    err: dict[str, dict[str, float]] = {u: {k: 0.0 for k in c} for u, c in cands.items()}
    watch = {t for t in unit if unit[t] in cands}
    gen = torch.Generator().manual_seed(seed)
    for xb in _in_chunks(x, chunk):
        inp = xb.clone().requires_grad_(g.input in watch)
        env = {g.input: inp}
        kept: dict[str, torch.Tensor] = {g.input: inp} if g.input in watch else {}
        for i, n in enumerate(g.nodes):
            y = g.run_node(n, g.inputs(n, env))
            if n.output[0] in watch:
                y.retain_grad()
                kept[n.output[0]] = y
            env[n.output[0]] = y
            g.free(env, i)
        logits = env[g.output]
        with torch.no_grad():
            y_s = torch.multinomial(torch.softmax(logits, 1), 1, generator=gen)[:, 0]
        torch.nn.functional.cross_entropy(logits, y_s, reduction="sum").backward()
        with torch.no_grad():
            for t, v in kept.items():
                if v.grad is None:
                    continue
                f = v.grad ** 2
                u = unit[t]
                for k, amax in cands[u].items():
                    err[u][k] += float((f * (fq_act(v, amax) - v) ** 2).sum())
    amax = dict(base_amax)
    choice: dict[str, str] = {}
    for u, e in err.items():
        best = min(e, key=lambda k: (e[k], k != "given"))
        for t in members[u]:
            # each member keeps at most its own range; the group then shares the widest (qdq.group_amax)
            amax[t] = min(cands[u][best], stats[t].absmax) if t in stats else cands[u][best]
            choice[t] = best
    return amax, choice


def _gptq(w: torch.Tensor, h: torch.Tensor, scale: torch.Tensor, damp: float = 0.01,
          qmax: float = QMAX) -> torch.Tensor:
    """GPTQ/OBQ rounding of w (G, R, K) on a fixed per-row grid (G, R, 1) given Hessians h (G, K, K)."""
    w = w.clone().double()
    h = h.double()
    k = h.shape[-1]
    # an input that is zero on every calibration image gets a unit diagonal: rounded to nearest, its
    # error pushed nowhere (GPTQ zeroes such weights; a deployed image may well light that input up)
    dead = torch.diagonal(h, dim1=-2, dim2=-1) == 0
    h = h + torch.diag_embed(dead.double())
    lam = damp * torch.diagonal(h, dim1=-2, dim2=-1).mean(-1)
    h = h + lam[:, None, None] * torch.eye(k, dtype=h.dtype)
    hinv = torch.cholesky_inverse(torch.linalg.cholesky(h))
    u = torch.linalg.cholesky(hinv, upper=True)            # (G, K, K)
    s = scale.double()
    q = torch.zeros_like(w)
    for i in range(k):
        col = w[:, :, i]
        qc = torch.clamp(torch.round(col / s[:, :, 0]), -qmax, qmax) * s[:, :, 0]
        q[:, :, i] = qc
        e = (col - qc) / u[:, i, i][:, None]
        if i + 1 < k:
            w[:, :, i + 1:] -= e[:, :, None] * u[:, i, i + 1:][:, None, :]
    return q.float()


def _conv_cols(n: onnx.NodeProto, x: torch.Tensor, groups: int, kshape) -> torch.Tensor:
    """im2col of a conv input: (G, P, K) with K = Cin/G * kh * kw."""
    a = _attrs(n)
    pads = a.get("pads", [0, 0, 0, 0])
    if pads[:2] != pads[2:]:
        x = F.pad(x, [pads[1], pads[3], pads[0], pads[2]])
        pad = 0
    else:
        pad = tuple(pads[:2])
    cols = F.unfold(x, tuple(kshape), dilation=tuple(a.get("dilations", [1, 1])), padding=pad,
                    stride=tuple(a.get("strides", [1, 1])))          # (N, Cin*kh*kw, L)
    nimg, ck, L = cols.shape
    cols = cols.reshape(nimg, groups, ck // groups, L).permute(1, 0, 3, 2).reshape(groups, nimg * L, ck // groups)
    return cols


@flush_denormals()
def refine(fp32: onnx.ModelProto, placement: Placement, stats: dict[str, TensorStats],
           base_amax: dict[str, float], x: np.ndarray, cfg: RefineConfig,
           tick: Callable[[str, int, int], None] | None = None) -> Refined:
    """Run the refinements cfg asks for on calibration images x; the FP32 graph is left untouched."""
    res = Refined(amax=dict(base_amax))
    if cfg.ranges == "fixed" and cfg.rounding == "nearest" and not cfg.bias_correction:
        return res
    g = TorchGraph(fp32)
    tick = tick or (lambda what, done, total: None)
    x = x[: cfg.images]
    t0 = time.time()
    if cfg.ranges == "auto":
        tick("choosing ranges", 0, 1)
        res.amax, res.range_choice = choose_ranges(fp32, placement, stats, base_amax, x, cfg.chunk, g)
        res.seconds["ranges"] = time.time() - t0
    if cfg.rounding == "nearest" and not cfg.bias_correction:
        return res
    t1 = time.time()
    amax = group_amax(res.amax, placement.groups)
    quant_in = _quant_inputs(placement)
    weighted = set(placement.weight_nodes)
    # both paths over the whole subset, node by node: FP32 reference and the quantized model so far
    xs = torch.from_numpy(np.ascontiguousarray(x))
    env_f = {g.input: xs}
    env_q = {g.input: xs}
    total = len(g.nodes)
    with torch.no_grad():
        for i, n in enumerate(g.nodes):
            ins_f = g.inputs(n, env_f)
            y_f = g.run_node(n, ins_f)
            ins_q = g.inputs(n, env_q)
            for idx in quant_in.get(n.name, ()):
                ins_q[idx] = fq_act(ins_q[idx], amax.get(n.input[idx], 0.0))
            if n.name in weighted:
                w = ins_q[1]
                scale = weight_scale(w, qmax=cfg.weight_qmax)
                if n.op_type == "Conv":
                    groups = _attrs(n).get("group", 1)
                    if cfg.rounding == "gptq":
                        # the layer's input Hessian X^T X, from as many images as give 16 rows per column
                        h, rows, k = None, 0, w[0].numel()
                        for c in range(0, len(x), cfg.chunk):
                            cols = _conv_cols(n, ins_q[0][c:c + cfg.chunk], groups, w.shape[2:])
                            hc = cols.transpose(1, 2) @ cols
                            h = hc if h is None else h + hc
                            rows += cols.shape[1]
                            if rows >= 16 * k:
                                break
                        wg = w.reshape(groups, w.shape[0] // groups, -1)
                        sg = scale.reshape(groups, w.shape[0] // groups, 1)
                        wq = _gptq(wg, h, sg, qmax=cfg.weight_qmax).reshape(w.shape)
                    else:
                        wq = fq_weight(w, scale)
                else:  # Gemm: rows of B (transB) are output channels
                    wq = fq_weight(w, scale)
                    if cfg.rounding == "gptq" and _attrs(n).get("transB", 0):
                        xin = ins_q[0]
                        wq = _gptq(w[None], (xin.t() @ xin)[None], scale[None, :, None],
                                   qmax=cfg.weight_qmax)[0]
                ins_q[1] = wq
                res.weights[n.name] = wq.numpy()
                res.weight_amax[n.name] = (scale * QMAX).numpy()
                y_q = g.run_node(n, ins_q)
                if cfg.bias_correction:
                    dims = (0, 2, 3) if y_q.dim() == 4 else (0,)
                    delta = (y_q - y_f).mean(dim=dims)
                    b = ins_q[2] if len(ins_q) > 2 and ins_q[2] is not None else torch.zeros(w.shape[0])
                    res.biases[n.name] = (b - delta).numpy().astype(np.float32)
                    y_q = y_q - (delta.reshape(1, -1, 1, 1) if y_q.dim() == 4 else delta)
            else:
                y_q = g.run_node(n, ins_q)
            env_f[n.output[0]] = y_f
            env_q[n.output[0]] = y_q
            g.free(env_f, i)
            g.free(env_q, i)
            tick("rounding weights, correcting biases", i + 1, total)
    res.seconds["weights"] = time.time() - t1
    return res


def apply_weights(fp32: onnx.ModelProto, refined: Refined, skip: set[str] = frozenset()) -> onnx.ModelProto:
    """A copy of the FP32 graph whose quantized nodes carry their own refined weights and biases (new
    initializers, so an initializer shared by several nodes is never changed under another); nodes in
    ``skip`` (kept in float) keep their float ones."""
    m = onnx.ModelProto()
    m.CopyFrom(fp32)
    new = []
    for n in m.graph.node:
        if n.name in skip:
            continue
        if n.name in refined.weights:
            name = f"{n.name}_weight_refined"
            new.append(numpy_helper.from_array(refined.weights[n.name].astype(np.float32), name))
            n.input[1] = name
        if n.name in refined.biases:
            name = f"{n.name}_bias_corrected"
            new.append(numpy_helper.from_array(refined.biases[n.name], name))
            while len(n.input) < 3:
                n.input.append("")
            n.input[2] = name
    m.graph.initializer.extend(new)
    return m


def _quant_inputs(placement: Placement) -> dict[str, set[int]]:
    """node -> indices of its inputs that pass through an activation Q/DQ pair."""
    out: dict[str, set[int]] = {}
    for t, users in placement.act_consumers.items():
        for node, idx in users:
            out.setdefault(node, set()).add(idx)
    return out
