"""On a machine with a CUDA GPU and TensorRT: build real engines and run them (skipped elsewhere)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ghostedge.build import Backend, BuildConfig, Precision, build
from ghostedge.export import ort_session


@pytest.mark.gpu
@pytest.mark.tensorrt
@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_real_tensorrt_engine_matches_fp32(engines_copy: Path, precision: str):
    from ghostedge.backends.tensorrt import TensorRTRunner, import_tensorrt, inspect_engine

    out = engines_copy / f"g.{precision}.plan"
    build(BuildConfig(engines=engines_copy, precision=Precision(precision), backend=Backend.tensorrt,
                      target="dgpu", batch=(1, 4, 8), out=out))
    x = np.random.default_rng(0).standard_normal((4, 3, 32, 32)).astype(np.float32)
    ref = ort_session(engines_copy / "ghostnet.onnx").run(None, {"input": x})[0]
    with TensorRTRunner(out) as r:
        y = r.infer(x)
        assert r.gpu_ms and r.gpu_ms[-1] > 0
        rows = inspect_engine(import_tensorrt(), r.engine)
    cos = (ref * y).sum(1) / (np.linalg.norm(ref, axis=1) * np.linalg.norm(y, axis=1))
    assert cos.min() > (0.99 if precision == "fp16" else 0.95)
    assert rows and all({"name", "precision", "flags"} <= set(row) for row in rows)
