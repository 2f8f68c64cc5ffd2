"""The real TensorRT code paths, run against each real version's API surface (../shared/tensorrt-api).

A call of a name that a version lacks raises AttributeError in the fake and fails the test. What the
calls must be per version comes from ../shared/tensorrt-api/DIFF.md.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ghostedge.build import BuildConfig, Precision, build_tensorrt
from ghostedge.errors import GhostedgeError
from ghostedge.quantize import trt_version_int

from .trt_fake import API_DIR, PLAN_MAGIC, available_versions, called, make_fake_trt

VERSIONS = available_versions()
pytestmark = pytest.mark.skipif(not VERSIONS, reason=f"{API_DIR} is absent")
GPU = {"gpu": "contract-test GPU", "compute_capability": "8.7", "cuda_driver": "12.6", "cuda_runtime": "12.6"}


def _major(v: str) -> int:
    return int(v.split(".")[0])


def _flags_set(trt) -> list[str]:
    return [c[2][0].name for c in called(trt, "IBuilderConfig", "set_flag")]


def _build(engines: Path, version: str, **kw):
    trt = make_fake_trt(version)
    cfg = BuildConfig(engines=engines, target=kw.pop("target", "dgpu"), **kw)
    res = build_tensorrt(cfg, lambda s: None, trt=trt, gpu=GPU)
    return trt, res


def test_fake_refuses_names_a_version_lacks():
    if "11.4.0.106" not in VERSIONS or "8.6.1" not in VERSIONS:
        pytest.skip("needs the 8.6.1 and 11.4 surfaces")
    t11 = make_fake_trt("11.4.0.106")
    with pytest.raises(AttributeError):
        t11.BuilderFlag.FP16
    with pytest.raises(AttributeError):
        t11.IInt8EntropyCalibrator2
    cfg = t11.Builder(None).create_builder_config()
    with pytest.raises(AttributeError):
        cfg.max_workspace_size = 1
    t8 = make_fake_trt("8.6.1")
    assert int(t8.NetworkDefinitionCreationFlag.EXPLICIT_BATCH) == 0
    assert hasattr(t8.BuilderFlag, "FP16")


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_build_per_version_and_precision(engines_copy: Path, version: str, precision: str):
    cache = engines_copy / "tc.cache"
    trt, res = _build(engines_copy, version, precision=Precision(precision), batch=(1, 4, 8), workspace_mib=256,
                      timing_cache=cache, opt_level=3)
    plan = engines_copy / "ghostnet.plan"
    assert plan.read_bytes().startswith(PLAN_MAGIC)
    man = json.loads((engines_copy / "ghostnet.plan.json").read_text())
    assert man["tensorrt"] == trt.__version__ and man["precision"] == precision and man["batch"] == [1, 4, 8]
    assert man["gpu"]["compute_capability"] == "8.7" and man["source_onnx"]["sha256"]
    assert cache.read_bytes() == b"timing-cache:" + trt.__version__.encode()  # timing cache saved
    flags = _flags_set(trt)
    major = _major(version)
    net_flags = called(trt, "Builder", "create_network")[0][2][0]
    if major < 10:
        assert net_flags & (1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH))
    if major >= 11:
        assert "FP16" not in flags and "INT8" not in flags and man["strongly_typed"]
        assert net_flags == 0  # STRONGLY_TYPED is always on (and deprecated) in 11
    elif version.startswith("10.16"):
        # precision flags are deprecated from 10.12: strongly typed, no flags
        assert precision == "fp32" or (man["strongly_typed"] and "FP16" not in flags)
    else:
        assert ("FP16" in flags) == (precision in ("fp16", "int8"))
        assert ("INT8" in flags) == (precision == "int8")
    # the parser got an FP16-typed model where the network is strongly typed
    parsed = called(trt, "OnnxParser", "parse")[0][2][0]
    import onnx

    m = onnx.load_from_string(parsed)
    fp16_inits = any(i.data_type == onnx.TensorProto.FLOAT16 for i in m.graph.initializer)
    assert fp16_inits == (man["strongly_typed"] and precision != "fp32")
    if precision == "int8":
        assert any(n.op_type == "QuantizeLinear" for n in m.graph.node)
    # profile, memory pool, verbosity, optimization level
    shapes = called(trt, "IOptimizationProfile", "set_shape")[0][2]
    assert shapes[1] == (1, 3, 32, 32) and shapes[3] == (8, 3, 32, 32)
    pool = called(trt, "IBuilderConfig", "set_memory_pool_limit")[0][2]
    assert pool[0] == trt.MemoryPoolType.WORKSPACE and pool[1] == 256 << 20
    setters = {c[1] for c in trt._calls if c[0] == "IBuilderConfig" and c[1].endswith("=")}
    assert {"profiling_verbosity=", "builder_optimization_level="} <= setters
    assert not [d for d in trt._deprecated_used if "FP16" in d or "INT8" in d or "Calibrator" in d]


@pytest.mark.parametrize("version", VERSIONS)
def test_implicit_int8_from_calibration_cache(engines_copy: Path, version: str):
    cache = engines_copy / "ghostnet.calib.cache"
    if _major(version) >= 11:
        with pytest.raises(GhostedgeError, match="removed implicit INT8"):
            _build(engines_copy, version, precision=Precision.int8, calib_cache=cache)
        return
    trt, res = _build(engines_copy, version, precision=Precision.int8, calib_cache=cache)
    assert {"FP16", "INT8"} <= set(_flags_set(trt))
    setters = [c for c in trt._calls if c[1] == "int8_calibrator="]
    calib = setters[0][2][0]
    assert isinstance(calib, trt.IInt8EntropyCalibrator2)
    text = calib.read_calibration_cache().decode()
    stamp = "".join(version.split(".")[:1])
    assert text.startswith("TRT-") and f"TRT-{stamp}" in text.splitlines()[0]
    assert calib.get_batch(["input"]) is None
    # the parsed model is the FP32 ONNX (implicit quantization), not the Q/DQ one
    import onnx

    m = onnx.load_from_string(called(trt, "OnnxParser", "parse")[0][2][0])
    assert not any(n.op_type == "QuantizeLinear" for n in m.graph.node)


# 10.8 - 11.3 have no DLA, 11.4.0 only on Windows on ARM; 11.4.1 brings it back on AGX Orin (11.4.0's surface)
DLA_VERSIONS = [v for v in VERSIONS if not v.startswith(("10.16", "11."))] + \
    (["11.4.1"] if "11.4.0.106" in VERSIONS else [])


@pytest.mark.parametrize("version", DLA_VERSIONS)
def test_dla_build_reports_gpu_fallback_layers(engines_copy: Path, version: str):
    trt = make_fake_trt(version)
    layers = []
    for name in ("conv_stem", "se_hardsigmoid", "classifier"):
        layer = trt.ILayer.__new__(trt.ILayer)
        object.__setattr__(layer, "_values", {"name": name})
        layers.append(layer)
    trt._behaviors[("INetworkDefinition", "num_layers")] = lambda self: len(layers)
    trt._behaviors[("INetworkDefinition", "get_layer")] = lambda self, i: layers[i]
    trt._behaviors[("IBuilderConfig", "can_run_on_DLA")] = lambda self, layer: layer.name != "se_hardsigmoid"
    cfg = BuildConfig(engines=engines_copy, target="agx-orin", precision=Precision.fp16, dla_core=1,
                      gpu_fallback=True)
    res = build_tensorrt(cfg, lambda s: None, trt=trt, gpu=GPU)
    assert res.dla_fallback_layers == ["se_hardsigmoid"]
    assert "GPU_FALLBACK" in _flags_set(trt)
    sets = {c[1]: c[2][0] for c in trt._calls if c[0] == "IBuilderConfig" and c[1].endswith("=")}
    assert sets["default_device_type="] == trt.DeviceType.DLA and sets["DLA_core="] == 1
    man = json.loads((engines_copy / "ghostnet.plan.json").read_text())
    assert man["dla_core"] == 1 and man["dla_fallback_layers"] == ["se_hardsigmoid"]
    # without --gpu-fallback the same build is refused, naming the layer
    trt2 = make_fake_trt(version)
    trt2._behaviors.update(trt._behaviors)
    cfg.gpu_fallback = False
    with pytest.raises(GhostedgeError, match="se_hardsigmoid"):
        build_tensorrt(cfg, lambda s: None, trt=trt2, gpu=GPU)


def test_dla_on_boards_without_it_is_a_clear_error(engines_copy: Path):
    for target in ("orin-nano", "thor", "dgpu"):
        with pytest.raises(GhostedgeError, match="has no DLA"):
            _build(engines_copy, VERSIONS[0], precision=Precision.int8, dla_core=0, target=target)


@pytest.mark.parametrize("version", VERSIONS)
def test_parser_errors_are_all_listed(engines_copy: Path, version: str):
    trt = make_fake_trt(version)
    trt._behaviors[("OnnxParser", "parse")] = lambda self, *a, **k: False
    trt._behaviors[("OnnxParser", "num_errors")] = lambda self: 2
    trt._behaviors[("OnnxParser", "get_error")] = lambda self, i: f"node_{i}: unsupported"
    with pytest.raises(GhostedgeError) as e:
        build_tensorrt(BuildConfig(engines=engines_copy, target="dgpu"), lambda s: None, trt=trt, gpu=GPU)
    assert "[1] node_0: unsupported" in str(e.value) and "[2] node_1: unsupported" in str(e.value)
    assert not (engines_copy / "ghostnet.plan").exists()


@pytest.mark.parametrize("version", VERSIONS)
def test_version_and_hardware_compat(engines_copy: Path, version: str):
    trt, _ = _build(engines_copy, version, precision=Precision.fp16, hardware_compat=True, version_compatible=True)
    assert "VERSION_COMPATIBLE" in _flags_set(trt)
    sets = {c[1]: c[2][0] for c in trt._calls if c[1].endswith("=")}
    assert sets["hardware_compatibility_level="] == trt.HardwareCompatibilityLevel.AMPERE_PLUS


class _HostCuda:
    """Host memory standing in for the CUDA binding: lets the runner's TensorRT calls be checked.

    Allocations get fresh addresses; freed ones are remembered, so a graph replaying a freed address
    (defect 1) is caught."""

    def __init__(self):
        self.n = 0
        self.live: set[int] = set()
        self.freed: set[int] = set()
        self.graphs: dict = {}
        self.launched = 0
        self.destroyed: list = []

    def device_count(self):
        return 1

    def malloc(self, nbytes):
        self.n += 1
        ptr = 0x1000 * self.n
        self.live.add(ptr)
        return ptr

    def free(self, ptr):
        self.live.discard(ptr)
        self.freed.add(ptr)

    def stream(self):
        return 7

    def stream_handle(self, st):
        return st

    def h2d(self, dst, arr, st):
        assert dst in self.live, "copy into freed memory"

    def d2h(self, arr, src, st):
        assert src in self.live, "copy from freed memory"
        arr[...] = 1.0

    def sync(self, st):
        pass

    def event(self):
        return object()

    def record(self, ev, st):
        pass

    def elapsed_ms(self, a, b):
        return 0.5

    def capture(self, st, launch):
        if launch() is False:   # as _Cuda.capture: a refused enqueue under capture gives no graph
            return None
        g = ("graph", len(self.graphs))
        self.graphs[g] = list(self.tensor_addresses.values())
        return g

    def destroy_stream(self, st):
        self.destroyed.append(("stream", st))

    def destroy_event(self, ev):
        self.destroyed.append(("event", ev))

    def launch_graph(self, g, st):
        assert all(a in self.live for a in self.graphs[g]), "graph replays freed addresses"
        self.launched += 1

    def destroy_graph(self, g):
        pass


def _plan(tmp_path: Path, trt, **meta) -> Path:
    plan = tmp_path / "g.plan"
    plan.write_bytes(PLAN_MAGIC + json.dumps({"version": trt.__version__, **meta}).encode())
    return plan


def _engine_fake(version: str, profile: list[tuple], classes: int = 3):
    """A fake whose engine has one input and one output, with this min/opt/max profile; the context
    accepts shapes inside the profile only (set_input_shape returns False otherwise)."""
    trt = make_fake_trt(version)
    names = ["input", "logits"]
    trt._behaviors[("ICudaEngine", "num_io_tensors")] = lambda self: 2
    trt._behaviors[("ICudaEngine", "get_tensor_name")] = lambda self, i: names[i]
    trt._behaviors[("ICudaEngine", "get_tensor_mode")] = lambda self, n: (
        trt.TensorIOMode.INPUT if n == "input" else trt.TensorIOMode.OUTPUT)
    trt._behaviors[("ICudaEngine", "get_tensor_profile_shape")] = lambda self, n, p: profile
    state = {"shape": profile[1]}

    def set_shape(self, n, s):
        if not all(lo <= d <= hi for lo, d, hi in zip(profile[0], s, profile[2])):
            return False
        state["shape"] = tuple(s)
        return True

    addrs: dict = {}
    trt._behaviors[("IExecutionContext", "set_input_shape")] = set_shape
    trt._behaviors[("IExecutionContext", "get_tensor_shape")] = lambda self, n: (
        tuple(state["shape"]) if n == "input" else (state["shape"][0], classes))
    trt._behaviors[("IExecutionContext", "set_tensor_address")] = lambda self, n, a: addrs.update({n: a}) or True
    trt._addrs = addrs
    return trt


def _runner(tmp_path, trt, cu, **kw):
    from ghostedge.backends.tensorrt import TensorRTRunner

    cu.tensor_addresses = trt._addrs   # what a capture records: the addresses bound to the context
    return TensorRTRunner(_plan(tmp_path, trt, **kw.pop("meta", {})), trt=trt, cuda=cu, **kw)


@pytest.mark.parametrize("version", VERSIONS)
def test_runner_uses_name_based_io(tmp_path: Path, version: str):
    trt = _engine_fake(version, [(1, 3, 32, 32), (4, 3, 32, 32), (8, 3, 32, 32)])
    r = _runner(tmp_path, trt, _HostCuda())
    with r:
        y = r.infer(np.zeros((4, 3, 32, 32), np.float32))
        assert y.shape == (4, 3) and r.max_batch() == 8 and r.min_batch() == 1 and r.gpu_ms == [0.5]
        with pytest.raises(GhostedgeError, match="outside the engine's profile"):
            r.infer(np.zeros((9, 3, 32, 32), np.float32))
    assert called(trt, "IExecutionContext", "execute_async_v3")[-1][2] == (7,)
    addrs = called(trt, "IExecutionContext", "set_tensor_address")
    assert [a[2][0] for a in addrs][:2] == ["input", "logits"]
    assert not called(trt, "IExecutionContext", "execute_async_v2")


@pytest.mark.parametrize("version", VERSIONS)
def test_d01_cuda_graphs_replay_live_buffers_after_a_larger_batch(tmp_path: Path, version: str):
    """bench runs batches 1, 8, 32, then eval replays batch 1 and 8: the graphs must still point at live memory."""
    trt = _engine_fake(version, [(1, 3, 8, 8), (8, 3, 8, 8), (32, 3, 8, 8)])
    cu = _HostCuda()
    with _runner(tmp_path, trt, cu, cuda_graph=True) as r:
        for b in (1, 8, 32, 1, 8, 32, 1):
            r.infer(np.zeros((b, 3, 8, 8), np.float32))
        assert not cu.freed  # buffers were sized for the profile's maximum once
    assert cu.launched == 4 and len(cu.graphs) == 3


@pytest.mark.parametrize("version", VERSIONS)
def test_runner_replays_captured_cuda_graphs(tmp_path: Path, version: str):
    trt = _engine_fake(version, [(1, 3, 8, 8), (1, 3, 8, 8), (4, 3, 8, 8)])
    cu = _HostCuda()
    with _runner(tmp_path, trt, cu, cuda_graph=True) as r:
        for _ in range(3):
            r.infer(np.zeros((2, 3, 8, 8), np.float32))
    assert len(called(trt, "IExecutionContext", "execute_async_v3")) == 2  # one plain run, one captured
    assert cu.launched == 2


@pytest.mark.parametrize("version", [v for v in ["8.5.2", *VERSIONS]])
def test_d03_version_compatible_plans_deserialize_with_host_code_allowed(tmp_path: Path, version: str):
    from ghostedge.backends.tensorrt import TensorRTRunner

    trt = _engine_fake(version, [(1, 3, 8, 8), (1, 3, 8, 8), (4, 3, 8, 8)])
    plan = _plan(tmp_path, trt, vc=True)
    # what the fake documents: without the runtime flag, the plan does not deserialize
    assert trt.Runtime(None).deserialize_cuda_engine(plan.read_bytes()) is None
    r = TensorRTRunner(plan, trt=trt, cuda=_HostCuda(), version_compatible=True)
    if version == "8.5.2":  # 8.5 has no version compatibility at all: a clear error, no AttributeError
        with pytest.raises(GhostedgeError, match="needs 8.6 or later"):
            r.activate()
        return
    with r:
        r.infer(np.zeros((2, 3, 8, 8), np.float32))
    assert ("Runtime", "engine_host_code_allowed=", (True,), {}) in trt._calls


def test_d03_manifest_check_knows_version_compatible_and_hardware_compatible_rules():
    from ghostedge.bench import check_plan_manifest, runtime_can_load

    assert runtime_can_load("10.3.0", "10.16.1", True) and runtime_can_load("8.6.1", "10.3.0", True)
    assert runtime_can_load("10.3.0", "11.4.0", True) and not runtime_can_load("8.6.1", "11.4.0", True)
    assert not runtime_can_load("10.16.1", "10.3.0", True)   # never an older runtime
    assert not runtime_can_load("10.3.0", "10.16.1", False)
    gpu = {"gpu": "L4", "compute_capability": "8.9"}
    man = {"tensorrt": "10.3.0", "gpu": {"gpu": "A100", "compute_capability": "8.0"}, "hardware_compat": True}
    check_plan_manifest(man, "10.3.0", gpu)                                  # Ampere -> Ada: fine
    with pytest.raises(GhostedgeError, match="rebuild here"):
        check_plan_manifest(man, "10.3.0", {"gpu": "T4", "compute_capability": "7.5"})   # not Ampere+
    with pytest.raises(GhostedgeError, match="rebuild here"):
        check_plan_manifest(man, "10.3.0", {"gpu": "Orin", "compute_capability": "8.7"}, here_jetson=True)
    with pytest.raises(GhostedgeError, match="rebuild here"):
        check_plan_manifest({**man, "hardware_compat": False}, "10.3.0", gpu)


@pytest.mark.parametrize("version", DLA_VERSIONS)
def test_d04_dla_needs_a_static_profile(engines_copy: Path, version: str):
    # the fake refuses a dynamic DLA build, as TensorRT does
    trt = make_fake_trt(version)
    b = trt.Builder(None)
    cfg = b.create_builder_config()
    cfg.default_device_type = trt.DeviceType.DLA
    b.create_optimization_profile().set_shape("input", (1, 3, 8, 8), (8, 3, 8, 8), (32, 3, 8, 8))
    assert b.build_serialized_network(b.create_network(0), cfg) is None
    # ghostedge: an explicit dynamic profile is refused up front; without --batch DLA gets a static one
    with pytest.raises(GhostedgeError, match="static shape"):
        _build(engines_copy, version, precision=Precision.fp16, dla_core=0, target="agx-orin", batch=(1, 8, 32))
    trt, res = _build(engines_copy, version, precision=Precision.fp16, dla_core=0, target="agx-orin")
    shapes = called(trt, "IOptimizationProfile", "set_shape")[0][2]
    assert shapes[1] == shapes[2] == shapes[3] == (8, 3, 32, 32)
    assert "--shapes=input:8x3x32x32" in res.trtexec and "--minShapes" not in res.trtexec


@pytest.mark.parametrize("version", ["8.5.2", "8.6.1", "10.3.0", "11.4.1"])
def test_d05_dla_int8_builds_from_the_cache_before_11(engines_copy: Path, version: str):
    """Issue 18 item 7: no source confirms Q/DQ INT8 on DLA for 10.0-10.7 (IInt8EntropyCalibrator2 is "the
    required calibrator for DLA"), so 10.3 takes the cache path as 8.x does; 11.4.1's DLA is strongly typed."""
    surface = "11.4.0.106" if version == "11.4.1" else "8.6.1" if version == "8.5.2" else version
    if surface not in VERSIONS:
        pytest.skip(f"no {version} surface")
    import onnx

    trt, res = _build(engines_copy, version, precision=Precision.int8, dla_core=0, target="agx-orin")
    m = onnx.load_from_string(called(trt, "OnnxParser", "parse")[0][2][0])
    qdq = any(n.op_type == "QuantizeLinear" for n in m.graph.node)
    calibrated = bool([c for c in trt._calls if c[1] == "int8_calibrator="])
    if _major(version) < 11:
        stamp = f"trt{trt_version_int(trt.__version__)}"
        assert not qdq and calibrated and f"--calib=ghostnet.{stamp}.calib.cache" in res.trtexec
        assert "--onnx=ghostnet.implicit.onnx" in res.trtexec
        assert (engines_copy / f"ghostnet.{stamp}.calib.cache").read_text().startswith("TRT-")
    else:
        assert qdq and not calibrated and "--calib" not in res.trtexec


@pytest.mark.parametrize("version", [*VERSIONS, "11.4.1"])
def test_d05_tensorrt_versions_without_dla_refuse_it(engines_copy: Path, version: str):
    from ghostedge.backends.tensorrt import dla_supported

    assert dla_supported((8, 5, 2)) and dla_supported((10, 7, 0)) and dla_supported((11, 4, 1))
    assert not dla_supported((10, 8, 0)) and not dla_supported((10, 16, 1)) and not dla_supported((11, 3, 0))
    assert not dla_supported((11, 4, 0))   # 11.4.0: DLA on Windows on ARM only (11.4.1 "Working with DLA")
    if version.startswith(("10.16", "11.4.0")):
        with pytest.raises(GhostedgeError, match="cannot build for DLA"):
            _build(engines_copy, version, precision=Precision.fp16, dla_core=0, target="agx-orin")
    if version == "11.4.1":
        if "11.4.0.106" not in VERSIONS:
            pytest.skip("no 11.4 surface")
        _build(engines_copy, version, precision=Precision.fp16, dla_core=0, target="agx-orin")
        with pytest.raises(GhostedgeError, match="AGX Orin only"):   # the Orin NX has DLA, 11.4.1 does not use it
            _build(engines_copy, version, precision=Precision.fp16, dla_core=0, target="orin-nx")


@pytest.mark.parametrize("version", ["8.5.2", *VERSIONS])
@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_d08_printed_trtexec_line_builds_from_the_onnx_tensorrt_got(engines_copy: Path, version: str,
                                                                     precision: str):
    import shlex

    import onnx

    trt, res = _build(engines_copy, version, precision=Precision(precision))
    argv = shlex.split(res.trtexec)
    src = engines_copy / next(a.split("=", 1)[1] for a in argv if a.startswith("--onnx="))
    assert src.is_file()
    parsed = called(trt, "OnnxParser", "parse")[0][2][0]
    assert onnx.load(str(src)).SerializeToString() == parsed   # the very bytes TensorRT parsed
    man = json.loads((engines_copy / "ghostnet.plan.json").read_text())
    assert man["built_from_onnx"]["path"] == src.name and man["trtexec"] == res.trtexec
    flags = {a.split("=")[0] for a in argv}
    if _major(version) >= 11:
        assert not flags & {"--fp16", "--int8", "--calib", "--stronglyTyped"}
    elif man["strongly_typed"]:
        assert "--stronglyTyped" in flags and not flags & {"--fp16", "--int8"}
    else:
        assert "--fp16" in flags and ("--int8" in flags) == (precision == "int8")


@pytest.mark.parametrize("option", ["opt_level", "hardware_compat", "version_compatible"])
def test_d09_tensorrt_85_lacks_the_86_builder_features(engines_copy: Path, option: str):
    t85 = make_fake_trt("8.5.2")
    assert not hasattr(t85.BuilderFlag, "VERSION_COMPATIBLE") and not hasattr(t85, "HardwareCompatibilityLevel")
    kw = {"opt_level": 3} if option == "opt_level" else {option: True}
    with pytest.raises(GhostedgeError, match="needs TensorRT 8.6"):
        build_tensorrt(BuildConfig(engines=engines_copy, target="dgpu", precision=Precision.fp16, **kw),
                       lambda s: None, trt=t85, gpu=GPU)
    _build(engines_copy, "8.5.2", precision=Precision.fp16)   # and without them 8.5 builds


@pytest.mark.parametrize("target,gpu", [("xavier-nx", {**GPU, "compute_capability": "7.2"}),
                                        ("agx-orin", GPU), ("dgpu", {**GPU, "compute_capability": "7.5"})])
def test_d10_hardware_compat_only_on_ampere_plus_dgpus(engines_copy: Path, target: str, gpu: dict):
    with pytest.raises(GhostedgeError, match="hardware-compat"):
        build_tensorrt(BuildConfig(engines=engines_copy, target=target, precision=Precision.fp16,
                                   hardware_compat=True), lambda s: None, trt=make_fake_trt(VERSIONS[-1]), gpu=gpu)


@pytest.mark.parametrize("version", VERSIONS)
def test_d13_batches_outside_the_profile(tmp_path: Path, version: str):
    from ghostedge.bench import _logits

    trt = _engine_fake(version, [(8, 3, 8, 8), (8, 3, 8, 8), (8, 3, 8, 8)])  # a static (DLA-like) engine
    with _runner(tmp_path, trt, _HostCuda()) as r:
        with pytest.raises(GhostedgeError, match="outside the engine's profile"):
            r.infer(np.zeros((3, 3, 8, 8), np.float32))
        y = _logits(r, np.zeros((21, 3, 8, 8), np.float32), 32)   # 8 + 8 + 5 padded to 8, trimmed
        assert y.shape == (21, 3)
    # TensorRT refusing a shape is an error, not a silent run with the old shape
    trt2 = _engine_fake(version, [(1, 3, 8, 8), (4, 3, 8, 8), (8, 3, 8, 8)])
    trt2._behaviors[("IExecutionContext", "set_input_shape")] = lambda self, n, s: s[0] != 5
    with _runner(tmp_path, trt2, _HostCuda()) as r:
        with pytest.raises(GhostedgeError, match="refused input shape"):
            r.infer(np.zeros((5, 3, 8, 8), np.float32))


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("cache", ["other-device", "corrupt"])
def test_d14_timing_cache_from_another_gpu_falls_back_and_the_engine_is_kept(engines_copy: Path, version: str,
                                                                           cache: str):
    tc = engines_copy / "tc.cache"
    tc.write_bytes(cache.encode() + b" cache bytes")
    said = []
    trt = make_fake_trt(version)
    build_tensorrt(BuildConfig(engines=engines_copy, target="dgpu", precision=Precision.fp16, timing_cache=tc),
                   said.append, trt=trt, gpu=GPU)
    assert (engines_copy / "ghostnet.plan").read_bytes().startswith(PLAN_MAGIC)
    assert any("--timing-cache" in m and "empty cache" in m for m in said)
    assert tc.read_bytes() == b"timing-cache:" + trt.__version__.encode()   # replaced by this GPU's cache
    # get_timing_cache() returning None after the build costs a warning, never the engine
    (engines_copy / "ghostnet.plan").unlink()
    trt = make_fake_trt(version)
    trt._behaviors[("IBuilderConfig", "get_timing_cache")] = lambda self: None
    said.clear()
    build_tensorrt(BuildConfig(engines=engines_copy, target="dgpu", precision=Precision.fp16, timing_cache=tc),
                   said.append, trt=trt, gpu=GPU)
    assert (engines_copy / "ghostnet.plan").is_file() and any("not saved" in m for m in said)


def test_d15_calibration_cache_stamped_for_the_target(tmp_path: Path, tiny_weights: Path, image_folder: Path):
    from ghostedge.quantize import QuantizeConfig, cache_trt_for, quantize

    assert cache_trt_for("auto") == "8.5.2" and cache_trt_for("thor") == "10.13"
    assert cache_trt_for("auto", "10.3.0") == "10.3.0"
    with pytest.raises(GhostedgeError, match="cache-trt-version"):
        cache_trt_for("auto", "latest")
    out = tmp_path / "e"
    quantize(QuantizeConfig(calib=image_folder, out=out, weights=tiny_weights, num_images=8, batch=4, holdout=4,
                            threads=1, trt_version=cache_trt_for()))
    assert (out / "ghostnet.calib.cache").read_text().startswith("TRT-8502-EntropyCalibration2")


def test_d15_stale_stamp_is_warned_about_on_the_board(engines_copy: Path, monkeypatch: pytest.MonkeyPatch):
    import ghostedge.build as b
    from ghostedge.targets import TARGETS, Platform

    monkeypatch.setattr(b, "resolve", lambda name: Platform(TARGETS["agx-orin"], "AGX Orin", "36.4.3", "6.2",
                                                            "10.3.0"))
    said = []
    b._cache_stamp_warning(engines_copy / "ghostnet.calib.cache", b.resolve("auto"), said.append)
    assert said and "TRT-8502" in said[0] and "10.3.0" in said[0]


@pytest.mark.parametrize("version", DLA_VERSIONS)
def test_d16_runner_sets_the_dla_core_before_deserializing(tmp_path: Path, version: str):
    trt = _engine_fake(version, [(8, 3, 8, 8), (8, 3, 8, 8), (8, 3, 8, 8)])
    with _runner(tmp_path, trt, _HostCuda(), dla_core=1, meta={"dla_core": 1}) as r:
        assert r.engine.__dict__["_runtime_dla_core"] == 1


def test_d17_cuda_errors_are_named_not_no_device():
    from ghostedge.backends.tensorrt import _Cuda

    class Err(int):
        name = "cudaErrorInsufficientDriver"

    class NoDev(int):
        name = "cudaErrorNoDevice"

    class Rt:
        def __init__(self, err, driver=12060):
            self.err, self.driver = err, driver

        def cudaGetDeviceCount(self):
            return (self.err, 0)

        def cudaDriverGetVersion(self):
            return (0, self.driver)

    with pytest.raises(GhostedgeError, match="cudaErrorInsufficientDriver.*CUDA 12.6.*cuda-python"):
        _Cuda(Rt(Err(35))).device_count()
    assert _Cuda(Rt(NoDev(100))).device_count() == 0
    pyproject = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
    import re

    for extra in re.findall(r'"cuda-python[^"]*"', pyproject):
        assert "<" in extra, f"unbounded cuda-python in an extra: {extra}"


def test_d18_l4t_table():
    from ghostedge.targets import jetpack_for

    assert jetpack_for((38, 4, 0))[0] == "7.1" and jetpack_for((39, 0, 0))[0] == "7.2 EA"
    assert jetpack_for((35, 6, 2))[0] == "5.1.5" and jetpack_for((36, 5, 0))[0].startswith("6.2")
    assert jetpack_for((36, 4, 3)) == ("6.2", "10.3.0") and jetpack_for((35, 2, 1)) == ("5.1", "8.5.2")


@pytest.mark.parametrize("node", ["17000000.ga10b", "17000000.gv11b"])
def test_d19_jetson_gpu_clock_read_from_class_devfreq(tmp_path: Path, node: str):
    from ghostedge.targets import jetson_gpu_clock

    d = tmp_path / "sys/class/devfreq" / node
    d.mkdir(parents=True)
    (tmp_path / "sys/class/devfreq/15340000.vic").mkdir()
    for f, v in (("cur_freq", "1300500000"), ("min_freq", "1300500000"), ("max_freq", "1300500000"),
                 ("available_frequencies", "306000000 624750000 1300500000")):
        (d / f).write_text(v + "\n")
    clk = jetson_gpu_clock(tmp_path)
    assert clk == {"node": node, "cur_hz": 1300500000, "min_hz": 1300500000, "max_hz": 1300500000,
                   "jetson_clocks": True}
    (d / "min_freq").write_text("306000000\n")
    assert jetson_gpu_clock(tmp_path)["jetson_clocks"] is False


@pytest.mark.parametrize("version", DLA_VERSIONS)
def test_d20_dla_cores_come_from_the_builder_and_unknown_boards_warn(engines_copy: Path, tmp_path: Path,
                                                                     version: str):
    from ghostedge.targets import detect

    trt = make_fake_trt(version)
    trt._num_dla_cores = 1                    # an Orin NX 8 GB: one DLA, whatever the preset says
    target = "orin-nx" if _major(version) < 11 else "agx-orin"   # 11.4.1 has DLA on AGX Orin only
    with pytest.raises(GhostedgeError, match="has 1 DLA core"):
        build_tensorrt(BuildConfig(engines=engines_copy, target=target, precision=Precision.fp16, dla_core=1),
                       lambda s: None, trt=trt, gpu=GPU)
    (tmp_path / "proc/device-tree").mkdir(parents=True)
    (tmp_path / "proc/device-tree/model").write_bytes(b"Some Carrier Board\x00")
    with pytest.warns(UserWarning, match="unrecognised Jetson board"):
        assert detect(tmp_path).target.name == "agx-orin"


def test_d21_warmup_lasts_at_least_200_ms():
    import time

    from ghostedge.backends.base import BaseRunner
    from ghostedge.bench import MIN_WARMUP_S, time_runner

    class Fast(BaseRunner):
        calls: list = []

        def activate_impl(self):
            pass

        def infer_impl(self, x):
            self.calls.append(time.perf_counter())
            return x

    r = Fast("fast").activate()
    t0 = time.perf_counter()
    time_runner(r, np.zeros((1, 3, 8, 8), np.float32), warmup=3, iters=5, seconds=0)
    assert MIN_WARMUP_S >= 0.2 and r.calls[-5] - t0 >= 0.2   # the first timed call comes >= 200 ms in


@pytest.mark.parametrize("version", VERSIONS)
def test_d11_inspector_reads_layers_as_trex_does(version: str):
    """Kind from ParameterType (LayerType is the kernel family), precision from Inputs[0]."""
    from ghostedge.backends.tensorrt import inspect_engine

    trt = make_fake_trt(version)
    info = {"Layers": [
        {"Name": "conv1", "LayerType": "CaskConvolution", "ParameterType": "Convolution",
         "Inputs": [{"Format/Datatype": "Int8 NC/32HW32"}], "Outputs": [{"Format/Datatype": "Float NCHW"}],
         "TacticName": "sm80_xmma"},
        {"Name": "reformat_in", "LayerType": "Reformat", "ParameterType": "Reformat",
         "Inputs": [{"Format/Datatype": "Float"}], "Outputs": [{"Format/Datatype": "Int8 NC/32HW32"}]},
        {"Name": "se", "LayerType": "PointWiseV2", "ParameterType": "PointWise",
         "Inputs": [{"Format/Datatype": "Float"}], "Outputs": [{"Format/Datatype": "Float"}]},
        {"Name": "bf", "LayerType": "CaskConvolution", "ParameterType": "Convolution",
         "Inputs": [{"Format/Datatype": "BFloat16 NCHW"}], "Outputs": [{"Format/Datatype": "BFloat16"}]},
        {"Name": "h", "LayerType": "CaskPooling", "ParameterType": "Pooling",
         "Inputs": [{"Format/Datatype": "Half NC/8HW8"}], "Outputs": [{"Format/Datatype": "Half"}]}]}
    trt._behaviors[("EngineInspector", "get_engine_information")] = lambda self, fmt: json.dumps(info)
    eng = trt.ICudaEngine.__new__(trt.ICudaEngine)
    rows = inspect_engine(trt, eng)
    assert [r["type"] for r in rows] == ["Convolution", "Reformat", "PointWise", "Convolution", "Pooling"]
    assert [r["precision"] for r in rows] == ["int8", "fp32", "fp32", "bf16", "fp16"]
    assert [r["flags"] for r in rows] == [[], ["reformat"], ["fp32"], [], []]
    fmt = called(trt, "EngineInspector", "get_engine_information")[0][2][0]
    assert fmt == trt.LayerInformationFormat.JSON


def test_jetson_detection(tmp_path: Path):
    from ghostedge.targets import detect, resolve

    (tmp_path / "proc/device-tree").mkdir(parents=True)
    (tmp_path / "etc").mkdir()
    (tmp_path / "proc/device-tree/model").write_bytes(b"NVIDIA Jetson Orin Nano Developer Kit\x00")
    (tmp_path / "etc/nv_tegra_release").write_text("# R36 (release), REVISION: 4.3, GCID: 1, BOARD: generic")
    p = detect(tmp_path)
    assert p.target.name == "orin-nano" and p.l4t == "36.4.3" and p.expected_trt == "10.3.0"
    (tmp_path / "proc/device-tree/model").write_bytes(b"Jetson-AGX\x00")
    (tmp_path / "etc/nv_tegra_release").write_text("# R35 (release), REVISION: 4.1, GCID: 2")
    p = detect(tmp_path)
    assert p.target.name == "agx-xavier" and p.jetpack == "5.1.2" and p.expected_trt == "8.5.2"
    assert detect(tmp_path / "nothing") is None
    assert resolve("auto", tmp_path / "nothing").target.name == "dgpu"
    with pytest.raises(GhostedgeError, match="unknown --target"):
        resolve("nano")
