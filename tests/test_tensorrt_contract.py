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
        if launch() is False:   # as Cuda.capture: a refused enqueue under capture gives no graph
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
    from ghostedge.backends.tensorrt import check_plan_manifest, runtime_can_load

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
    from ghostedge.backends.base import logits_in_batches

    trt = _engine_fake(version, [(8, 3, 8, 8), (8, 3, 8, 8), (8, 3, 8, 8)])  # a static (DLA-like) engine
    with _runner(tmp_path, trt, _HostCuda()) as r:
        with pytest.raises(GhostedgeError, match="outside the engine's profile"):
            r.infer(np.zeros((3, 3, 8, 8), np.float32))
        y = logits_in_batches(r, np.zeros((21, 3, 8, 8), np.float32), 32)   # 8 + 8 + 5 padded to 8, trimmed
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
    from ghostedge.cli import flag_for

    with pytest.raises(GhostedgeError) as bad:       # the library names the setting, the CLI its flag
        cache_trt_for("auto", "latest")
    assert "cache-trt-version" in bad.value.render(flag_for)
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
    from ghostedge.backends.cuda import Cuda

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
        Cuda(Rt(Err(35))).device_count()
    assert Cuda(Rt(NoDev(100))).device_count() == 0
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
    from ghostedge.timing import MIN_WARMUP_S, time_runner

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


# ---------------------------------------------------------------------------------------------
# issue 18: a third reading against the real sources

#: raw inspector layers as TensorRT writes them (not trex's translation), one per release family:
#: 8.x - NVIDIA's ResNet QAT example on an A100 (NVIDIA/TensorRT tools/experimental/trt-engine-explorer/
#:   examples/pytorch/resnet/A100/qat/resnet-qat.onnx.engine.graph.json), verbatim but shortened;
#: 10.x - a torch-tensorrt engine on JetPack 6 (fuzzylabs/edge-vision-power-estimation docs, trt_engine_info.json:
#:   "StreamId"/"Metadata" are 10.x fields);
#: 11.x - the 10.x -> 11.x IEngineInspector migration page: "DataType" beside a "Format" with a (kFORMAT) suffix.
RAW_86 = {"Layers": [
    {"Name": "QuantizeLinear_2", "LayerType": "Reformat",
     "Inputs": [{"Name": "input.1", "Location": "Device", "Dimensions": [32, 3, 224, 224],
                 "Format/Datatype": "Row major linear FP32"}],
     "Outputs": [{"Name": "onnx::DequantizeLinear_125", "Location": "Device", "Dimensions": [32, 3, 224, 224],
                  "Format/Datatype": "Four wide channel vectorized row major Int8 format"}],
     "ParameterType": "Reformat", "Origin": "QDQ", "TacticValue": "0x0000000000000000"},
    {"Name": "conv1.weight + QuantizeLinear_7 + Conv_9", "LayerType": "CaskConvolution",
     "Inputs": [{"Name": "onnx::DequantizeLinear_125", "Location": "Device", "Dimensions": [32, 3, 224, 224],
                 "Format/Datatype": "Four wide channel vectorized row major Int8 format"}],
     "Outputs": [{"Name": "onnx::MaxPool_136", "Location": "Device", "Dimensions": [32, 64, 112, 112],
                  "Format/Datatype": "Row major linear FP32"}],
     "ParameterType": "Convolution", "TacticName": "ampere_fp32_icudnn_int8x4_128x64_relu_medium_nn_v1"},
    {"Name": "MaxPool_12", "LayerType": "TiledPooling",
     "Inputs": [{"Name": "onnx::MaxPool_136", "Location": "Device", "Dimensions": [32, 64, 112, 112],
                 "Format/Datatype": "Row major linear FP32"}],
     "Outputs": [{"Name": "Reformatted Output Tensor 0 to MaxPool_12", "Location": "Device",
                  "Dimensions": [32, 64, 56, 56], "Format/Datatype": "Row major linear FP32"}],
     "ParameterType": "Pooling", "TacticValue": "0x0000000000270101"},
    {"Name": "layer1.0.conv2.weight + QuantizeLinear_32 + Conv_34 + Add_36 + Relu_37",
     "LayerType": "CaskConvolution",
     "Inputs": [{"Name": "onnx::DequantizeLinear_154", "Location": "Device", "Dimensions": [32, 64, 56, 56],
                 "Format/Datatype": "Thirty-two wide channel vectorized row major Int8 format"},
                {"Name": "inputs", "Location": "Device", "Dimensions": [32, 64, 56, 56],
                 "Format/Datatype": "Thirty-two wide channel vectorized row major FP16 format"}],
     "Outputs": [{"Name": "inputs.4", "Location": "Device", "Dimensions": [32, 64, 56, 56],
                  "Format/Datatype": "Thirty-two wide channel vectorized row major FP16 format"}],
     "ParameterType": "Convolution", "TacticName": "sm80_xmma_fprop_implicit_gemm_interleaved_i8f16_i8i32_f32"}]}
