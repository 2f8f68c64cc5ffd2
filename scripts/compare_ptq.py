"""ghostedge's INT8 against other PTQ recipes, side by side: same model, same calibration and eval images.

Every candidate is calibrated on the same images (default: 512 from imagenette/train, class-balanced,
seed 0; --calib calib/ for the distilled set) and evaluated on every image of the eval set (default:
imagenette/val, 3,925 images) against the FP32 PyTorch model: top-1 drop with its 95% interval (the
paired score interval of ghostedge.drift), top-1 agreement, and the paired counts. All INT8 models run on ONNX
Runtime CPU, except PyTorch FX (its own x86 backend).

Peers: NNCF's default PTQ on the ONNX model (`pip install nncf`); NVIDIA ModelOpt's ONNX INT8 PTQ with
its defaults (entropy calibration) except that the layers it leaves unquantized stay FP32
(`high_precision_dtype="fp32"`: its default FP16 graph collapses under ONNX Runtime CPU, e.g. 4.5%
agreement on the 1.3x model, so it could not be measured here; TensorRT would run it in FP16). ModelOpt
pins onnxruntime-gpu, so it lives in a venv of its own: `python -m venv /work/peers &&
/work/peers/bin/pip install "nvidia-modelopt[onnx]==0.47.0"`, then `--modelopt-python /work/peers/bin/python`;
ONNX Runtime's quantize_static in four settings; PyTorch FX. A peer that cannot run is reported, not fatal.

    python scripts/compare_ptq.py [--data ../shared/datasets/imagenette] [--weights W] [--calib DIR]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import torch

from ghostedge.data import labelled_set, load_images, normalize, sample_images
from ghostedge.drift import compare, drop_interval
from ghostedge.export import INPUT_NAME, to_onnx_proto
from ghostedge.checkpoint import load_model
from ghostedge.estimate import qdq_logits as ort_logits  # Q/DQ graphs with TensorRT's arithmetic
from ghostedge.quantize import QuantizeConfig, quantize, torch_logits
from ghostedge.refine import RefineConfig


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


def nncf_default(fp32_path: Path, x_cal: np.ndarray, out: Path) -> Path:
    import nncf

    m = onnx.load(str(fp32_path))
    q = nncf.quantize(m, nncf.Dataset([{INPUT_NAME: x_cal[i:i + 1]} for i in range(len(x_cal))]),
                      subset_size=len(x_cal))
    onnx.save(q, str(out))
    return out


MODELOPT = """
import sys, numpy as np
from modelopt.onnx.quantization import quantize
quantize(sys.argv[1], quantize_mode="int8", calibration_data={"%s": np.load(sys.argv[2])},
         calibration_eps=["cpu"], high_precision_dtype="fp32", output_path=sys.argv[3])
