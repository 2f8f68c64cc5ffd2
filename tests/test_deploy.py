"""ghostedge deploy: DeepStream nvinfer configs and Triton model repositories, checked by what reads them.

nvinfer configs are parsed as key files (configparser) and their normalisation, applied to real resized
images the way nvinfer computes it (``net-scale-factor * (x - offsets[c])``), must give the model card's
input tensor; Triton configs are parsed against Triton's own ModelConfig schema (``model_config_pb2`` as
``tritonclient`` ships it) and their tensors compared with the engine's (ONNX / OpenVINO model read here).
"""

from __future__ import annotations

import configparser
import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from typer.testing import CliRunner

from ghostedge.card import InputSpec, ModelCard, read_onnx_card, write_onnx_card
from ghostedge.cli import app
from ghostedge.data import find_images, load_image, normalize
from ghostedge.deploy.deepstream import (
    CHANNEL_SCALE,
    DeepStreamSettings,
    Mode,
    deploy_deepstream,
    nvinfer_normalisation,
)
from ghostedge.deploy.engine import describe_engine
from ghostedge.deploy.triton import TritonSettings, deploy_triton
from ghostedge.errors import GhostedgeError

from .trt_fake import available_versions, make_fake_trt

BYO = Path(__file__).parent / "data" / "byo"
GPU = {"gpu": "deploy-test GPU", "name": "deploy-test GPU", "compute_capability": "8.7", "cuda_driver": "12.6",
       "cuda_runtime": "12.6"}


@pytest.fixture(scope="module")
def engines(tmp_path_factory: pytest.TempPathFactory, engines_dir: Path) -> Path:
    """The tiny engines/ folder plus the two CPU engines and a plan built by the real build code on the fake
    TensorRT of ../shared/tensorrt-api (the plan's bytes are the fake's; its manifest is build's own)."""
    from ghostedge.build import Backend, BuildConfig, Precision, build, build_tensorrt

    d = tmp_path_factory.mktemp("deploy") / "engines"
    shutil.copytree(engines_dir, d)
    for b in (Backend.onnxruntime, Backend.openvino):
        build(BuildConfig(engines=d, backend=b, precision=Precision.int8))
    versions = [v for v in available_versions() if v.startswith("10.3")]
    if versions:
        build_tensorrt(BuildConfig(engines=d, target="dgpu"), lambda s: None, trt=make_fake_trt(versions[0]), gpu=GPU)
        build_tensorrt(BuildConfig(engines=d, target="dgpu", batch=(8, 8, 8), out=d / "static8.plan"),
                       lambda s: None, trt=make_fake_trt(versions[0]), gpu=GPU)
    return d


def _plan(engines: Path, name: str = "ghostnet.plan") -> Path:
    p = engines / name
    if not p.is_file():
        pytest.skip("../shared/tensorrt-api has no 10.3 surface to build a plan with")
    return p


# ---------------------------------------------------------------------------------------------------------
# DeepStream


def _read_config(path: Path) -> dict[str, str]:
    cp = configparser.ConfigParser(interpolation=None, comment_prefixes=("#",), strict=True)
    cp.optionxform = str   # nvinfer keys are case-sensitive
    cp.read_string(path.read_text())
    assert cp.sections() == ["property"]
    return dict(cp["property"])


def _channel_scale(model_path: Path) -> np.ndarray | None:
    m = onnx.load(str(model_path))
    for t in m.graph.initializer:
        if t.name == CHANNEL_SCALE:
            return onnx.numpy_helper.to_array(t).reshape(3)
    return None


def _nvinfer_tensor(cfg: dict[str, str], hwc: np.ndarray, channel_scale: np.ndarray | None) -> np.ndarray:
    """What nvinfer computes from the config (y = net-scale-factor * (x - offsets[c])), then the ONNX's Mul."""
    k = np.float32(float(cfg["net-scale-factor"]))
    off = np.asarray([float(v) for v in cfg["offsets"].split(";")], np.float32)
    y = k * (hwc.astype(np.float32).transpose(2, 0, 1)[None] - off[None, :, None, None])
    return y if channel_scale is None else y * channel_scale.astype(np.float32)[None, :, None, None]