RAW_10 = {"Layers": [
    {"Name": "Reformatting CopyNode for Input Tensor 0 to [CONVOLUTION]-[aten_ops.convolution.default]-"
             "[/features/0/convolution] + [RELU]-[aten_ops.relu.default]-[/features/1/relu]",
     "LayerType": "Reformat",
     "Inputs": [{"Name": "x", "Location": "Device", "Dimensions": [1, 3, 224, 224],
                 "Format/Datatype": "Row major linear FP16 format"}],
     "Outputs": [{"Name": "Reformatted Input Tensor 0", "Location": "Device", "Dimensions": [1, 3, 224, 224],
                  "Format/Datatype": "Channel major FP16 format where channel % 4 == 0"}],
     "ParameterType": "Reformat", "Origin": "REFORMAT", "TacticValue": "0x00000000000003ea", "StreamId": 0,
     "Metadata": ""},
    {"Name": "[CONVOLUTION]-[aten_ops.convolution.default]-[/features/0/convolution]", "LayerType": "CaskConvolution",
     "Inputs": [{"Name": "Reformatted Input Tensor 0", "Location": "Device", "Dimensions": [1, 3, 224, 224],
                 "Format/Datatype": "Channel major FP16 format where channel % 4 == 0"}],
     "Outputs": [{"Name": "y", "Location": "Device", "Dimensions": [1, 64, 55, 55],
                  "Format/Datatype": "Channel major FP16 format where channel % 8 == 0"}],
     "ParameterType": "Convolution", "StreamId": 0, "Metadata": ""}]}
RAW_11 = {"I/O Tensors": [{"Name": "input_0", "IOMode": "Input", "DataType": "Float", "Dimensions": [1, 3, 224, 224],
                           "Location": "Device", "IsShapeInferenceIO": False,
                           "ProfileInfo": [{"Format": "Row major linear FP32 format (kLINEAR)"}]}],
          "Layers": [
    {"Name": "conv", "LayerType": "CaskConvolution", "ParameterType": "Convolution",
     "Inputs": [{"Name": "a", "DataType": "Int8",
                 "Format": "Thirty-two wide channel vectorized row major Int8 format (kCHW32)"}],
     "Outputs": [{"Name": "b", "DataType": "Half", "Format": "Thirty-two wide channel vectorized row major FP16 "
                                                            "format (kCHW32)"}]},
    {"Name": "head", "LayerType": "CaskGemm", "ParameterType": "MatrixMultiply",
     "Inputs": [{"Name": "b", "DataType": "Float", "Format": "Row major linear FP32 format (kLINEAR)"}],
     "Outputs": [{"Name": "c", "DataType": "Float", "Format": "Row major linear FP32 format (kLINEAR)"}]}]}


@pytest.mark.parametrize("raw,want", [
    (RAW_86, ["fp32", "int8", "fp32", "int8"]),
    (RAW_10, ["fp16", "fp16"]),
    (RAW_11, ["int8", "fp32"]),
])
def test_i18_01_inspector_precision_from_the_raw_strings_of_each_version(raw: dict, want: list[str]):
    from ghostedge.backends.tensorrt import inspect_engine

    trt = make_fake_trt(VERSIONS[-1])
    trt._behaviors[("EngineInspector", "get_engine_information")] = lambda self, fmt: json.dumps(raw)
    rows = inspect_engine(trt, trt.ICudaEngine.__new__(trt.ICudaEngine))
    assert [r["precision"] for r in rows] == want
    fp32_flagged = [r["name"] for r in rows if "fp32" in r["flags"]]
    if raw is RAW_86:   # the FP32 max-pool between INT8 convs is a fallback; the fused add's residual is FP16
        assert fp32_flagged == ["MaxPool_12"] and rows[-1]["inputs"] == ["int8", "fp16"]
    if raw is RAW_11:
        assert fp32_flagged == ["head"]


