"""PTQ refinement (per-tensor ranges, GPTQ rounding, bias correction), the interpreter it runs on, the
first-order sensitivity ranking and the --max-drop gate's verdict."""

from __future__ import annotations

import math

import numpy as np
import onnx
import pytest
import torch

from ghostedge.calibrate import Method, collect_stats
from ghostedge.drift import DriftResult, clopper_pearson, compare, judge
from ghostedge.estimate import qdq_logits
from ghostedge.export import INPUT_NAME, to_onnx_proto
from ghostedge.card import InputSpec, ModelCard
from ghostedge.qdq import insert_qdq, plan_placement, quantizable_nodes, strip_qdq
from ghostedge.qdq import group_amax
from ghostedge.quantize import amax_table, ort_logits, qdq_model, sensitivity
from ghostedge.refine import (RefineConfig, Refined, TorchGraph, _gptq, _quant_inputs, fq_act, fq_weight, refine,
                              weight_scale)

from .conftest import IMAGENETTE, needs_data, tiny_ghostnet


@pytest.fixture(scope="module")
def tiny():
    """(FP32 ONNX of a tiny 0.5x GhostNet at 48 px, placement, stats, mse amax, calibration images)."""
    m = tiny_ghostnet(3)
    proto = to_onnx_proto(m, ModelCard(width=0.5, num_classes=3, input=InputSpec(input_size=48)))
    rng = np.random.default_rng(0)
    x = rng.standard_normal((24, 3, 48, 48)).astype(np.float32)
    stats = collect_stats(proto, lambda: [x[i:i + 8] for i in range(0, len(x), 8)], INPUT_NAME, threads=1)
    pl = plan_placement(proto, SE(proto))
    return proto, pl, stats, amax_table(stats, Method.mse, 99.99), x


def SE(proto: onnx.ModelProto) -> set[str]:  # noqa: N802
    return {n.name for n in proto.graph.node if "/se/" in n.name}


def test_interpreter_matches_onnxruntime_fp32_and_qdq(tiny):
    proto, pl, stats, amax, x = tiny
    got = TorchGraph(proto).forward(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, ort_logits(proto, x, threads=1), rtol=1e-4, atol=1e-4)
    # the fake-quantized forward is the Q/DQ graph as ONNX defines it (ONNX Runtime without graph fusions:
    # same rounding, saturation, shared scales)
    q_ref = _reference_qdq(insert_qdq(proto, pl, amax), x)
    _same_outputs(quantized_logits(proto, pl, Refined(amax=amax), x), q_ref, got)


def quantized_logits(proto: onnx.ModelProto, pl, r: Refined, x: np.ndarray) -> np.ndarray:
    """The Q/DQ graph run by the interpreter with the refinement's fake quantization (fq_act, fq_weight)."""
    g = TorchGraph(proto)
    amax = group_amax(r.amax, pl.groups)
    quant_in = _quant_inputs(pl)
    env = {g.input: torch.from_numpy(x)}
    with torch.no_grad():
        for i, n in enumerate(g.nodes):
            ins = g.inputs(n, env)
            for idx in quant_in.get(n.name, ()):
                ins[idx] = fq_act(ins[idx], amax[n.input[idx]])
            if n.name in pl.weight_nodes:
                ins[1] = torch.from_numpy(r.weights[n.name]) if n.name in r.weights else \
                    fq_weight(ins[1], weight_scale(ins[1]))
                if n.name in r.biases:
                    ins[2] = torch.from_numpy(r.biases[n.name])
            env[n.output[0]] = g.run_node(n, ins)
            g.free(env, i)
    return env[g.output].numpy()


def _same_outputs(mine: np.ndarray, ref: np.ndarray, fp32: np.ndarray) -> None:
    """mine reproduces ref image by image, while ref differs from FP32 on every image. A value within float
    eps of a rounding boundary may round the other way after another summation order (thread count), and
    in a random net that flip carries to the logits, so a few images may differ; most must not."""
    same = np.abs(mine - ref).max(axis=1) < 1e-5
    assert same.mean() >= 0.5, same
    assert (np.abs(ref - fp32).max(axis=1) > 1e-5).all()