def _check_config(cfg: dict[str, str], d: Path, size: int, mode: Mode) -> None:
    """Keys and value ranges of the Gst-nvinfer config table."""
    assert cfg["network-type"] == "1"
    assert cfg["network-mode"] in ("0", "1", "2")
    assert cfg["model-color-format"] == "0"
    assert cfg["process-mode"] == ("1" if mode == Mode.primary else "2")
    assert cfg["infer-dims"] == f"3;{size};{size}"
    assert int(cfg["batch-size"]) >= 1 and int(cfg["gie-unique-id"]) >= 1
    assert 0.0 <= float(cfg["classifier-threshold"]) <= 1.0
    assert float(cfg["net-scale-factor"]) > 0 and all(float(v) >= 0 for v in cfg["offsets"].split(";"))
    assert cfg["maintain-aspect-ratio"] in ("0", "1") and cfg["symmetric-padding"] in ("0", "1")
    assert cfg["scaling-filter"] in ("0", "1", "2", "3", "4", "5", "6")
    for key in ("onnx-file", "labelfile-path") + (("int8-calib-file",) if "int8-calib-file" in cfg else ()):
        assert (d / cfg[key]).is_file(), key     # nvinfer resolves relative paths against the config's folder
    b, mode_name = cfg["batch-size"], {"0": "fp32", "1": "int8", "2": "fp16"}[cfg["network-mode"]]
    assert cfg["model-engine-file"] == f"{cfg['onnx-file']}_b{b}_gpu{cfg['gpu-id']}_{mode_name}.engine"
    if cfg["network-mode"] == "1":   # without it nvinfer falls back to FP16
        assert "int8-calib-file" in cfg
    if mode == Mode.secondary:
        assert int(cfg["operate-on-gie-id"]) >= 1


def _assert_normalises_like_the_card(cfg: dict[str, str], model: Path, pre: InputSpec, images: list[Path]) -> None:
    scale = _channel_scale(model)
    for p in images:
        hwc = load_image(p, pre)            # the card's resize + center crop (the geometry is not nvinfer's)
        want = normalize(hwc[None], pre)
        got = _nvinfer_tensor(cfg, hwc, scale)
        assert np.abs(got - want).max() <= 1e-5     # the goal is 1e-3; with the ONNX's channel scale it is exact


@pytest.mark.parametrize("name", ["ghostnet.int8.onnx", "ghostnet.implicit.onnx", "ghostnet.onnx", "ghostnet.plan"])
def test_deepstream_config_parses_and_reproduces_the_card(engines: Path, image_folder: Path, tmp_path: Path,
                                                          name: str):
    src = _plan(engines) if name.endswith(".plan") else engines / name
    r = deploy_deepstream(src, DeepStreamSettings(out=tmp_path / "ds"))
    cfg = _read_config(r.config)
    info = describe_engine(src)
    _check_config(cfg, r.out, info.pre.input_size, Mode.primary)
    assert cfg["network-mode"] == {"fp32": "0", "int8": "1", "fp16": "2"}[info.precision]
    assert (r.out / cfg["labelfile-path"]).read_text() == "tench;English springer;cassette player\n"
    images = find_images(image_folder)[:4]
    _assert_normalises_like_the_card(cfg, r.model, info.pre, images)
    # the card's per-channel std (ImageNet's) cannot be one scale: the config alone is off by what it reports
    assert r.normalisation.channel_scale is not None and _channel_scale(r.model) is not None
    x = np.arange(256, dtype=np.uint8)[:, None, None].repeat(3, 2)     # every pixel value, every channel
    alone = np.abs(_nvinfer_tensor(cfg, x, None) - normalize(x[None], info.pre)).max()
    assert alone == pytest.approx(r.normalisation.max_error_config_only, rel=1e-3) and alone > 1e-3
    # the model nvinfer builds: same tensors in, the graph's real output name, softmax of the engine's logits
    m = onnx.load(str(r.model))
    assert [o.name for o in m.graph.output] == [cfg["output-blob-names"]]
    assert [i.name for i in m.graph.input] == [t.name for t in info.inputs]
    ref = _session(info.source_onnx or src)
    dep = _session(r.model)
    hwc = np.stack([load_image(p, info.pre) for p in images])
    logits = ref.run(None, {"input": normalize(hwc, info.pre)})[0]
    probs = dep.run(None, {"input": np.concatenate([_nvinfer_tensor(cfg, h, None) for h in hwc])})[0]
    want = np.exp(logits - logits.max(1, keepdims=True))
    want /= want.sum(1, keepdims=True)
    tol = 1e-4 if info.precision == "fp32" or info.implicit_int8 else 2e-2   # Q/DQ: a rounding may flip a step
    assert np.abs(probs - want).max() <= tol
    assert (probs.argmax(1) == logits.argmax(1)).all()


