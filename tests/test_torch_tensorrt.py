"""The torch-tensorrt frontend against the real signatures of released Torch-TensorRT wheels.

The wheels are downloaded (not installed: they need a CUDA torch) and their ``dynamo/_compiler.py`` and
``_defaults.py`` are read with ``ast``. Three behaviours: <= 2.9 weakly typed with ``enabled_precisions``;
2.10 - 2.12 explicit typing by default, with a check that rejects ``enabled_precisions`` beyond FP32;
2.13+ neither argument (anything else falls into ``**kwargs`` and is ignored).
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from ghostedge.backends.torch_tensorrt import precision_plan

VERSIONS = ("2.9.0", "2.10.0", "2.12.0", "2.13.0")
CACHE = Path(os.environ.get("GHOSTEDGE_CACHE", Path.home() / ".cache" / "ghostedge")) / "torch-tensorrt"
FN = "convert_exported_program_to_serialized_trt_engine"


def _sources(version: str) -> tuple[str, str]:
    d = CACHE / version
    files = {"_compiler.py": d / "_compiler.py", "_defaults.py": d / "_defaults.py"}
    if not all(f.is_file() for f in files.values()):
        dl = CACHE / f".{version}.dl"
        r = subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
                            "--python-version", "3.11", "--platform", "manylinux_2_28_x86_64", "-d", str(dl),
                            f"torch-tensorrt=={version}"], capture_output=True, text=True, timeout=600)
        wheels = list(dl.glob("*.whl")) if dl.is_dir() else []
        if r.returncode != 0 or not wheels:
            pytest.skip(f"torch-tensorrt {version} wheel not downloadable (offline?): {r.stderr.strip()[-200:]}")
        d.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(wheels[0]) as z:
            for name, dst in files.items():
                dst.write_bytes(z.read(f"torch_tensorrt/dynamo/{name}"))
        for w in wheels:
            w.unlink()
    return files["_compiler.py"].read_text(), files["_defaults.py"].read_text()


def _signature(version: str) -> dict:
    compiler, defaults = _sources(version)
    tree = ast.parse(compiler)
    fn = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == FN)
    kwonly = {a.arg: d for a, d in zip(fn.args.kwonlyargs, fn.args.kw_defaults)}
    explicit_default = None
    if "use_explicit_typing" in kwonly:
        d = kwonly["use_explicit_typing"]
        if isinstance(d, ast.Attribute):  # _defaults.USE_EXPLICIT_TYPING
            dv = next(n.value for n in ast.parse(defaults).body if isinstance(n, ast.Assign)
                      and any(getattr(t, "id", None) == d.attr for t in n.targets))
            explicit_default = ast.literal_eval(dv)
        else:
            explicit_default = ast.literal_eval(d)
    body = ast.get_source_segment(compiler, fn)
    return {"kwonly": set(kwonly), "kwargs": fn.args.kwarg is not None, "explicit_default": explicit_default,
            "rejects_precisions_when_explicit": "however found that enabled_precisions" in body}


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_compile_arguments_mean_what_they_say_on_each_release(version: str, precision: str):
    sig = _signature(version)
    kwargs, dtype = precision_plan(version, precision)
    # nothing we pass may vanish into **kwargs
    assert set(kwargs) <= sig["kwonly"], (version, set(kwargs) - sig["kwonly"])
    explicit = kwargs.get("use_explicit_typing", sig["explicit_default"])
    if explicit is None:          # 2.13+: no such argument, always explicitly typed
        explicit = True
    if explicit:
        # precision must live in the model: FP16 / INT8 (Q/DQ around FP16) need a float16 model
        assert dtype == ("float32" if precision == "fp32" else "float16")
        if sig["rejects_precisions_when_explicit"]:
            assert kwargs.get("enabled_precisions", {"float32"}) <= {"float32"}
    else:
        want = {"float32"} | ({"float16"} if precision != "fp32" else set()) | \
            ({"int8"} if precision == "int8" else set())
        assert kwargs["enabled_precisions"] == want and dtype == "float32"


def test_the_three_behaviours_are_the_real_ones():
    s = {v: _signature(v) for v in VERSIONS}
    assert s["2.9.0"]["explicit_default"] is False and "enabled_precisions" in s["2.9.0"]["kwonly"]
    assert s["2.10.0"]["explicit_default"] is True and s["2.10.0"]["rejects_precisions_when_explicit"]
    assert s["2.12.0"]["explicit_default"] is True
    assert not {"enabled_precisions", "use_explicit_typing"} & s["2.13.0"]["kwonly"] and s["2.13.0"]["kwargs"]


def test_frontend_asks_torch_for_the_device_not_cuda_python():
    src = (Path(__file__).resolve().parents[1] / "ghostedge" / "backends" / "torch_tensorrt.py").read_text()
    assert "gpu_info" not in src and "torch.cuda.get_device_properties" in src
