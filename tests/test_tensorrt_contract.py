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

from .trt_fake import API_DIR, available_versions, called, make_fake_trt

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
    assert plan.read_bytes() == b"fake-serialized-engine"
    man = json.loads((engines_copy / "ghostnet.plan.json").read_text())
    assert man["tensorrt"] == trt.__version__ and man["precision"] == precision and man["batch"] == [1, 4, 8]
    assert man["gpu"]["compute_capability"] == "8.7" and man["source_onnx"]["sha256"]
    assert cache.read_bytes() == b"fake-serialized-engine"  # timing cache saved
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


@pytest.mark.parametrize("version", VERSIONS)
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
    cfg = BuildConfig(engines=engines_copy, target="agx-orin", precision=Precision.int8, dla_core=1,
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
    """Host memory standing in for the CUDA binding: lets the runner's TensorRT calls be checked."""

    def __init__(self):
        self.n = 0

    def device_count(self):
        return 1

    def malloc(self, nbytes):
        self.n += 1
        return 0x1000 * self.n

    def free(self, ptr):
        pass

    def stream(self):
        return 7

    def stream_handle(self, st):
        return st

    def h2d(self, dst, arr, st):
        pass

    def d2h(self, arr, src, st):
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
        launch()  # stream capture records, it does not run
        return ("graph", st)

    def launch_graph(self, g, st):
        self.launched = getattr(self, "launched", 0) + 1


def _engine_fake(version: str, profile: list[tuple]):
    """A fake whose engine has one input and one output, with this min/opt/max profile."""
    trt = make_fake_trt(version)
    names = ["input", "logits"]
    trt._behaviors[("ICudaEngine", "num_io_tensors")] = lambda self: 2
    trt._behaviors[("ICudaEngine", "get_tensor_name")] = lambda self, i: names[i]
    trt._behaviors[("ICudaEngine", "get_tensor_mode")] = lambda self, n: (
        trt.TensorIOMode.INPUT if n == "input" else trt.TensorIOMode.OUTPUT)
    trt._behaviors[("ICudaEngine", "get_tensor_profile_shape")] = lambda self, n, p: profile
    return trt


@pytest.mark.parametrize("version", VERSIONS)
def test_runner_uses_name_based_io(tmp_path: Path, version: str):
    from ghostedge.backends.tensorrt import TensorRTRunner

    trt = _engine_fake(version, [(1, 3, 32, 32), (4, 3, 32, 32), (8, 3, 32, 32)])
    shapes = {}
    trt._behaviors[("IExecutionContext", "set_input_shape")] = lambda self, n, s: shapes.update({n: s}) or True
    trt._behaviors[("IExecutionContext", "get_tensor_shape")] = lambda self, n: (shapes["input"][0], 3)
    plan = tmp_path / "g.plan"
    plan.write_bytes(b"x")
    r = TensorRTRunner(plan, trt=trt, cuda=_HostCuda())
    with r:
        y = r.infer(np.zeros((4, 3, 32, 32), np.float32))
        assert y.shape == (4, 3) and r.max_batch() == 8 and r.gpu_ms == [0.5]
        with pytest.raises(GhostedgeError, match="exceeds the engine's profile"):
            r.infer(np.zeros((9, 3, 32, 32), np.float32))
    assert called(trt, "IExecutionContext", "execute_async_v3")[0][2] == (7,)
    addrs = called(trt, "IExecutionContext", "set_tensor_address")
    assert [a[2][0] for a in addrs] == ["input", "logits"]
    assert not called(trt, "IExecutionContext", "execute_async_v2")


@pytest.mark.parametrize("version", VERSIONS)
def test_inspector_reads_layer_json(version: str):
    from ghostedge.backends.tensorrt import inspect_engine

    trt = make_fake_trt(version)
    info = {"Layers": [
        {"Name": "conv1", "LayerType": "CaskConvolution", "Outputs": [{"Format/Datatype": "Int8 NC/32HW32"}],
         "TacticName": "sm80_xmma"},
        {"Name": "reformat_in", "LayerType": "Reformat", "Outputs": [{"Format/Datatype": "Float"}]},
        {"Name": "se", "LayerType": "PointWiseV2", "Outputs": [{"Format/Datatype": "Float"}]}]}
    trt._behaviors[("EngineInspector", "get_engine_information")] = lambda self, fmt: json.dumps(info)
    eng = trt.ICudaEngine.__new__(trt.ICudaEngine)
    rows = inspect_engine(trt, eng)
    assert [r["flags"] for r in rows] == [[], ["reformat"], ["fp32"]]
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


@pytest.mark.parametrize("version", VERSIONS)
def test_runner_replays_captured_cuda_graphs(tmp_path: Path, version: str):
    from ghostedge.backends.tensorrt import TensorRTRunner

    trt = _engine_fake(version, [(1, 3, 8, 8), (1, 3, 8, 8), (4, 3, 8, 8)])
    trt._behaviors[("IExecutionContext", "get_tensor_shape")] = lambda self, n: (2, 3)
    plan = tmp_path / "g.plan"
    plan.write_bytes(b"x")
    cu = _HostCuda()
    with TensorRTRunner(plan, trt=trt, cuda=cu, cuda_graph=True) as r:
        for _ in range(3):
            r.infer(np.zeros((2, 3, 8, 8), np.float32))
    assert len(called(trt, "IExecutionContext", "execute_async_v3")) == 2  # one plain run, one captured
    assert cu.launched == 2