def _session(path: Path):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def _with_card(src: Path, card: ModelCard, dst: Path) -> Path:
    """The tiny FP32 graph carrying another model's card (the config depends on the card only)."""
    m = onnx.load(str(src))
    write_onnx_card(m, card)
    onnx.save_model(m, str(dst))
    return dst


@pytest.mark.parametrize("weights", [None, BYO / "ghostnet_050_sgd192.pth", BYO / "ghostnet_130_sgd96.pth"],
                         ids=["reference", "byo-050-192", "byo-130-96"])
def test_deepstream_normalisation_on_the_reference_and_byo_cards(engines: Path, image_folder: Path, tmp_path: Path,
                                                                  weights: Path | None):
    from ghostedge.checkpoint import load_model

    _, card = load_model(weights)
    src = _with_card(engines / "ghostnet.onnx", card, tmp_path / "ghostnet.onnx")
    r = deploy_deepstream(src, DeepStreamSettings(out=tmp_path / "ds", mode=Mode.secondary))
    cfg = _read_config(r.config)
    _check_config(cfg, r.out, card.input.input_size, Mode.secondary)
    assert cfg["scaling-filter"] == {"bilinear": "1", "bicubic": "2"}[card.input.interpolation]
    _assert_normalises_like_the_card(cfg, r.model, card.input, find_images(image_folder)[:3])
    uniform = len(set(card.input.std)) == 1       # the 1.3x model: inception mean/std 0.5
    assert (_channel_scale(r.model) is None) == uniform
    if uniform:   # one std: the config alone is exact, the graph is not touched before its first layer
        assert r.normalisation.max_error_config_only == 0.0
        assert float(cfg["net-scale-factor"]) == pytest.approx(1 / 127.5) and cfg["offsets"] == "127.5;127.5;127.5"


def _uint8_onnx(src: Path, dst: Path) -> Path:
    """``src`` with the uint8 prelude ``build --input uint8`` puts in front (Cast, Sub 255*mean, Mul 1/(255 std))."""
    from onnx import TensorProto, helper, numpy_helper

    m = onnx.load(str(src))
    pre = read_onnx_card(m).input
    g = m.graph
    for n in g.node:
        n.input[:] = ["normalised" if i == "input" else i for i in n.input]
    g.initializer.extend([
        numpy_helper.from_array(np.asarray(pre.mean, np.float32).reshape(1, 3, 1, 1) * 255, "u8_mean"),
        numpy_helper.from_array(1 / (255 * np.asarray(pre.std, np.float32).reshape(1, 3, 1, 1)), "u8_inv_std")])
    for i, n in enumerate([helper.make_node("Cast", ["input"], ["input_f"], to=TensorProto.FLOAT),
                           helper.make_node("Sub", ["input_f", "u8_mean"], ["centred"]),
                           helper.make_node("Mul", ["centred", "u8_inv_std"], ["normalised"])]):
        g.node.insert(i, n)
    g.input[0].type.tensor_type.elem_type = TensorProto.UINT8
    onnx.save_model(m, str(dst))
    return dst


