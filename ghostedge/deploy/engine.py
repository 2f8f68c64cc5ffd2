"""What an engine is, read from the files ghostedge wrote: kind, model card, real tensors, precision, profile.

The kind comes from the backend registry. The tensors are the engine's own: a CPU engine's as its runner
declares them (ONNX Runtime's session, OpenVINO's compiled model), the TensorRT ONNX's graph inputs/outputs,
and for a TensorRT plan the ONNX it was built from (TensorRT's ONNX parser names the engine's I/O tensors after
the graph's) with the shapes of the build profile the manifest records. Nothing here needs TensorRT or a GPU.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from ..card import InputSpec, ModelCard, read_onnx_card
from ..errors import GhostedgeError
from ..manifest import read_manifest

#: ONNX ops only ONNX Runtime runs (ghostedge's QOperator CPU engine); TensorRT's parser has none of them
ORT_ONLY_OPS = frozenset({"QLinearConv", "QLinearMatMul", "QLinearAdd", "QLinearMul", "QLinearConcat",
                          "QLinearGlobalAveragePool", "QLinearSigmoid", "QGemm", "ConvInteger", "MatMulInteger",
                          "DynamicQuantizeLinear"})


class EngineKind(str, Enum):
    tensorrt = "tensorrt"        # a serialized TensorRT engine (.plan)
    onnx = "onnx"                # an ONNX TensorRT builds: FP32, Q/DQ INT8, or implicit INT8 with the cache
    onnxruntime = "onnxruntime"  # ghostedge's ONNX Runtime CPU engine (QOperator graph)
    openvino = "openvino"        # OpenVINO IR (.xml + .bin)


@dataclass(frozen=True)
class Tensor:
    name: str
    dtype: str                   # numpy name: float32, float16, uint8, int64 ...
    shape: tuple[int, ...]       # -1 where the dimension is dynamic


@dataclass
class EngineInfo:
    path: Path
    kind: EngineKind
    card: ModelCard
    inputs: list[Tensor]
    outputs: list[Tensor]
    precision: str                          # fp32 | fp16 | int8
    batch: tuple[int, int, int] | None      # the build profile (min, opt, max) where one is recorded
    onnx_path: Path | None                  # the ONNX that defines the graph (the engine, or what a plan was built from)
    calib_cache: Path | None = None         # TensorRT legacy calibration cache (implicit INT8), where one is
    implicit_int8: bool = False             # INT8 from the calibration cache, no Q/DQ in the graph
    manifest: dict | None = None
    dla_core: int | None = None
    source_onnx: Path | None = None         # a plan's source before build (Q/DQ / FP32 / implicit ONNX)

    @property
    def input(self) -> Tensor:
        return self.inputs[0]

    @property
    def pre(self) -> InputSpec:
        """The card's input description (resize, crop, mean/std)."""
        return self.card.input

    @property
    def uint8_input(self) -> bool:
        """The engine takes uint8 pixels and normalises inside (``build --input uint8``)."""
        return self.input.dtype == "uint8"


def labels(card: ModelCard) -> list[str]:
    """Class names in output order: the card's names, else its wnids, else the indices."""
    for names in (card.classes, card.wnids):
        if names and len(names) == card.num_classes:
            return [str(n) for n in names]
    return [str(i) for i in range(card.num_classes)]


