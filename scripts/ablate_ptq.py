"""What each refinement of ghostedge's INT8 calibration adds, on one model, side by side.

Same model, same calibration images (512 from imagenette/train, class-balanced, seed 0, as `quantize`),
every eval image; each row is the TensorRT Q/DQ graph run by ONNX Runtime CPU against FP32 PyTorch.

    python scripts/ablate_ptq.py [--data ../shared/datasets/imagenette] [--weights W] [--calib DIR]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


from ghostedge.calibrate import Method, collect_stats
from ghostedge.data import batches
from ghostedge.drift import compare, drop_interval
from ghostedge.export import INPUT_NAME, to_onnx_proto
from ghostedge.qdq import insert_qdq, plan_placement
from ghostedge.estimate import qdq_logits as ort_logits  # Q/DQ graphs with TensorRT's arithmetic
from ghostedge.quantize import DEFAULT_EXCLUDE_PATTERNS, _excluded_nodes, amax_table
from ghostedge.refine import RefineConfig, apply_weights, refine

from compare_ptq import side_by_side_data  # scripts/ is on sys.path when run as a script


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, default=Path("../shared/datasets/imagenette"))
    ap.add_argument("--weights", type=Path, default=None)
    ap.add_argument("--calib", type=Path, default=None, help="default: DATA/train")
    ap.add_argument("--num-images", type=int, default=512)
    ap.add_argument("--max-eval", type=int, default=0)
    ap.add_argument("--variants", default="all", help="comma-separated row numbers (0 = the first)")
    ap.add_argument("--refine-images", type=int, default=RefineConfig.images)
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args()

    model, info, cdir, x_cal, x_ev, labels, ref = side_by_side_data(a.data, a.weights, a.calib, a.num_images,
                                                                    a.max_eval)
    fp32 = to_onnx_proto(model, info)
    t0 = time.time()
    stats = collect_stats(fp32, lambda: batches(x_cal, 32), INPUT_NAME)
    t_stats = time.time() - t0
    pl = plan_placement(fp32, set(_excluded_nodes(fp32, DEFAULT_EXCLUDE_PATTERNS)))
    variants = {
        "mse (0.6 default)": RefineConfig(ranges="fixed", rounding="nearest", bias_correction=False),
        "+ range per tensor": RefineConfig(ranges="auto", rounding="nearest", bias_correction=False),
        "+ bias correction": RefineConfig(ranges="fixed", rounding="nearest", bias_correction=True),
        "+ gptq rounding": RefineConfig(ranges="fixed", rounding="gptq", bias_correction=False),
        "range + bias": RefineConfig(ranges="auto", rounding="nearest", bias_correction=True),
        "range + gptq + bias": RefineConfig(ranges="auto", rounding="gptq", bias_correction=True),
        "gptq + bias": RefineConfig(ranges="fixed", rounding="gptq", bias_correction=True),
    }
    if a.variants != "all":
        keep = a.variants.split(",")
        variants = {k: v for i, (k, v) in enumerate(variants.items()) if str(i) in keep}
    for rc in variants.values():
        rc.images = a.refine_images
    base = amax_table(stats, Method.mse, 99.99)
    rows = []
    for name, rc in variants.items():
        t0 = time.time()
        r = refine(fp32, pl, stats, base, x_cal, rc)
        secs = time.time() - t0
        q = insert_qdq(apply_weights(fp32, r), pl, r.amax, weight_amax=r.weight_amax)
        d = compare(ref, ort_logits(q, x_ev), labels)
        lo, hi = drop_interval(d)
        rows.append({"variant": name, "drop": d.top1_drop_pts, "ci": [lo, hi], "agreement": d.agreement,
                     "b": d.ref_right_engine_wrong, "c": d.ref_wrong_engine_right, "kl": d.kl,
                     "refine_s": round(secs, 1), **r.summary()})
        print(f"{name:24s} drop {d.top1_drop_pts:+.2f} [{lo:+.2f}, {hi:+.2f}]  agreement {d.agreement:6.2f}%  "
              f"kl {d.kl:.4f}  ({d.ref_right_engine_wrong}/{d.ref_wrong_engine_right})  refine {secs:.1f}s "
              f"(stats {t_stats:.1f}s)  {r.summary()['range_methods']}", flush=True)
    if a.json:
        a.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