def test_deepstream_uint8_input_engine_passes_pixels_through(engines: Path, image_folder: Path, tmp_path: Path):
    """An engine that normalises inside (build --input uint8: Cast + Sub/Mul) gets scale 1, offsets 0."""
    from onnx import TensorProto

    src = engines / "ghostnet.onnx"
    pre = read_onnx_card(src).input
    u8 = _uint8_onnx(src, tmp_path / "ghostnet.u8.onnx")
    r = deploy_deepstream(u8, DeepStreamSettings(out=tmp_path / "ds"))
    cfg = _read_config(r.config)
    assert float(cfg["net-scale-factor"]) == 1.0 and cfg["offsets"] == "0;0;0"
    dep = onnx.load(str(r.model))
    assert dep.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT     # nvinfer feeds float
    hwc = np.stack([load_image(p, pre) for p in find_images(image_folder)[:3]])
    x = np.concatenate([_nvinfer_tensor(cfg, h, None) for h in hwc])
    assert np.array_equal(x, hwc.transpose(0, 3, 1, 2).astype(np.float32))
    logits = _session(src).run(None, {"input": normalize(hwc, pre)})[0]
    probs = _session(r.model).run(None, {"input": x})[0]
    assert (probs.argmax(1) == logits.argmax(1)).all()


def test_deepstream_on_build_input_uint8_graphs(engines: Path, image_folder: Path, tmp_path: Path):
    """The prelude ``build --input uint8`` writes (``input_uint8.uint8_input``): NCHW deploys with scale 1 and
    offsets 0 and gives the float engine's classes; NHWC is refused (nvinfer feeds planar float)."""
    u8mod = pytest.importorskip("ghostedge.input_uint8", reason="build --input uint8 (issue 21, part 2) not here")
    src = engines / "ghostnet.int8.onnx"
    m = onnx.load(str(src))
    pre = read_onnx_card(m).input
    shutil.copy(engines / "ghostnet.calib.cache", tmp_path)    # an INT8 config names it (see deepstream.py)
    onnx.save_model(u8mod.uint8_input(m, pre, "nchw"), str(tmp_path / "u8.onnx"))
    r = deploy_deepstream(tmp_path / "u8.onnx", DeepStreamSettings(out=tmp_path / "ds"))
    cfg = _read_config(r.config)
    assert (float(cfg["net-scale-factor"]), cfg["offsets"], cfg["network-mode"]) == (1.0, "0;0;0", "1")
    hwc = np.stack([load_image(p, pre) for p in find_images(image_folder)[:4]])
    x = np.concatenate([_nvinfer_tensor(cfg, h, None) for h in hwc])
    logits = _session(src).run(None, {"input": normalize(hwc, pre)})[0]
    probs = _session(r.model).run(None, {"input": x})[0]
    assert (probs.argmax(1) == logits.argmax(1)).all()
    onnx.save_model(u8mod.uint8_input(m, pre, "nhwc"), str(tmp_path / "u8nhwc.onnx"))
    with pytest.raises(GhostedgeError, match="NHWC"):
        deploy_deepstream(tmp_path / "u8nhwc.onnx", DeepStreamSettings(out=tmp_path / "ds2"))
    r = deploy_triton(tmp_path / "u8nhwc.onnx", TritonSettings(out=tmp_path / "repo"))
    cfg_t, pb = _parse(r.config)
    assert (cfg_t.input[0].data_type, list(cfg_t.input[0].dims)) == (pb.TYPE_UINT8, [-1, -1, 3])