def describe_engine(path: str | Path) -> EngineInfo:
    """Read an engine's description; a GhostedgeError says what is missing and how to get it."""
    from ..backends.registry import backend_for_path

    path = Path(path)
    if not path.is_file():
        raise GhostedgeError(f"engine {path} not found: build it with ghostedge build (or pass the ONNX that "
                             "ghostedge quantize wrote, e.g. engines/ghostnet.int8.onnx)")
    backend = backend_for_path(path)   # the registry decides the runtime; unknown suffixes name the known kinds
    if backend.name == "tensorrt":
        return _plan(path)
    if backend.name == "openvino":
        info = _openvino(path, backend.companions)
    elif backend.onnx_engine:   # ONNX Runtime's files: the TensorRT ONNX or ghostedge's QOperator CPU engine
        info = _onnx(path)
    else:
        raise GhostedgeError(f"{path}: a {backend.label} engine; deploy takes TensorRT plans, ONNX and OpenVINO "
                             "engines")
    if info.kind in (EngineKind.onnxruntime, EngineKind.openvino):   # a CPU engine runs here: ask its runner
        info.inputs, info.outputs = _declared(backend, path)
    return info


def _declared(backend, path: Path) -> tuple[list[Tensor], list[Tensor]]:  # backend: a registry.Backend
    """The tensors as the engine itself declares them (ONNX Runtime's session, OpenVINO's compiled model)."""
    runner, _ = backend.open_runner(path, threads=1)

    def conv(ts) -> list[Tensor]:  # ts: list[TensorInfo]; a symbolic dimension is dynamic
        return [Tensor(t.name, t.dtype, tuple(d if isinstance(d, int) and d >= 0 else -1 for d in t.shape))
                for t in ts]

    with runner:
        return conv(runner.inputs_info()), conv(runner.outputs_info())


def _card(path: Path, man: dict | None, from_onnx: ModelCard | None = None) -> ModelCard:
    if from_onnx is not None:
        return from_onnx
    if man and man.get("model"):
        return ModelCard.from_dict(man["model"])
    raise GhostedgeError(f"{path} carries no model card (no 'ghostedge' ONNX metadata, no model in a manifest "
                         f"{path.name}.json): deploy engines that ghostedge quantize / build wrote")


def _onnx_tensors(values, batch: int | None = None, hw: int | None = None) -> list[Tensor]:
    """Graph inputs/outputs; ``batch``/``hw`` replace dynamic batch / spatial dims (a TensorRT profile)."""
    import onnx

    out = []
    for v in values:
        tt = v.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else -1 for d in tt.shape.dim]
        if dims and batch is not None and dims[0] == -1:
            dims[0] = batch
        if hw is not None and len(dims) == 4:
            sp = (1, 2) if dims[-1] == 3 and dims[1] != 3 else (2, 3)
            for i in sp:
                dims[i] = hw if dims[i] == -1 else dims[i]
        out.append(Tensor(v.name, onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type).name, tuple(dims)))
    return out


def _load_onnx(path: Path):
    import onnx

    try:
        return onnx.load(str(path), load_external_data=False)
    except Exception as e:  # noqa: BLE001  (a truncated or foreign file)
        raise GhostedgeError(f"{path} is not a readable ONNX model ({type(e).__name__}): rebuild it with "
                             "ghostedge quantize / build") from None


def _onnx(path: Path) -> EngineInfo:
    from ..quantize import CACHE_NAME

    model = _load_onnx(path)
    man = read_manifest(path, required=False)
    card = _card(path, man, read_onnx_card(model))
    ops = {n.op_type for n in model.graph.node}
    cpu = bool(ops & ORT_ONLY_OPS) or any(n.domain == "com.microsoft" for n in model.graph.node) or (
        (man or {}).get("backend") == "onnxruntime")
    batch = tuple(man["batch"]) if man and man.get("batch") else None
    if cpu:
        kind, precision, implicit, cache = EngineKind.onnxruntime, (man or {}).get("precision", "int8"), False, None
    else:
        kind = EngineKind.onnx
        implicit = path.name.endswith(".implicit.onnx")
        qdq = "QuantizeLinear" in ops
        fp16 = any(t.data_type == 10 for t in model.graph.initializer)   # TensorProto.FLOAT16: an FP16-typed graph
        precision = "int8" if (qdq or implicit) else "fp16" if fp16 else "fp32"
        cache = path.with_name(CACHE_NAME)
        cache = cache if precision == "int8" and cache.is_file() else None
    return EngineInfo(path, kind, card, _onnx_tensors(model.graph.input), _onnx_tensors(model.graph.output),
                      precision, batch, path, cache, implicit, man)  # type: ignore[arg-type]


