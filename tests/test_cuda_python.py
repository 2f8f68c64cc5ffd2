"""The runner's CUDA calls against the real cuda-python packages (11.8 for JetPack 5, the newest 12.x and
13.x), which install and import here without a GPU.

Each version is installed once into its own folder (cached under ~/.cache/ghostedge/cuda-python) and
loaded in a subprocess. A proxy over the real ``cudart`` module calls every real function with the
arguments ghostedge passes, so a wrong arity or argument type raises TypeError exactly as on a GPU
machine; with no driver the real call then returns an error code (12.x / 13.x) or raises RuntimeError
(11.8: libcuda.so.1 cannot be loaded), and the proxy answers "success" with a handle of the real type,
so the code goes on down its success path and every call it makes is reached.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
VERSIONS = ("11.8.7", "12.9.4", "13.4.4")
CACHE = Path(os.environ.get("GHOSTEDGE_CACHE", Path.home() / ".cache" / "ghostedge")) / "cuda-python"


def _install(version: str) -> Path:
    dst = CACHE / version
    if (dst / "cuda").is_dir():
        return dst
    tmp = CACHE / f".{version}.tmp"
    CACHE.mkdir(parents=True, exist_ok=True)
    r = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-compile", "--target", str(tmp),
                        f"cuda-python=={version}"], capture_output=True, text=True, timeout=600)
    if r.returncode != 0:
        shutil.rmtree(tmp, ignore_errors=True)
        pytest.skip(f"cuda-python {version} could not be installed (offline?): {r.stderr.strip()[-200:]}")
    for entry in tmp.iterdir():  # keep cuda-python's own packages; numpy & co come from the test's venv
        if not entry.name.startswith(("cuda", "_cuda")):
            shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
    tmp.rename(dst)
    return dst


PROBE = r'''
import json, sys
import numpy as np
try:
    from cuda.bindings import runtime as rt
except ImportError:
    from cuda import cudart as rt
from ghostedge.backends.cuda import Cuda
from ghostedge.errors import GhostedgeError

made, outcomes = [], {}
SUCCESS = {
    "cudaGetDeviceCount": lambda: 1, "cudaMalloc": lambda: 0, "cudaStreamCreate": rt.cudaStream_t,
    "cudaEventCreate": rt.cudaEvent_t, "cudaStreamEndCapture": rt.cudaGraph_t,
    "cudaGraphInstantiateWithFlags": rt.cudaGraphExec_t, "cudaEventElapsedTime": lambda: 0.25,
    "cudaGetDeviceProperties": rt.cudaDeviceProp, "cudaDriverGetVersion": lambda: 12060,
    "cudaRuntimeGetVersion": lambda: 12060,
}

class Proxy:
    def __getattr__(self, name):
        real = getattr(rt, name)
        if not name.startswith("cuda") or not callable(real) or isinstance(real, type):
            return real
        def call(*args):
            made.append(name)
            try:
                res = real(*args)
                outcomes[name] = "error code " + str(res[0] if isinstance(res, tuple) else res)
            except RuntimeError as e:          # 11.8 without a driver
                outcomes[name] = "RuntimeError " + str(e)[:60]
            ok = rt.cudaError_t.cudaSuccess
            return (ok, SUCCESS[name]()) if name in SUCCESS else (ok, None)
        return call

cu = Cuda(Proxy())
assert cu.device_count() == 1
info = cu.device_info()
ptr = cu.malloc(1024)
st = cu.stream()
a = np.zeros(4, np.float32)
cu.h2d(ptr, a, st)
cu.d2h(a, ptr, st)
cu.sync(st)
e0, e1 = cu.event(), cu.event()
cu.record(e0, st)
cu.record(e1, st)
assert cu.elapsed_ms(e0, e1) == 0.25
g = cu.capture(st, lambda: None)
cu.launch_graph(g, st)
cu.destroy_graph(g)
assert cu.capture(st, lambda: False) is None   # TensorRT refused to enqueue under capture: no graph
cu.free(ptr)
cu.stream_handle(st)
cu.destroy_event(e0)
cu.destroy_stream(st)
# and unproxied: the real binding, no driver -> a named GhostedgeError, never a TypeError
real = Cuda(rt)
try:
    real.device_count()
    plain = "no error"
except GhostedgeError as e:
    plain = str(e)
# what build's backend choice makes of it, with a TensorRT module importable (the wheel installed, no driver)
import types
sys.modules["tensorrt"] = types.ModuleType("tensorrt")
from ghostedge.backends.cuda import cuda_absent, cuda_probe
from ghostedge.build import BuildConfig, choose_backend
gpu, why = cuda_probe()
said = []
try:
    backend = choose_backend(BuildConfig(), said.append).value
except GhostedgeError as e:
    backend = "refused: " + str(e)
print(json.dumps({"made": sorted(set(made)), "outcomes": outcomes, "plain": plain, "binding": rt.__name__,
                  "probe": [gpu, why, cuda_absent(why)], "backend": backend, "said": said}))
'''


def _cudart_names_in_source() -> set[str]:
    src = (ROOT / "ghostedge" / "backends" / "cuda.py").read_text()
    return set(re.findall(r'_call\("(cuda\w+)"', src))


@pytest.mark.parametrize("version", VERSIONS)
def test_every_cudart_call_has_the_real_signature(version: str):
    target = _install(version)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(target), str(ROOT)])}
    r = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]   # a TypeError (wrong arity / argument type) lands here
    d = json.loads(r.stdout.strip().splitlines()[-1])
    assert set(d["made"]) == _cudart_names_in_source(), "a cudart call of the code was not exercised"
    for name, outcome in d["outcomes"].items():
        assert outcome.startswith(("error code", "RuntimeError")), (name, outcome)
    # no driver on this machine: every version must say so (not "driver older than cuda-python", not "no GPU"
    # in general), and build must fall back to the CPU although the TensorRT module imports (issue 18 item 5)
    assert d["plain"].startswith("no NVIDIA driver is loaded here"), d["plain"]
    gpu, why, absent = d["probe"]
    assert gpu is None and absent and why.startswith("no NVIDIA driver"), d["probe"]
    assert d["backend"] == "onnxruntime" and any("building for this CPU" in m for m in d["said"]), d


def test_cuda_graph_instantiate_signature_differs_across_versions():
    """Why the code calls cudaGraphInstantiateWithFlags: cudaGraphInstantiate(graph, 0) is a TypeError on 11.8."""
    probe = ("try:\n from cuda.bindings import runtime as rt\nexcept ImportError:\n from cuda import cudart as rt\n"
             "try:\n rt.cudaGraphInstantiate(rt.cudaGraph_t(), 0); print('ok')\n"
             "except TypeError: print('TypeError')\nexcept RuntimeError: print('ok')\n")
    seen = {}
    for version in ("11.8.7", "12.9.4"):
        target = _install(version)
        env = {**os.environ, "PYTHONPATH": str(target)}
        seen[version] = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env,
                                       timeout=120).stdout.strip()
    assert seen == {"11.8.7": "TypeError", "12.9.4": "ok"}