@pytest.mark.parametrize("version", VERSIONS)
def test_i18_03_failed_cuda_graph_capture_falls_back_without_a_graph(tmp_path: Path, version: str):
    """trtexec ends a capture whose enqueue failed and runs without a graph; an empty graph would replay stale
    outputs. The fake's enqueue succeeds when run and fails under capture (the 2nd call of each shape)."""
    trt = _engine_fake(version, [(1, 3, 8, 8), (2, 3, 8, 8), (4, 3, 8, 8)])
    runs = {"n": 0}

    def enqueue(self, stream):
        runs["n"] += 1
        return runs["n"] != 2          # the call made under capture

    trt._behaviors[("IExecutionContext", "execute_async_v3")] = enqueue
    cu = _HostCuda()
    with _runner(tmp_path, trt, cu, cuda_graph=True) as r:
        for _ in range(3):
            r.infer(np.zeros((2, 3, 8, 8), np.float32))
        assert not r._graphs and cu.launched == 0 and runs["n"] == 4   # run, failed capture, then plain runs
        assert r.warnings and "capture failed" in r.warnings[0]


def test_i18_03_cuda_capture_ends_and_cleans_up_after_a_refused_enqueue():
    """Cuda.capture against a cudart whose calls are recorded: a False enqueue ends the capture, destroys the
    graph it returned and clears the error (sampleDevice.h endCaptureOnError), and instantiates nothing."""
    from ghostedge.backends.cuda import Cuda

    calls = []

    class Rt:
        class cudaStreamCaptureMode:
            cudaStreamCaptureModeGlobal = 0

        def __getattr__(self, name):
            def call(*a):
                calls.append(name)
                return (0, "graph") if name == "cudaStreamEndCapture" else (0, "exe") \
                    if name == "cudaGraphInstantiateWithFlags" else (0,)
            return call

    cu = Cuda(Rt())
    assert cu.capture(7, lambda: False) is None
    assert calls == ["cudaStreamBeginCapture", "cudaStreamEndCapture", "cudaGraphDestroy", "cudaGetLastError"]
    calls.clear()
    assert cu.capture(7, lambda: True) == "exe" and "cudaGraphInstantiateWithFlags" in calls


@pytest.mark.parametrize("version", VERSIONS)
def test_i18_09_streams_and_events_are_destroyed(tmp_path: Path, version: str):
    trt = _engine_fake(version, [(1, 3, 8, 8), (2, 3, 8, 8), (4, 3, 8, 8)])
    cu = _HostCuda()
    with _runner(tmp_path, trt, cu) as r:
        r.infer(np.zeros((2, 3, 8, 8), np.float32))
    kinds = [k for k, _ in cu.destroyed]
    assert kinds.count("event") == 2 and kinds.count("stream") == 1


@pytest.mark.parametrize("version", [v for v in VERSIONS if _major(v) < 11])
def test_i18_02_build_never_writes_over_quantizes_cache(engines_copy: Path, version: str):
    import hashlib

    cache = engines_copy / "ghostnet.calib.cache"
    before = hashlib.sha256(cache.read_bytes()).hexdigest()
    trt, res = _build(engines_copy, version, precision=Precision.int8, calib_cache=cache)
    assert hashlib.sha256(cache.read_bytes()).hexdigest() == before
    man = json.loads((engines_copy / "ghostnet.plan.json").read_text())
    restamped = engines_copy / man["calib_cache"]
    assert restamped != cache and restamped.read_text().startswith(f"TRT-{trt_version_int(trt.__version__)}-")
    assert f"--calib={restamped.name}" in res.trtexec


def test_i18_06_jetson_clocks_under_a_capped_nvpmodel(tmp_path: Path):
    """An Orin Nano / NX power mode caps devfreq max below the top available frequency; jetson_clocks then pins
    min = max = the cap, which jtop (jetson_clocks_alive) reads as on."""
    from ghostedge.targets import jetson_gpu_clock

    d = tmp_path / "sys/class/devfreq/17000000.ga10b"
    d.mkdir(parents=True)
    for f, v in (("cur_freq", "624750000"), ("min_freq", "624750000"), ("max_freq", "624750000"),
                 ("available_frequencies", "306000000 624750000 1020000000")):
        (d / f).write_text(v + "\n")
    assert jetson_gpu_clock(tmp_path)["jetson_clocks"] is True
    (d / "min_freq").write_text("306000000\n")       # the governor free to scale down: off
    assert jetson_gpu_clock(tmp_path)["jetson_clocks"] is False