def _plan(path: Path) -> EngineInfo:
    man = read_manifest(path)
    if man.get("backend") != "tensorrt":
        raise GhostedgeError(f"{path}: its manifest says backend {man.get('backend')!r}, not a TensorRT plan: "
                             "rebuild it with ghostedge build --backend tensorrt")
    card = _card(path, man)
    names = []
    for key in ("built_from_onnx", "source_onnx"):
        p = (man.get(key) or {}).get("path")
        if p:
            names += [path.parent / Path(p).name, Path(p)]
    src = next((p for p in names if p.is_file()), None)
    if src is None:
        raise GhostedgeError(f"{path}: the ONNX it was built from ({names[0].name if names else 'unrecorded'}) "
                             "is not beside it: copy it there (its graph names the engine's tensors)")
    model = _load_onnx(src)
    b = tuple(man.get("batch") or (1, 1, 1))
    static = b[0] == b[2]
    hw = man.get("img_size") or card.input.input_size
    inputs = _onnx_tensors(model.graph.input, b[0] if static else None, hw)
    outputs = _onnx_tensors(model.graph.output, b[0] if static else None)
    cache = path.parent / man["calib_cache"] if man.get("calib_cache") else None
    if cache is not None and not cache.is_file():
        raise GhostedgeError(f"{path} was built from the calibration cache {cache.name}, which is not beside it: "
                             "copy it there")
    p = (man.get("source_onnx") or {}).get("path")
    source = next((q for q in ((path.parent / Path(p).name, Path(p)) if p else ()) if q.is_file()), src)
    return EngineInfo(path, EngineKind.tensorrt, card, inputs, outputs, man.get("precision", "fp32"),
                      b, src, cache, cache is not None, man, man.get("dla_core"), source)  # type: ignore[arg-type]


def _openvino(path: Path, companions: tuple[str, ...] = (".bin",)) -> EngineInfo:
    from ..backends.openvino import import_openvino

    for c in companions:
        if not path.with_suffix(c).is_file():
            raise GhostedgeError(f"{path}: its {path.with_suffix(c).name} is not beside it: copy it with the "
                                 f"{path.suffix} (or rebuild with ghostedge build --backend openvino)")
    man = read_manifest(path, required=False)
    card = _card(path, man)
    ov = import_openvino()
    try:
        model = ov.Core().read_model(str(path))
    except Exception as e:  # noqa: BLE001
        raise GhostedgeError(f"{path} is not a readable OpenVINO model ({e}): rebuild it with ghostedge build "
                             "--backend openvino") from None

    def ports(ps) -> list[Tensor]:
        return [Tensor(p.get_any_name(), p.get_element_type().to_dtype().name,
                       tuple(-1 if d.is_dynamic else d.get_length() for d in p.get_partial_shape())) for p in ps]

    batch = tuple(man["batch"]) if man and man.get("batch") else None
    return EngineInfo(path, EngineKind.openvino, card, ports(model.inputs), ports(model.outputs),
                      (man or {}).get("precision", "fp32"), batch, None, manifest=man)  # type: ignore[arg-type]


@contextlib.contextmanager
def atomic_dir(dst: str | Path) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``dst``; it replaces ``dst`` only if the block succeeds."""
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", suffix=".tmp", dir=dst.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)   # mkdtemp makes it 0700; the result is an ordinary folder
    try:
        yield tmp
        old = None
        if dst.exists():
            if not dst.is_dir():
                raise GhostedgeError(f"{dst} exists and is not a folder: pass another output folder")
            old = dst.with_name(f".{dst.name}.{os.getpid()}.old")
            os.replace(dst, old)
        os.replace(tmp, dst)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