def _reference_qdq(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    from ghostedge.export import ort_session

    return ort_session(model, threads=1, optimize=False).run(None, {INPUT_NAME: x})[0]


def test_refined_graph_keeps_tensorrt_rules_and_int8_grid(tiny):
    proto, pl, stats, amax, x = tiny
    r = refine(proto, pl, stats, amax, x, RefineConfig(ranges="auto", images=16, chunk=8))
    assert r.range_choice and set(r.range_choice.values()) <= {"mse", "entropy", "percentile 99.9", "given",
                                                               "percentile 99.99", "percentile 99.999", "max"}
    assert set(r.weights) == set(pl.weight_nodes) and set(r.biases) == set(pl.weight_nodes)
    for node, w in r.weights.items():
        s = (r.weight_amax[node] / 127.0).astype(np.float32).reshape(-1, *[1] * (w.ndim - 1))
        q = w / s
        assert np.abs(q - np.round(q)).max() < 1e-3 and np.abs(q).max() <= 127.0 + 1e-3, node
    q = qdq_model(proto, SE(proto), r)
    onnx.checker.check_model(q)
    # the weight DQ of every refined node carries the refined grid, the int8 values Q recovers are exact
    _same_outputs(quantized_logits(proto, pl, r, x), _reference_qdq(q, x), ort_logits(proto, x, threads=1))


def test_gptq_beats_round_to_nearest_on_correlated_inputs():
    rng = np.random.default_rng(0)
    k, rows, p = 24, 16, 2000
    mix = rng.standard_normal((k, k))
    x = torch.from_numpy(rng.standard_normal((p, k)) @ mix).float()
    w = torch.from_numpy(rng.standard_normal((rows, k))).float()
    s = weight_scale(w)
    rtn = fq_weight(w, s)
    gq = _gptq(w[None], (x.t() @ x)[None], s[None, :, None])[0]
    assert torch.allclose(gq / s[:, None], torch.round(gq / s[:, None]), atol=1e-3)  # same grid
    err = lambda q: float(((x @ (w - q).t()) ** 2).sum())  # noqa: E731
    assert err(gq) < 0.7 * err(rtn)


def test_bias_correction_removes_the_mean_output_shift(tiny):
    proto, pl, stats, amax, x = tiny
    g = TorchGraph(proto)
    corr = refine(proto, pl, stats, amax, x, RefineConfig(ranges="fixed", rounding="nearest", bias_correction=True))
    # the first quantized conv: its mean output error per channel, over the calibration images
    first = next(n for n in g.nodes if n.name in pl.weight_nodes)
    xs = torch.from_numpy(x)
    ins = g.inputs(first, {g.input: xs})
    y_f = g.run_node(first, ins)
    xq = fq_act(xs, amax[first.input[0]])

    def shift(w, b):
        return (g.run_node(first, [xq, torch.from_numpy(w), torch.from_numpy(b)]) - y_f).mean(dim=(0, 2, 3)).abs()

    b0 = ins[2].numpy()
    before = shift(fq_weight(ins[1], weight_scale(ins[1])).numpy(), b0)
    after = shift(corr.weights[first.name], corr.biases[first.name])
    assert float(after.max()) < 1e-4 < float(before.max())


def test_strip_qdq_gives_back_the_float_graph(tiny):
    proto, pl, stats, amax, x = tiny
    back = strip_qdq(insert_qdq(proto, pl, amax))
    assert not any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in back.graph.node)
    assert sorted(n.name for n in back.graph.node) == sorted(n.name for n in proto.graph.node)
    np.testing.assert_allclose(ort_logits(back, x, threads=1), ort_logits(proto, x, threads=1), rtol=1e-5, atol=1e-5)


