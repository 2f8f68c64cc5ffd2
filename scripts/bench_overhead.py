"""How much does `ghostedge bench`'s harness add over a bare loop on the same runtime?

Runs the same ONNX Runtime session (a) in a bare `for` loop timed once around the loop and (b) through
ghostedge.bench.time_runner, alternating A/B rounds so machine noise hits both alike; prints the medians
and the overhead. Usage: python scripts/bench_overhead.py ENGINE.onnx [--batch 32] [--img-size 224]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from ghostedge.backends.onnxruntime import OnnxRuntimeRunner
from ghostedge.bench import time_runner


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("engine")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--img-size", type=int, default=224)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=5)
    a = ap.parse_args()
    x = np.random.default_rng(0).standard_normal((a.batch, 3, a.img_size, a.img_size)).astype(np.float32)
    with OnnxRuntimeRunner(a.engine) as r:
        sess, name = r.sess, r.input_name
        for _ in range(3):
            sess.run(None, {name: x})
        bare, harness = [], []
        for _ in range(a.rounds):
            t0 = time.perf_counter()
            for _ in range(a.iters):
                sess.run(None, {name: x})
            bare.append(a.batch * a.iters / (time.perf_counter() - t0))
            harness.append(time_runner(r, x, warmup=0, iters=a.iters, seconds=0).throughput)
    b, h = statistics.median(bare), statistics.median(harness)
    print(f"bare loop : {b:8.1f} images/s (median of {a.rounds} rounds x {a.iters} iters)")
    print(f"harness   : {h:8.1f} images/s")
    print(f"overhead  : {(b - h) / b * 100:+.2f}% (goal: <= 3%)")


if __name__ == "__main__":
    main()
