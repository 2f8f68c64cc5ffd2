"""Timing a runner: warm-up, then timed inferences (two ``perf_counter`` calls each), as bench and the CPU
engine choice both measure."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from .backends.base import BaseRunner


@dataclass
class Timing:
    throughput: float                # images/s over all timed iterations
    p50: float
    p90: float
    p99: float
    iters: int
    gpu_ms_p50: float | None = None  # TensorRT: GPU compute only (CUDA events)


#: warm-up lasts at least this long (trtexec warms up for 200 ms): a Jetson's DVFS clock ramp and
#: lazy module loading must not land in the timed p90 / p99
MIN_WARMUP_S = 0.2


def time_runner(runner: BaseRunner, x: np.ndarray, warmup: int, iters: int | None, seconds: float) -> Timing:
    t_warm, n = time.perf_counter(), 0
    while n < warmup or time.perf_counter() - t_warm < MIN_WARMUP_S:
        runner.infer(x)
        n += 1
    gpu = getattr(runner, "gpu_ms", None)
    if gpu is not None:
        gpu.clear()
    lat: list[float] = []
    start = time.perf_counter()
    while True:
        t0 = time.perf_counter()
        runner.infer(x)
        lat.append(time.perf_counter() - t0)
        if iters is not None:
            if len(lat) >= iters:
                break
        elif len(lat) >= 5 and time.perf_counter() - start >= seconds:
            break
    arr = np.asarray(lat) * 1000.0
    return Timing(throughput=len(x) * len(lat) / float(arr.sum() / 1000.0),
                  p50=float(np.percentile(arr, 50)), p90=float(np.percentile(arr, 90)),
                  p99=float(np.percentile(arr, 99)), iters=len(lat),
                  gpu_ms_p50=float(np.median(gpu)) if gpu else None)
