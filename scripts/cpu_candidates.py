"""Every CPU INT8 candidate of both kinds (VNNI and no-VNNI sets) on the images the CPU choice checks on,
side by side, against the float Q/DQ estimate of TensorRT INT8: agreement with FP32, shortfall, the
discordant images, KL, and the largest |int8 weight| each engine multiplies with.

    python scripts/cpu_candidates.py engines/ --calib ../shared/datasets/imagenette/train [--images 1024]
    ONEDNN_MAX_CPU_ISA=AVX2 python scripts/cpu_candidates.py ...   # OpenVINO's oneDNN on the no-VNNI path

Run ``ghostedge quantize --calib DIR --out engines/`` first. Prints the CPU (name, VNNI or not) first.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from ghostedge.backends.onnxruntime import OnnxRuntimeRunner
from ghostedge.backends.openvino import OpenVinoRunner
from ghostedge.bench import _logits
from ghostedge.build import BuildConfig, Precision
from ghostedge.build_cpu import Candidate, Variant, _judge, build_engine, check_images
from ghostedge.cpu import host_cpu
from ghostedge.estimate import qdq_logits
from ghostedge.card import read_onnx_card
from ghostedge.quantize import ort_logits
from ghostedge.record import CalibrationRecord

VARIANTS = [Variant("onnxruntime-u8s8", "onnxruntime", "qoperator"),
            Variant("onnxruntime-u8u8", "onnxruntime", "qoperator", uint8_weights=True),
            Variant("onnxruntime-u8s8w7", "onnxruntime", "qoperator", weight_bits=7),
            Variant("openvino-u8-f32", "openvino", "u8", hint="f32"),
            Variant("openvino-u8w7-f32", "openvino", "u8", 7, hint="f32"),
            Variant("openvino-qdq-f32", "openvino", "qdq", hint="f32")]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("engines", type=Path)
    ap.add_argument("--calib", type=Path, required=True)
    ap.add_argument("--images", type=int, default=1024)
    a = ap.parse_args()
    print("CPU:", host_cpu().describe())
    cfg = BuildConfig(engines=a.engines, precision=Precision.int8, calib=a.calib)
    rec = CalibrationRecord.read(a.engines / "ghostnet.calib.json")
    info = read_onnx_card(a.engines / "ghostnet.onnx")
    size = info.input.input_size
    x, images = check_images(cfg, rec, info, size)
    x = x[:a.images]
    ref = ort_logits(a.engines / "ghostnet.onnx", x)
    est = qdq_logits(a.engines / "ghostnet.int8.onnx", x)
    print(f"images: {images}; estimate agreement with FP32 {(est.argmax(1) == ref.argmax(1)).mean() * 100:.2f}%")
    print(f"{'candidate':22s} {'agree%':>7s} {'short':>6s} {'(est,eng)':>10s} {'KL':>9s} {'max|w|':>6s}")
    with tempfile.TemporaryDirectory() as d:
        for v in VARIANTS:
            p = Path(d) / (v.name + (".xml" if v.backend == "openvino" else ".onnx"))
            w = build_engine(cfg, v, p, size, rec)
            c = Candidate(v, p)
            with (OpenVinoRunner(p) if v.backend == "openvino" else OnnxRuntimeRunner(p)) as r:
                _judge(c, _logits(r, x, 32), ref, est)
            print(f"{v.name:22s} {c.agreement_fp32:7.2f} {c.shortfall_pts:+6.2f} {str(c.discordant):>10s} "
                  f"{c.kl:9.6f} {'u8' if w is None else w:>6}")


if __name__ == "__main__":
    main()