@needs_data
@pytest.mark.data
def test_sensitivity_ranks_a_damaged_layer_first_and_keeping_it_float_helps():
    """On the reference model and real images (a random tiny net's output hardly moves under any noise):
    one mid-network conv gets a weight grid 32x coarser than int8's; the first-order ranking must put it
    first (the measured ranking), and what it says keeping it in float gains is what it gains."""
    from ghostedge.data import load_images, normalize, sample_images
    from ghostedge.checkpoint import load_model

    model, info = load_model(None)
    x = normalize(load_images(sample_images(IMAGENETTE / "train", 24, seed=1), info.preprocess)[0], info.preprocess)
    proto = to_onnx_proto(model, info)
    stats = collect_stats(proto, lambda: [x[i:i + 16] for i in range(0, len(x), 16)], INPUT_NAME, threads=0)
    amax = amax_table(stats, Method.mse, 99.99)
    victim = "/blocks/blocks.5/blocks.5.0/ghost1/primary_conv/primary_conv.0/Conv"
    node = next(n for n in proto.graph.node if n.name == victim)
    w = torch.from_numpy(onnx.numpy_helper.to_array(next(i for i in proto.graph.initializer
                                                         if i.name == node.input[1])).copy())
    coarse = weight_scale(w) * 32
    r = Refined(amax=amax, weights={victim: fq_weight(w, coarse).numpy()},
                weight_amax={victim: (coarse * 127).numpy()})
    ref = ort_logits(proto, x)
    rows = sensitivity(proto, SE(proto), r, x, ref, threads=0)
    assert rows[0]["node"] == victim and rows[0]["kl_gain"] > 0
    assert {r["node"] for r in rows} == set(quantizable_nodes(proto)) - SE(proto)   # no Concat, no SE conv
    d_all = compare(ref, qdq_logits(qdq_model(proto, SE(proto), r), x))          # the estimate's arithmetic
    d_kept = compare(ref, qdq_logits(qdq_model(proto, SE(proto) | {victim}, r), x))
    assert d_kept.kl == pytest.approx(d_all.kl - rows[0]["kl_gain"])


def _cdf(k: int, n: int, p: float) -> float:
    """An independent binomial CDF (integer binomial coefficients), for n up to a few hundred."""
    return sum(math.comb(n, i) * p ** i * (1 - p) ** (n - i) for i in range(k + 1))


def test_clopper_pearson_solves_its_defining_equations():
    for k, n in [(21, 32), (60, 83), (1, 6), (40, 200), (3, 3), (0, 10)]:
        lo, hi = clopper_pearson(k, n)
        if k > 0:
            assert 1 - _cdf(k - 1, n, lo) == pytest.approx(0.025, abs=1e-9)
        if k < n:
            assert _cdf(k, n, hi) == pytest.approx(0.025, abs=1e-9)
    assert clopper_pearson(0, 10) == (0.0, pytest.approx(1 - 0.025 ** (1 / 10)))   # closed forms at the ends
    assert clopper_pearson(10, 10) == (pytest.approx(0.025 ** (1 / 10)), 1.0)
    try:
        from scipy.stats import binomtest
    except ImportError:
        return
    for k, n in [(21, 32), (500, 3925)]:
        ci = binomtest(k, n).proportion_ci(0.95, method="exact")
        assert clopper_pearson(k, n) == (pytest.approx(ci.low, abs=1e-9), pytest.approx(ci.high, abs=1e-9))


def _labelled(b: int, c: int, n: int) -> DriftResult:
    return DriftResult(n=n, agreement=100.0, cosine=1.0, kl=0.0, max_abs_logit_diff=0.0, ref_top1=80.0,
                       top1=80.0 - 100.0 * (b - c) / n, top1_drop_pts=100.0 * (b - c) / n,
                       ref_right_engine_wrong=b, ref_wrong_engine_right=c, labelled=True)


def test_gate_fails_only_when_the_drop_exceeds_the_budget_with_confidence():
    noisy = judge(_labelled(40, 20, 3925), 0.3)    # +0.51 pts, interval about +0.02..+1.0: not significant
    assert noisy.above and not noisy.fails and "not significantly" in noisy.message
    sure = judge(_labelled(120, 20, 3925), 0.3)    # +2.5 pts, interval well above 0.3
    assert sure.fails and "with 95% confidence" in sure.message and "paired score interval" in sure.message
    ok = judge(_labelled(10, 10, 3925), 0.3)
    assert not ok.fails and not ok.above and "within" in ok.message
    # unlabelled: the disagreement with FP32 and its Clopper-Pearson interval
    d = DriftResult(n=200, agreement=90.0, cosine=1.0, kl=0.0, max_abs_logit_diff=0.0)
    assert judge(d, 5.0).fails and not judge(d, 7.0).fails