def test_deepstream_secondary_keys_and_the_card_crop(engines: Path, tmp_path: Path):
    r = deploy_deepstream(engines / "ghostnet.int8.onnx", DeepStreamSettings(
        out=tmp_path / "ds", mode=Mode.secondary, operate_on_gie_id=3, operate_on_class_ids=(0, 2), threshold=0.7))
    cfg = _read_config(r.config)
    assert (cfg["process-mode"], cfg["operate-on-gie-id"], cfg["operate-on-class-ids"]) == ("2", "3", "0;2")
    assert cfg["gie-unique-id"] == "2" and cfg["batch-size"] == "16" and float(cfg["classifier-threshold"]) == 0.7
    # the crop nvvideoconvert must make for the card's resize 37 + crop 32 on a 1280x720 frame
    r = deploy_deepstream(engines / "ghostnet.int8.onnx", DeepStreamSettings(out=tmp_path / "ds", frame=(1280, 720)))
    side = round(720 * 32 / 37)
    assert f"src-crop={(1280 - side) // 2}:{(720 - side) // 2}:{side}:{side}" in " ".join(r.notes)


def test_deepstream_refuses_what_nvinfer_cannot_run(engines: Path, tmp_path: Path):
    for cpu in ("ghostnet.int8.ort.onnx", "ghostnet.int8.ov.xml"):
        with pytest.raises(GhostedgeError, match="CPU engine"):
            deploy_deepstream(engines / cpu, DeepStreamSettings(out=tmp_path / "ds"))
    lone = tmp_path / "lone"
    lone.mkdir()
    shutil.copy(engines / "ghostnet.implicit.onnx", lone)
    with pytest.raises(GhostedgeError, match="calibration cache"):
        deploy_deepstream(lone / "ghostnet.implicit.onnx", DeepStreamSettings(out=tmp_path / "ds"))
    with pytest.raises(GhostedgeError, match="FP16 is for an FP32 ONNX"):
        deploy_deepstream(engines / "ghostnet.int8.onnx", DeepStreamSettings(out=tmp_path / "ds", fp16=True))
    assert not (tmp_path / "ds").exists()
    r = deploy_deepstream(engines / "ghostnet.onnx", DeepStreamSettings(out=tmp_path / "ds", fp16=True))
    assert _read_config(r.config)["network-mode"] == "2"


# ---------------------------------------------------------------------------------------------------------
# Triton


def _model_config_pb2():
    """Triton's ModelConfig schema as tritonclient ships it (read from the file: tritonclient.grpc's __init__
    needs grpcio, which the schema does not)."""
    spec = importlib.util.find_spec("tritonclient")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("tritonclient is not installed (pip install -e '.[dev]')")
    path = Path(next(iter(spec.submodule_search_locations))) / "grpc" / "model_config_pb2.py"
    s = importlib.util.spec_from_file_location("triton_model_config_pb2", path)
    mod = importlib.util.module_from_spec(s)
    s.loader.exec_module(mod)
    return mod


def _parse(path: Path):
    from google.protobuf import text_format

    pb = _model_config_pb2()
    return text_format.Parse(path.read_text(), pb.ModelConfig()), pb


def _real_tensors(model_dir: Path, engines: Path, kind: str) -> tuple[list, list]:
    """(name, dtype, dims) of the engine's inputs and outputs, read from the files the repository holds."""
    if kind == "openvino":
        import openvino as ov

        m = ov.Core().read_model(str(model_dir / "1" / "model.xml"))
        ports = lambda ps: [(p.get_any_name(), p.get_element_type().to_dtype().name,
                             [-1 if d.is_dynamic else d.get_length() for d in p.get_partial_shape()]) for p in ps]
        return ports(m.inputs), ports(m.outputs)
    # a TensorRT plan's tensors are its ONNX's (the fake plan cannot be opened here): the file it was built from
    path = model_dir / "1" / "model.onnx" if kind != "tensorrt" else engines / json.loads(
        (engines / "ghostnet.plan.json").read_text())["built_from_onnx"]["path"]
    m = onnx.load(str(path), load_external_data=False)
    vals = lambda vs: [(v.name, onnx.helper.tensor_dtype_to_np_dtype(v.type.tensor_type.elem_type).name,
                        [d.dim_value if d.HasField("dim_value") else -1 for d in v.type.tensor_type.shape.dim])
                       for v in vs]
    return vals(m.graph.input), vals(m.graph.output)


