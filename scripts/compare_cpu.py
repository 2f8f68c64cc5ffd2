"""Side by side on this CPU, in one run: PyTorch eager FP32, ONNX Runtime FP32, OpenVINO FP32, NNCF's
default INT8 on OpenVINO, and ghostedge's CPU INT8 engine (whatever `ghostedge build --int8` chooses here).

Speed: every (runtime, size, batch) is timed in its own fresh process, runtimes alternating round by
round (the order rotates), and the median of the rounds is reported, so no thread pool or cache of one
runtime sits beside another. Accuracy: top-1 and top-1 agreement with FP32 PyTorch on a labelled set at
the model's native resolution. Prints the CPU model and the flags INT8 speed depends on.

    python scripts/compare_cpu.py --calib ../shared/datasets/imagenette/train \\
        --eval ../shared/datasets/imagenette/val [--weights W --preprocess "..."] [--sizes 160,224]

Needs `pip install nncf` besides ghostedge (NNCF is the peer, not a dependency).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

RUNTIMES = ("pytorch-fp32", "ort-fp32", "openvino-fp32", "nncf-int8-openvino", "ghostedge-int8")


def _spec(a: argparse.Namespace):  # noqa: ANN202
    from ghostedge.checkpoint import ModelSpec

    return ModelSpec(preprocess=a.preprocess, classes=a.classes)


def _runner(kind: str, work: Path, size: int, threads: int, weights: str | None, spec):  # noqa: ANN001,ANN202
    if kind == "pytorch-fp32":
        from ghostedge.backends.torch import TorchRunner
        from ghostedge.checkpoint import load_model

        return TorchRunner(load_model(weights, spec=spec)[0], threads=threads)
    if kind == "ort-fp32":
        from ghostedge.backends.onnxruntime import OnnxRuntimeRunner

        return OnnxRuntimeRunner(work / "engines" / "ghostnet.onnx", threads=threads)
    if kind in ("openvino-fp32", "nncf-int8-openvino"):
        from ghostedge.backends.openvino import OpenVinoRunner

        return OpenVinoRunner(work / f"{kind}-{size}.xml", threads=threads, precision_hint=None)  # its defaults
    from ghostedge.bench import open_runner

    man = json.loads((work / f"ghostedge-{size}.json").read_text())
    return open_runner(Path(man["engine"]), threads=threads)[0]


def worker(a: argparse.Namespace) -> None:
    """One runtime, one size, one batch, in this fresh process: print images/s and p50 latency."""
    from ghostedge.bench import time_runner

    r = _runner(a.worker, Path(a.work), a.size, a.threads, a.weights, _spec(a))
    x = np.random.default_rng(0).standard_normal((a.batch, 3, a.size, a.size), dtype=np.float32)
    with r:
        t = time_runner(r, x, 3, None, a.seconds)
    print(json.dumps({"throughput": t.throughput, "p50_ms": t.p50}))


def prepare(a: argparse.Namespace, work: Path, sizes: list[int]) -> dict:
    """quantize once; per size: the FP32 IR, NNCF's default INT8 IR, and ghostedge's chosen INT8 engine."""
    import openvino as ov

    from ghostedge.build import Backend, BuildConfig, Precision, build
    from ghostedge.data import load_images, normalize, sample_images
    from ghostedge.quantize import QuantizeConfig, quantize

    eng = work / "engines"
    t0 = time.time()
    q = quantize(QuantizeConfig(calib=Path(a.calib), out=eng, weights=Path(a.weights) if a.weights else None,
                                spec=_spec(a), num_images=a.num_images, threads=a.threads))
    info = {"quantize_seconds": round(time.time() - t0, 1), "qdq_estimate": q.drift.to_dict()}
    from ghostedge.export import read_onnx_info

    mi = read_onnx_info(eng / "ghostnet.onnx")
    paths = sample_images(Path(a.calib), a.num_images, 0)
    core = ov.Core()
    for s in sizes:
        m = core.read_model(str(eng / "ghostnet.onnx"))
        m.reshape([-1, 3, s, s])
        ov.save_model(m, str(work / f"openvino-fp32-{s}.xml"), compress_to_fp16=False)
        import nncf

        u8, _, _ = load_images(paths, mi.input, s)
        x = normalize(u8, mi.input)
        t0 = time.time()
        qm = nncf.quantize(m, nncf.Dataset([x[i:i + 1] for i in range(len(x))]), subset_size=len(x))
        info[f"nncf_seconds_{s}"] = round(time.time() - t0, 1)
        ov.save_model(qm, str(work / f"nncf-int8-openvino-{s}.xml"), compress_to_fp16=False)
        t0 = time.time()
        r = build(BuildConfig(engines=eng, precision=Precision.int8, backend=Backend.auto, img_size=s,
                              batch=(1, max(a.batches), max(a.batches)), threads=a.threads,
                              out=eng / f"ghostnet.int8.{s}.onnx"), say=lambda m: print(m, file=sys.stderr))
        man = json.loads(r.manifest.read_text())
        info[f"ghostedge_{s}"] = {"engine": str(r.engine), "chosen": (man.get("selection") or {}).get("chosen"),
                                  "build_seconds": round(time.time() - t0, 1)}
        (work / f"ghostedge-{s}.json").write_text(json.dumps({"engine": str(r.engine)}))
    return info


def accuracy(a: argparse.Namespace, work: Path, size: int) -> dict:
    from ghostedge.bench import _logits
    from ghostedge.data import labelled_set, load_images, normalize
    from ghostedge.drift import compare
    from ghostedge.export import read_onnx_info

    mi = read_onnx_info(work / "engines" / "ghostnet.onnx")
    ds = labelled_set(Path(a.eval), mi.classes, mi.wnids)
    u8, kept, _ = load_images(ds.paths, mi.input, size)
    x, y = normalize(u8, mi.input), np.asarray([ds.labels[i] for i in kept])
    out, ref = {}, None
    for kind in RUNTIMES:
        with _runner(kind, work, size, a.threads, a.weights, _spec(a)) as r:
            lg = _logits(r, x, 32)
        if ref is None:
            ref = lg
        d = compare(ref, lg, y)
        out[kind] = {"top1": round(d.top1, 2), "agreement": round(d.agreement, 2),
                     "drop": round(d.top1_drop_pts, 2)}
    out["_n"] = len(y)
    return out


def cpu_line() -> str:
    from ghostedge.manifest import cpu_flags, cpu_name

    return f"{cpu_name()} ({os.cpu_count()} cores; flags: {' '.join(cpu_flags()) or '-'})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calib", default="calib")
    ap.add_argument("--eval", default=None)
    ap.add_argument("--weights", default=None)
    ap.add_argument("--preprocess", default=None)
    ap.add_argument("--classes", default=None)
    ap.add_argument("--sizes", default="native,224", help="'native' is the model's own input size")
    ap.add_argument("--batches", default="1,32")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--num-images", type=int, default=512)
    ap.add_argument("--work", default=None)
    ap.add_argument("--json", default=None, help="also write the results here")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--size", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--batch", type=int, default=0, help=argparse.SUPPRESS)
    a = ap.parse_args()
    a.batches = [int(b) for b in str(a.batches).split(",")]
    if a.worker:
        worker(a)
        return
    from ghostedge.checkpoint import load_model

    native = load_model(a.weights, spec=_spec(a))[1].preprocess.input_size
    sizes = sorted({native if s == "native" else int(s) for s in a.sizes.split(",")})
    work = Path(a.work) if a.work else ROOT / "engines" / "compare_cpu"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    print(f"CPU: {cpu_line()}", flush=True)
    prep = prepare(a, work, sizes)
    print(json.dumps(prep, indent=1), flush=True)
    speed: dict = {}
    cases = [(k, s, b) for s in sizes for b in a.batches for k in RUNTIMES]
    for rnd in range(a.rounds):
        order = cases[rnd % len(RUNTIMES):] + cases[:rnd % len(RUNTIMES)]
        for k, s, b in order:
            cmd = [sys.executable, __file__, "--worker", k, "--work", str(work), "--size", str(s), "--batch", str(b),
                   "--seconds", str(a.seconds), "--threads", str(a.threads)]
            for opt in ("weights", "preprocess", "classes"):
                if getattr(a, opt):
                    cmd += [f"--{opt}", getattr(a, opt)]
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
            if r.returncode != 0:
                raise SystemExit(f"{k} {s}px batch {b} failed:\n{r.stderr[-2000:]}")
            speed.setdefault(f"{k}|{s}|{b}", []).append(json.loads(r.stdout.strip().splitlines()[-1]))
        print(f"round {rnd + 1}/{a.rounds} done", file=sys.stderr, flush=True)
    med = {key: statistics.median(v["throughput"] for v in vals) for key, vals in speed.items()}
    acc = accuracy(a, work, native) if a.eval else {}
    print(f"\nCPU: {cpu_line()}, {a.threads} threads; median images/s of {a.rounds} alternating rounds\n")
    head = "| runtime | " + " | ".join(f"{s} px b{b}" for s in sizes for b in a.batches) + \
        f" | vs ORT FP32 (b{max(a.batches)}, {max(sizes)} px) | vs PyTorch (b{max(a.batches)}, {max(sizes)} px) |" + \
        (f" top-1 @{native} | agreement |" if acc else "")
    print(head)
    print("|---|" + "---:|" * (len(sizes) * len(a.batches) + 2 + (2 if acc else 0)))
    big = max(sizes)
    bmax = max(a.batches)
    for k in RUNTIMES:
        cells = [f"{med[f'{k}|{s}|{b}']:.1f}" for s in sizes for b in a.batches]
        vs_ort = med[f"{k}|{big}|{bmax}"] / med[f"ort-fp32|{big}|{bmax}"]
        vs_pt = med[f"{k}|{big}|{bmax}"] / med[f"pytorch-fp32|{big}|{bmax}"]
        row = f"| {k} | " + " | ".join(cells) + f" | {vs_ort:.2f}x | {vs_pt:.2f}x |"
        if acc:
            row += f" {acc[k]['top1']:.2f} | {acc[k]['agreement']:.2f}% |"
        print(row)
    if acc:
        print(f"\naccuracy on {acc['_n']} images of {a.eval} at {native} px; quantize's Q/DQ estimate: agreement "
              f"{prep['qdq_estimate']['agreement']:.2f}% on its own held-out set")
    if a.json:
        Path(a.json).write_text(json.dumps({"cpu": cpu_line(), "prepare": prep, "speed": speed, "median": med,
                                            "accuracy": acc}, indent=1))


if __name__ == "__main__":
    main()