def test_i18_18_l4t_rows_have_sources():
    from ghostedge.targets import jetpack_for

    assert jetpack_for((35, 6, 3))[0] == "5.1.5" and jetpack_for((35, 6, 4))[0] == "5.1.6"   # jtop
    assert jetpack_for((35, 6, 0))[0] == "5.1.4"
    # L4T >= 39 ships TensorRT 10.16.1 (jetson-containers); no source says R39.2 is 7.2.2 / TensorRT 11.4
    for v in ((39, 0, 0), (39, 1, 0), (39, 2, 0)):
        assert jetpack_for(v)[1] == "10.16.1" and jetpack_for(v)[0] != "7.2.2"


@pytest.mark.parametrize("field,value", [("dla_core", 0), ("version_compatible", True), ("hardware_compat", True),
                                         ("opt_level", 3), ("workspace_mib", 512), ("timing_cache", Path("t.cache"))])
def test_i18_08_torch_tensorrt_refuses_what_it_would_drop(engines_copy: Path, field: str, value, monkeypatch):
    import sys

    from ghostedge.build import build

    monkeypatch.setitem(sys.modules, "torch_tensorrt", None)   # an import would fail: refused before it
    cfg = BuildConfig(engines=engines_copy, frontend="torch-tensorrt", **{field: value})
    with pytest.raises(GhostedgeError, match="torch-tensorrt does not support"):
        build(cfg)


def test_i18_08_torch_tensorrt_extra_brings_cuda_python():
    import re

    pyproject = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
    extra = re.search(r"^torch-tensorrt = \[(.*)\]", pyproject, re.MULTILINE).group(1)
    assert "cuda-python" in extra


def test_i18_partial8_trtexec_line_for_an_11x_board_without_tensorrt(engines_copy: Path, monkeypatch):
    """An 11.x target (the board's expected TensorRT) gets the Q/DQ ONNX, never the FP32 one or a cache."""
    import ghostedge.build as b
    from ghostedge.targets import TARGETS, Platform

    monkeypatch.setattr(b, "resolve", lambda name: Platform(TARGETS["agx-orin"], "AGX Orin", "39.9.0", "7.2.2",
                                                            "11.4.1"))
    monkeypatch.setitem(__import__("sys").modules, "tensorrt", None)
    for kw in ({}, {"dla_core": 0}):
        with pytest.raises(GhostedgeError) as e:
            build_tensorrt(BuildConfig(engines=engines_copy, precision=Precision.int8, **kw), lambda s: None)
        assert "--onnx=ghostnet.int8.onnx" in str(e.value) and "--calib=" not in str(e.value)


def test_i18_05_bench_and_inspect_name_the_cuda_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """open_runner (bench, inspect) says why CUDA is unusable, not "this machine has no CUDA GPU"."""
    import sys
    import types

    import ghostedge.backends.cuda as backend
    from ghostedge.bench import open_runner
    from ghostedge.manifest import write_manifest

    plan = tmp_path / "g.plan"
    plan.write_bytes(PLAN_MAGIC)
    write_manifest(plan, {"backend": "tensorrt", "tensorrt": "10.3.0", "gpu": GPU, "precision": "int8"})
    fake = types.ModuleType("tensorrt")
    fake.__version__ = "10.3.0"
    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    why = "cudaGetDeviceCount failed: cudaErrorInsufficientDriver (35): the driver supports CUDA 12.2; install ..."
    monkeypatch.setattr(backend, "cuda_probe", lambda: (None, why))
    with pytest.raises(GhostedgeError, match="cudaErrorInsufficientDriver"):
        open_runner(plan)