@pytest.mark.parametrize("name,kind", [("ghostnet.plan", "tensorrt"), ("ghostnet.int8.onnx", "onnx"),
                                       ("ghostnet.int8.ort.onnx", "onnxruntime"), ("ghostnet.int8.ov.xml", "openvino")])
def test_triton_config_parses_against_tritons_schema_and_names_the_real_tensors(engines: Path, tmp_path: Path,
                                                                                 name: str, kind: str):
    src = _plan(engines) if kind == "tensorrt" else engines / name
    r = deploy_triton(src, TritonSettings(out=tmp_path / "repo", name="ghostnet"))
    cfg, pb = _parse(r.config)
    assert cfg.name == "ghostnet" == r.model_dir.name
    backend = {"tensorrt": ("tensorrt_plan", ""), "openvino": ("", "openvino")}.get(kind, ("", "onnxruntime"))
    assert (cfg.platform, cfg.backend) == backend
    model_file = {"tensorrt": "model.plan", "openvino": "model.xml"}.get(kind, "model.onnx")
    assert cfg.default_model_filename == model_file and (r.model_dir / "1" / model_file).is_file()
    if kind == "openvino":
        assert (r.model_dir / "1" / "model.bin").read_bytes() == src.with_suffix(".bin").read_bytes()
    assert (r.model_dir / "1" / model_file).read_bytes() == src.read_bytes()
    ins, outs = _real_tensors(r.model_dir, engines, kind)
    man = json.loads(Path(str(src) + ".json").read_text()) if Path(str(src) + ".json").is_file() else {}
    assert cfg.max_batch_size == (man.get("batch") or [0, 0, 32])[2] == 32   # the build profile's max
    assert cfg.HasField("dynamic_batching")
    dtype = {"float32": pb.TYPE_FP32, "uint8": pb.TYPE_UINT8, "float16": pb.TYPE_FP16}
    for got, want in ((cfg.input, ins), (cfg.output, outs)):
        assert [t.name for t in got] == [w[0] for w in want]
        assert [t.data_type for t in got] == [dtype[w[1]] for w in want]
        for t, (_, _, dims) in zip(got, want):
            assert dims[0] == -1      # dynamic batch: it leaves the dims
            if kind == "tensorrt":    # the plan's profile fixes H and W at the card's size
                assert list(t.dims) == [d if d != -1 else 32 for d in dims[1:]]
            else:
                assert list(t.dims) == dims[1:]
    assert cfg.output[0].label_filename == "labels.txt"
    assert (r.model_dir / "labels.txt").read_text().splitlines() == ["tench", "English springer", "cassette player"]
    assert len(cfg.instance_group) == 1 and cfg.instance_group[0].count == 1
    want_kind = {"tensorrt": "KIND_GPU", "onnx": "KIND_AUTO"}.get(kind, "KIND_CPU")
    assert pb.ModelInstanceGroup.Kind.Name(cfg.instance_group[0].kind) == want_kind


def test_triton_uint8_input_engine_is_type_uint8(engines: Path, tmp_path: Path):
    u8 = _uint8_onnx(engines / "ghostnet.onnx", tmp_path / "ghostnet.u8.onnx")
    r = deploy_triton(u8, TritonSettings(out=tmp_path / "repo"))
    cfg, pb = _parse(r.config)
    assert [(t.name, t.data_type, list(t.dims)) for t in cfg.input] == [("input", pb.TYPE_UINT8, [3, -1, -1])]
    assert "(x/255 - mean)" not in r.config.read_text()      # the engine normalises: the client sends pixels


def test_triton_static_batch_plan_has_full_dims_and_no_batching(engines: Path, tmp_path: Path):
    src = _plan(engines, "static8.plan")
    r = deploy_triton(src, TritonSettings(out=tmp_path / "repo"))
    cfg, _ = _parse(r.config)
    assert cfg.max_batch_size == 0 and not cfg.HasField("dynamic_batching")
    assert list(cfg.input[0].dims) == [8, 3, 32, 32] and list(cfg.output[0].dims) == [8, 3]
    with pytest.raises(GhostedgeError, match="above the plan's profile"):
        deploy_triton(_plan(engines), TritonSettings(out=tmp_path / "repo", max_batch=64))