""" % INPUT_NAME


def modelopt_default(python: str, fp32_path: Path, x_cal: np.ndarray, out: Path) -> Path:
    npy = out.with_suffix(".calib.npy")
    np.save(npy, x_cal)
    r = subprocess.run([python, "-c", MODELOPT, str(fp32_path), str(npy), str(out)], capture_output=True, text=True)
    if r.returncode != 0 or not out.is_file():
        raise RuntimeError((r.stderr or r.stdout).strip().splitlines()[-1] if (r.stderr or r.stdout) else "failed")
    return out


def side_by_side_data(data: Path, weights: Path | None, calib: Path | None, num_images: int, max_eval: int):  # noqa: ANN201
    """The model, its calibration images (class-balanced, seed 0: the ones `quantize` picks), the eval
    images and labels, and the FP32 PyTorch logits every recipe is compared against; says what it loaded."""
    model, info = load_model(weights)
    pre = info.input
    cdir = calib or data / "train"
    x_cal = normalize(load_images(sample_images(cdir, num_images, seed=0), pre)[0], pre)
    ds = labelled_set(data / "val", info.classes, info.wnids)
    paths, labels = ds.paths, np.asarray(ds.labels)
    if max_eval:
        paths, labels = paths[:max_eval], labels[:max_eval]
    x_ev = normalize(load_images(paths, pre)[0], pre)
    ref = torch_logits(model, x_ev)
    print(f"{info.source}: {info.width}x at {pre.input_size} px; FP32 PyTorch top-1 "
          f"{compare(ref, ref, labels).ref_top1:.2f}% on {len(x_ev)} images; {len(x_cal)} calibration images "
          f"from {cdir}", flush=True)
    return model, info, cdir, x_cal, x_ev, labels, ref


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, default=Path("../shared/datasets/imagenette"))
    ap.add_argument("--weights", type=Path, default=None)
    ap.add_argument("--calib", type=Path, default=None, help="calibration folder (default: DATA/train)")
    ap.add_argument("--modelopt-python", default=sys.executable,
                    help="a Python with nvidia-modelopt[onnx] installed (it needs onnxruntime-gpu: a venv of its own)")
    ap.add_argument("--num-images", type=int, default=512)
    ap.add_argument("--max-eval", type=int, default=0, help="0 = every eval image")
    ap.add_argument("--only", default="", help="run only the recipes whose name contains this text")
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args()

    model, info, cdir, x_cal, x_ev, labels, ref = side_by_side_data(a.data, a.weights, a.calib, a.num_images,
                                                                    a.max_eval)

    tmp = Path(tempfile.mkdtemp())
    fp32 = tmp / "fp32.onnx"
    onnx.save(to_onnx_proto(model, info), str(fp32))
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType

    rows = []

    def run(name: str, fn) -> None:  # noqa: ANN001
        if a.only.lower() not in name.lower():
            return
        t0 = time.time()
        try:
            logits = fn()
        except Exception as e:  # a peer that cannot run here is reported, not fatal
            print(f"{name:48s} failed: {type(e).__name__}: {str(e)[:120]}")
            return
        d = compare(ref, logits, labels)
        lo, hi = drop_interval(d)
        rows.append({"recipe": name, "top1": d.top1, "drop_pts": d.top1_drop_pts, "drop_ci95": [lo, hi],
                     "agreement": d.agreement, "kl": d.kl, "fp32_right_int8_wrong": d.ref_right_engine_wrong,
                     "fp32_wrong_int8_right": d.ref_wrong_engine_right, "seconds": round(time.time() - t0, 1)})
        print(f"{name:46s} drop {d.top1_drop_pts:+.2f} [{lo:+.2f}, {hi:+.2f}]  agreement {d.agreement:6.2f}%  "
              f"KL {d.kl:.5f}  ({d.ref_right_engine_wrong}/{d.ref_wrong_engine_right})  {time.time() - t0:.0f}s",
              flush=True)

    def ours(name: str, refine: RefineConfig):  # noqa: ANN202
        def f():  # noqa: ANN202
            out = tmp / f"ours_{name}"
            quantize(QuantizeConfig(calib=cdir, out=out, weights=a.weights, num_images=a.num_images, holdout=0,
                                    refine=refine))
            return ort_logits(out / "ghostnet.int8.onnx", x_ev)
        return f

    run("ghostedge default (TensorRT Q/DQ)", ours("default", RefineConfig()))
    run("ghostedge 0.6 (mse only, no refinement)", ours("plain", RefineConfig(ranges="fixed", rounding="nearest",
                                                                                bias_correction=False)))
    run("NVIDIA ModelOpt ONNX INT8 PTQ, defaults (FP32 elsewhere)", lambda: ort_logits(
        modelopt_default(a.modelopt_python, fp32, x_cal, tmp / "modelopt.onnx"), x_ev))
    run("NNCF PTQ defaults (ONNX)", lambda: ort_logits(nncf_default(fp32, x_cal, tmp / "nncf.onnx"), x_ev))
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
