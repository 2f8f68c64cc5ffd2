"""The command line as users run it: exit codes, one-line errors, no tracebacks, nothing half-written."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import make_image_folder

ROOT = Path(__file__).resolve().parents[1]


def ge(*args: str, cwd: Path | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    e = {**os.environ, "COLUMNS": "200", **(env or {})}
    return subprocess.run([sys.executable, "-m", "ghostedge", *args], capture_output=True, text=True,
                          cwd=cwd or ROOT, env=e, timeout=600)


BLOCKER = """
import sys, importlib.abc
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('tensorrt', 'pycuda', 'cuda', 'torch_tensorrt'):
            raise ImportError(f'{name} made unimportable for this test')
sys.meta_path.insert(0, Block())
"""


def test_every_module_imports_and_help_runs_without_gpu_packages():
    code = BLOCKER + """
import pkgutil, importlib, ghostedge
for m in pkgutil.walk_packages(ghostedge.__path__, 'ghostedge.'):
    if m.name != 'ghostedge.__main__':
        importlib.import_module(m.name)
sys.argv = ['ghostedge', '--help']
from ghostedge.cli import run
run()
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300,
                       env={**os.environ, "COLUMNS": "200"})
    assert r.returncode == 0, r.stderr
    for cmd in ("train", "eval", "export", "info", "quantize", "calib", "build", "inspect", "bench", "pipeline"):
        assert cmd in r.stdout