def test_triton_output_replaces_the_old_model_atomically(engines: Path, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch):
    s = TritonSettings(out=tmp_path / "repo", max_batch=4)
    deploy_triton(engines / "ghostnet.int8.ort.onnx", s)
    before = (tmp_path / "repo" / "ghostnet" / "config.pbtxt").read_text()
    import ghostedge.deploy.triton as tr

    def broken(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(tr.shutil, "copy2", broken)
    with pytest.raises(OSError):
        deploy_triton(engines / "ghostnet.int8.ov.xml", TritonSettings(out=tmp_path / "repo"))
    assert (tmp_path / "repo" / "ghostnet" / "config.pbtxt").read_text() == before
    assert sorted(p.name for p in (tmp_path / "repo").iterdir()) == ["ghostnet"]      # no temporary left
    monkeypatch.undo()
    deploy_triton(engines / "ghostnet.int8.ov.xml", TritonSettings(out=tmp_path / "repo"))
    assert 'backend: "openvino"' in (tmp_path / "repo" / "ghostnet" / "config.pbtxt").read_text()
    assert not (tmp_path / "repo" / "ghostnet" / "1" / "model.onnx").exists()


# ---------------------------------------------------------------------------------------------------------
# Errors, through the CLI


def test_deploy_errors_are_one_line_and_exit_2(engines: Path, tmp_path: Path):
    bare = tmp_path / "bare.onnx"
    m = onnx.load(str(engines / "ghostnet.onnx"))
    del m.metadata_props[:]
    onnx.save_model(m, str(bare))
    (tmp_path / "x.tflite").write_bytes(b"\0")
    (tmp_path / "orphan.plan").write_bytes(b"\0")
    xml = tmp_path / "nobin.xml"
    shutil.copy(engines / "ghostnet.int8.ov.xml", xml)
    cases = [
        (["deploy", "triton", str(tmp_path / "missing.plan")], "not found"),
        (["deploy", "triton", str(tmp_path / "x.tflite")], "unknown engine kind"),
        (["deploy", "triton", str(tmp_path / "orphan.plan")], "no manifest"),
        (["deploy", "deepstream", str(bare), "--out", str(tmp_path / "o")], "no model card"),
        (["deploy", "triton", str(xml), "--out", str(tmp_path / "o")], "nobin.bin"),
        (["deploy", "deepstream", str(engines / "ghostnet.int8.onnx"), "--mode", "tertiary"], "--mode"),
        (["deploy", "triton", str(engines / "ghostnet.int8.onnx"), "--name", "a/b"], "model name"),
    ]
    runner = CliRunner()
    for args, msg in cases:
        res = runner.invoke(app, args)
        assert res.exit_code != 0, args
        assert isinstance(res.exception, GhostedgeError) and msg in str(res.exception), (args, res.exception)
    assert not (tmp_path / "o").exists()


def test_deploy_cli_writes_both(engines: Path, tmp_path: Path):
    runner = CliRunner()
    res = runner.invoke(app, ["deploy", "deepstream", str(engines / "ghostnet.int8.onnx"), "--out", str(tmp_path / "ds"),
                              "--json"])
    assert res.exit_code == 0, res.output
    got = json.loads(res.output)
    assert got["network_mode"] == 1 and Path(got["config"]).is_file() and got["max_error_config_only"] > 0
    assert got["net_scale_factor"] == pytest.approx(nvinfer_normalisation(
        describe_engine(engines / "ghostnet.int8.onnx").pre).net_scale_factor)
    res = runner.invoke(app, ["deploy", "triton", str(engines / "ghostnet.int8.ov.xml"), "--out", str(tmp_path / "tr"),
                              "--name", "gn", "--max-batch", "8"])
    assert res.exit_code == 0, res.output
    assert "max_batch_size: 8" in (tmp_path / "tr" / "gn" / "config.pbtxt").read_text()
