"""ghostedge's INT8 against other PTQ recipes, side by side: same model, same calibration and eval images.

Every candidate is calibrated on the same images (default: 512 from imagenette/train, class-balanced,
seed 0) and evaluated on every image of the eval set (default: imagenette/val, 3,925 images) against
the FP32 PyTorch model: top-1 drop, top-1 agreement, and the paired counts. All INT8 models run on ONNX
Runtime CPU, except PyTorch FX (its own x86 backend).

    python scripts/compare_ptq.py [--data ../shared/datasets/imagenette] [--weights W] [--num-images 512]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import torch

from ghostedge.calibrate import Method
from ghostedge.data import labelled_set, load_images, normalize, sample_images
from ghostedge.drift import compare
from ghostedge.export import INPUT_NAME, to_onnx_proto
from ghostedge.model import load_model
from ghostedge.quantize import QuantizeConfig, ort_logits, quantize, torch_logits


def ort_static(fp32_path: Path, x_cal: np.ndarray, out: Path, **kw) -> Path:
    from onnxruntime.quantization import CalibrationDataReader, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter([{INPUT_NAME: x_cal[i:i + 32]} for i in range(0, len(x_cal), 32)])

        def get_next(self):  # noqa: ANN201
            return next(self.it, None)

    quantize_static(str(fp32_path), str(out), Reader(), **kw)
    return out


def fx_x86(model: torch.nn.Module, x_cal: np.ndarray, x_ev: np.ndarray) -> np.ndarray:
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    m = prepare_fx(model.eval(), get_default_qconfig_mapping("x86"), (torch.from_numpy(x_cal[:1]),))
    with torch.inference_mode():
        for i in range(0, len(x_cal), 32):
            m(torch.from_numpy(x_cal[i:i + 32]))
    q = convert_fx(m)
    return torch_logits(q, x_ev)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, default=Path("../shared/datasets/imagenette"))
    ap.add_argument("--weights", type=Path, default=None)
    ap.add_argument("--num-images", type=int, default=512)
    ap.add_argument("--max-eval", type=int, default=0, help="0 = every eval image")
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args()

    model, info = load_model(a.weights)
    pre = info.preprocess
    calib_paths = sample_images(a.data / "train", a.num_images, seed=0)
    x_cal = normalize(load_images(calib_paths, pre)[0], pre)
    ds = labelled_set(a.data / "val", info.classes, info.wnids)
    paths, labels = ds.paths, np.asarray(ds.labels)
    if a.max_eval:
        paths, labels = paths[:a.max_eval], labels[:a.max_eval]
    x_ev = normalize(load_images(paths, pre)[0], pre)
    ref = torch_logits(model, x_ev)
    print(f"FP32 PyTorch top-1 {compare(ref, ref, labels).ref_top1:.2f}% on {len(x_ev)} images; "
          f"{len(x_cal)} calibration images")

    tmp = Path(tempfile.mkdtemp())
    fp32 = tmp / "fp32.onnx"
    onnx.save(to_onnx_proto(model, info), str(fp32))
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType

    rows = []

    def run(name: str, fn) -> None:  # noqa: ANN001
        t0 = time.time()
        try:
            logits = fn()
        except Exception as e:  # a peer that cannot run here is reported, not fatal
            print(f"{name:48s} failed: {type(e).__name__}: {str(e)[:120]}")
            return
        d = compare(ref, logits, labels)
        rows.append({"recipe": name, "top1": d.top1, "drop_pts": d.top1_drop_pts, "agreement": d.agreement,
                     "fp32_right_int8_wrong": d.ref_right_engine_wrong,
                     "fp32_wrong_int8_right": d.ref_wrong_engine_right, "seconds": round(time.time() - t0, 1)})
        print(f"{name:48s} top-1 {d.top1:6.2f}  drop {d.top1_drop_pts:+.2f}  agreement {d.agreement:6.2f}%  "
              f"(FP32 right/INT8 wrong {d.ref_right_engine_wrong}, reverse {d.ref_wrong_engine_right})  "
              f"{time.time() - t0:.0f}s")

    def ours(method: Method, pct: float = 99.99, calib: Path | None = None):  # noqa: ANN202
        def f():  # noqa: ANN202
            out = tmp / f"ours_{method.value}"
            cdir = calib or (a.data / "train")
            quantize(QuantizeConfig(calib=cdir, out=out, weights=a.weights, method=method, percentile=pct,
                                    num_images=a.num_images, holdout=0))
            return ort_logits(out / "ghostnet.int8.onnx", x_ev)
        return f

    run("ghostedge (TensorRT Q/DQ, percentile 99.99)", ours(Method.percentile))
    run("ghostedge (TensorRT Q/DQ, mse)", ours(Method.mse))
    run("ghostedge (TensorRT Q/DQ, entropy)", ours(Method.entropy))
    run("ORT quantize_static defaults", lambda: ort_logits(ort_static(fp32, x_cal, tmp / "ort_default.onnx"), x_ev))
    sym = {"ActivationSymmetric": True, "WeightSymmetric": True}
    run("TensorRT-style per-channel s8 entropy (ORT)", lambda: ort_logits(ort_static(
        fp32, x_cal, tmp / "trt_entropy.onnx", quant_format=QuantFormat.QDQ, per_channel=True,
        activation_type=QuantType.QInt8, weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.Entropy,
        extra_options=sym), x_ev))
    run("TensorRT-style per-channel s8 percentile 99.999", lambda: ort_logits(ort_static(
        fp32, x_cal, tmp / "trt_pct.onnx", quant_format=QuantFormat.QDQ, per_channel=True,
        activation_type=QuantType.QInt8, weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.Percentile,
        extra_options={**sym, "CalibPercentile": 99.999}), x_ev))
    run("CPU-style u8s8 min-max (ORT)", lambda: ort_logits(ort_static(
        fp32, x_cal, tmp / "u8s8.onnx", quant_format=QuantFormat.QDQ, per_channel=True,
        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8), x_ev))
    run("PyTorch FX x86 PTQ", lambda: fx_x86(load_model(a.weights)[0], x_cal, x_ev))
    if a.json:
        a.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