@pytest.mark.parametrize("version", [v for v in VERSIONS if tuple(map(int, v.split(".")[:2])) >= (8, 6)])
@pytest.mark.parametrize("precision,layout", [("int8", "nhwc"), ("fp16", "nchw"), ("fp32", "nchw")])
def test_uint8_input_engine_parses_the_uint8_graph_and_profiles_its_layout(engines_copy: Path, version: str,
                                                                           precision: str, layout: str):
    """--input uint8: TensorRT gets the graph with the uint8 prelude (the FP16-typed one where strongly typed), the
    profile in the input's layout, the trtexec line the same shapes and file; the manifest records the input."""
    import shlex

    import onnx

    from ghostedge.input_uint8 import NORMALISED, InputFormat

    from .test_onnx_trt_rules import check_trt_rules, check_uint8_prelude

    fmt = InputFormat("uint8", layout)
    trt, res = _build(engines_copy, version, precision=Precision(precision), batch=(1, 4, 8), input_format=fmt)
    parsed = onnx.load_from_string(called(trt, "OnnxParser", "parse")[0][2][0])
    assert parsed.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8
    man = json.loads((engines_copy / "ghostnet.plan.json").read_text())
    fp16_typed = man["strongly_typed"] and precision != "fp32"
    check_trt_rules(parsed, ("10.x", "11.x") if fp16_typed else ("8.6", "10.x"), fp16_typed=fp16_typed)
    check_uint8_prelude(parsed, layout)
    if precision == "int8":
        first_q = next(n for n in parsed.graph.node if n.op_type == "QuantizeLinear")
        assert first_q.input[0] in (NORMALISED, "input_fp16")   # it quantizes the normalised tensor
    shapes = called(trt, "IOptimizationProfile", "set_shape")[0][2]
    assert shapes[1] == fmt.shape(1, 32) and shapes[3] == fmt.shape(8, 32)
    assert man["model"]["extra"]["input"] == fmt.to_dict()
    argv = shlex.split(res.trtexec)
    src = engines_copy / next(a.split("=", 1)[1] for a in argv if a.startswith("--onnx="))
    assert onnx.load(str(src)).SerializeToString() == parsed.SerializeToString() and "uint8" in src.name
    want = "x".join(map(str, fmt.shape(8, 32)))
    assert f"--maxShapes=input:{want}" in argv


def test_uint8_input_needs_tensorrt_86_and_the_explicit_qdq_build(engines_copy: Path):
    from ghostedge.input_uint8 import InputFormat

    with pytest.raises(GhostedgeError, match="needs TensorRT 8.6 or later"):
        _build(engines_copy, "8.5.2", precision=Precision.int8, input_format=InputFormat("uint8"))
    v = next((v for v in VERSIONS if v.startswith("10.3")), None)
    if v is None:
        pytest.skip("needs the 10.3 surface")
    with pytest.raises(GhostedgeError, match="not from a legacy calibration cache"):
        _build(engines_copy, v, precision=Precision.int8, input_format=InputFormat("uint8"),
               calib_cache=engines_copy / "ghostnet.calib.cache")


def test_uint8_input_recipe_off_the_board(engines_copy: Path, monkeypatch: pytest.MonkeyPatch):
    """Without TensorRT: the uint8-input ONNX is written beside the others and the trtexec line uses it."""
    import onnx

    from ghostedge.backends import tensorrt as backend
    from ghostedge.input_uint8 import InputFormat

    def no_trt():
        raise GhostedgeError("TensorRT is not installed")

    monkeypatch.setattr(backend, "import_tensorrt", no_trt)
    with pytest.raises(GhostedgeError, match="ghostnet.int8.nhwc-uint8.onnx") as e:
        build_tensorrt(BuildConfig(engines=engines_copy, target="agx-orin", precision=Precision.int8,
                                   input_format=InputFormat("uint8", "nhwc")), lambda s: None)
    assert "input:32x32x32x3" in str(e.value) or "input:1x32x32x3" in str(e.value)
    m = onnx.load(str(engines_copy / "ghostnet.int8.nhwc-uint8.onnx"))
    assert m.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8


@pytest.mark.parametrize("version", [v for v in VERSIONS if not v.startswith("8.")])
def test_runner_feeds_uint8_to_a_uint8_input_engine(tmp_path: Path, version: str):
    trt = _engine_fake(version, [(1, 32, 32, 3), (4, 32, 32, 3), (8, 32, 32, 3)])
    trt._behaviors[("ICudaEngine", "get_tensor_dtype")] = lambda self, n: (
        trt.DataType.UINT8 if n == "input" else trt.DataType.FLOAT)
    cu = _HostCuda()
    sent = []
    cu.h2d = lambda dst, arr, st: sent.append(arr)
    with _runner(tmp_path, trt, cu) as r:
        y = r.infer(np.full((4, 32, 32, 3), 200, np.uint8))
    assert y.dtype == np.float32 and y.shape == (4, 3)
    assert sent[0].dtype == np.uint8 and sent[0].nbytes == 4 * 32 * 32 * 3 and int(sent[0].max()) == 200