def test_build_tensorrt_without_tensorrt_says_what_to_do(engines_copy: Path):
    code = BLOCKER + f"""
sys.argv = ['ghostedge', 'build', '--int8', '--backend', 'tensorrt', '--engines', {str(engines_copy)!r}]
from ghostedge.cli import run
run()
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert r.returncode == 2
    assert "TensorRT is not installed" in r.stderr and "trtexec --onnx=ghostnet.int8.onnx" in r.stderr
    assert "Traceback" not in r.stderr
    assert not (engines_copy / "ghostnet.plan").exists()


def test_info_json_has_params_and_macs(tiny_weights: Path):
    r = ge("info", "--weights", str(tiny_weights), "--json")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["params"] > 1_000_000 and d["macs"] > 0 and d["num_classes"] == 3


def test_bad_weights_is_one_line_exit_2(tmp_path: Path):
    r = ge("info", "--weights", str(tmp_path / "missing.pth"))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().startswith("error:") and "not found" in r.stderr
    r = ge("--debug", "info", "--weights", str(tmp_path / "missing.pth"))
    assert r.returncode != 0 and "Traceback" in r.stderr


def test_usage_errors_exit_2():
    r = ge("build", "--fp16", "--fp32")
    assert r.returncode == 2 and "one of --fp32" in r.stderr
    r = ge("quantize")  # --calib missing
    assert r.returncode == 2
    for flag, value, word in (("--ranges", "best", "auto or fixed"), ("--rounding", "adaround", "gptq or nearest"),
                              ("--refine-images", "0", "at least 1")):
        r = ge("quantize", "--calib", ".", flag, value)
        assert r.returncode == 2 and word in r.stderr and "Traceback" not in r.stderr, (flag, r.stderr)


def test_pipeline_takes_quantizes_modes_and_offers_every_mode_as_a_choice():
    r = ge("pipeline", "--help")
    assert r.returncode == 0, r.stderr
    for flag, shown in (("--ranges", "<auto|fixed>"), ("--rounding", "<gptq|nearest>"), ("--target", "orin-nano"),
                        ("--method", "<entropy|minmax|percentile|mse>"), ("--backend", "<auto|tensorrt|")):
        assert flag in r.stdout and shown in r.stdout, flag
    for cmd, flag, value, word in (("pipeline", "--rounding", "adaround", "gptq or nearest"),
                                   ("pipeline", "--method", "best", "entropy, minmax, percentile or mse"),
                                   ("bench", "--baseline", "onnx", "torch or none"),
                                   ("build", "--frontend", "tflite", "onnx or torch-tensorrt"),
                                   ("train", "--schedule", "linear", "cosine, step or constant")):
        r = ge(cmd, *(["x.onnx"] if cmd == "bench" else ["."] if cmd == "train" else []), flag, value)
        assert r.returncode == 2 and word in r.stderr and "Traceback" not in r.stderr, (cmd, flag, r.stderr)


def test_export_writes_onnx_and_reports_parity(tmp_path: Path, tiny_weights: Path, image_folder: Path):
    dst = tmp_path / "g.onnx"
    r = ge("export", "--weights", str(tiny_weights), "--out", str(dst), "--real", str(image_folder), "--json")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["passed"] and d["parity_real_max_abs"] <= 1e-4 and dst.is_file()


def test_quantize_build_bench_on_cpu(tmp_path: Path, tiny_weights: Path, image_folder: Path):
    eng = tmp_path / "engines"
    r = ge("quantize", "--calib", str(image_folder), "--weights", str(tiny_weights), "--out", str(eng),
           "--num-images", "12", "--batch", "4", "--eval", str(image_folder), "--threads", "1")
    assert r.returncode == 0, r.stderr
    assert "ONNX Runtime CPU" in r.stdout and "top-1 agreement" in r.stdout and "95% interval" in r.stdout
    assert "biases corrected" in r.stdout
    built = {}
    for prec in ("fp32", "int8"):
        r = ge("build", f"--{prec}", "--engines", str(eng), "--json")
        assert r.returncode == 0, r.stderr
        assert "building for this CPU" in r.stderr and "chose" in r.stderr  # auto chose by measurement, said so
        built[prec] = json.loads(r.stdout)["engine"]
    r = ge("build", "--fp16", "--engines", str(eng), "--backend", "onnxruntime")
    assert r.returncode == 2 and "--fp16" in r.stderr
    report, plot = tmp_path / "r.md", tmp_path / "p.png"
    r = ge("bench", built["fp32"], built["int8"], "--batch", "1,4",
           "--iters", "3", "--warmup", "1", "--eval", str(image_folder), "--json", "--report", str(report),
           "--plot", str(plot), "--threads", "1")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert {"engines", "baseline"} <= set(d)
    for e in d["engines"]:
        assert set(e["throughput"]) == {"1", "4"} and {"p50", "p90", "p99"} <= set(e["latency_ms"]["4"])
        assert e["top1"] is not None and e["agreement"] is not None and "top1_drop_pts" in e
    assert d["baseline"]["top1"] is not None and d["baseline"]["throughput"]["4"] > 0
    assert report.read_text().startswith("# ghostedge bench report")
    assert plot.read_bytes()[:4] == b"\x89PNG"
    # a gate that cannot pass exits 1 (18 images: the drop's interval is about +-18 pts wide, so below -50)
    r = ge("bench", built["int8"], "--batch", "1", "--iters", "2", "--baseline", "none",
           "--eval", str(image_folder), "--max-drop", "-50", "--threads", "1")
    assert r.returncode == 1 and "accuracy gate failed" in r.stderr
    r = ge("inspect", built["int8"], "--json")
    assert r.returncode == 0
    layers = json.loads(r.stdout)["layers"]
    assert any(x["type"] in ("QLinearConv", "Convolution") and x["precision"] == "int8" for x in layers)
    r = ge("build", "--int8", "--engines", str(eng), "--backend", "onnxruntime")   # forced: no choice made
    assert r.returncode == 0 and "chose" not in r.stderr, r.stderr
    r = ge("inspect", str(eng / "ghostnet.int8.ort.onnx"), "--json")
    assert any(x["type"] == "QLinearConv" and x["precision"] == "int8" for x in json.loads(r.stdout)["layers"])


@pytest.mark.parametrize("case", ["missing", "empty", "truncated", "wrong_kind", "plan_no_trt", "unknown_classes"])
def test_bench_bad_input(tmp_path: Path, engines_dir: Path, tiny_weights: Path, case: str):
    eng = tmp_path / "e"
    eng.mkdir()
    report = tmp_path / "report.md"
    args = []
    if case == "missing":
        args = [str(eng / "nope.onnx")]
    elif case == "empty":
        (eng / "g.onnx").write_bytes(b"")
        args = [str(eng / "g.onnx")]
    elif case == "truncated":
        (eng / "g.onnx").write_bytes((engines_dir / "ghostnet.onnx").read_bytes()[:5000])
        args = [str(eng / "g.onnx")]
    elif case == "wrong_kind":
        (eng / "g.txt").write_text("hello")
        args = [str(eng / "g.txt")]
    elif case == "plan_no_trt":
        (eng / "g.plan").write_bytes(b"\x00" * 64)
        (eng / "g.plan.json").write_text(json.dumps({"format": "ghostedge-engine/1", "tensorrt": "10.3.0",
                                                     "gpu": {"gpu": "Orin", "compute_capability": "8.7"},
                                                     "precision": "int8", "batch": [1, 8, 32]}))
        args = [str(eng / "g.plan")]
    elif case == "unknown_classes":
        args = [str(engines_dir / "ghostnet.int8.onnx"), "--eval",
                str(make_image_folder(tmp_path / "ev", per_class=1, classes=["n99999999"]))]
    r = ge("bench", *args, "--report", str(report), "--weights", str(tiny_weights), "--iters", "1")
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr and r.stderr.strip().startswith("error:")
    assert not report.exists()
    if case == "plan_no_trt":
        assert "built with TensorRT 10.3.0 on Orin (sm_87)" in r.stderr


def test_pipeline_runs_end_to_end(tmp_path: Path, tiny_weights: Path, image_folder: Path):
    eng = tmp_path / "engines"
    r = ge("pipeline", "--calib", str(image_folder), "--weights", str(tiny_weights), "--engines", str(eng),
           "--num-images", "12", "--calib-batch", "4", "--batch", "1,4", "--seconds", "0.2", "--threads", "1",
           "--report", str(eng / "report.md"), "--json")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert [e["precision"] for e in d["engines"]] == ["fp32", "int8"] and d["quantize"]["drift"]["n"] > 0
    # no --eval: agreement on the calibration folder, reported apart as what it is, never as drift
    assert d["eval"] is None and d["eval_img_size"] is None and "not a drift estimate" in d["calibration_check"]["note"]
    for e in d["engines"]:
        assert "agreement" not in e and "top1" not in e and 0 <= e["calibration_agreement"] <= 100
    md = (eng / "report.md").read_text()
    assert "## Accuracy" not in md and "## Not a drift estimate" in md and "--eval DIR" in md
    assert "not a drift estimate" in r.stderr
    r = ge("pipeline", "--calib", str(image_folder), "--weights", str(tiny_weights), "--engines", str(tmp_path / "e2"),
           "--max-drop", "1")
    assert r.returncode == 2 and "--max-drop needs --eval" in r.stderr and not (tmp_path / "e2").exists()


def test_bench_max_drop_without_eval_is_an_error(engines_dir: Path):
    r = ge("bench", str(engines_dir / "ghostnet.int8.onnx"), "--max-drop", "1", "--iters", "1")
    assert r.returncode == 2 and "--max-drop needs --eval" in r.stderr and "Traceback" not in r.stderr


def test_torch_tensorrt_frontend_without_it_is_a_clear_error(engines_copy: Path):
    code = BLOCKER + f"""
sys.argv = ['ghostedge', 'build', '--int8', '--frontend', 'torch-tensorrt', '--engines', {str(engines_copy)!r}]
from ghostedge.cli import run
run()
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert r.returncode == 2 and "torch-tensorrt is not installed" in r.stderr and "Traceback" not in r.stderr
