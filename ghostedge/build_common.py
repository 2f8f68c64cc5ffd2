"""What every engine build shares, whichever backend builds: the batch profile, the inputs ``ghostedge quantize``
left in ``engines/`` (checked), the calibration record checked against the weights, the manifest's common part.
Below ``build`` and ``build_cpu``, which both import it (neither imports the other's internals)."""

from __future__ import annotations

import datetime as _dt
import platform
from dataclasses import dataclass
from pathlib import Path

from . import __version__
from .backends.common import Backend, Frontend, Precision
from .backends.tensorrt.builder import TrtOptions
from .errors import GhostedgeError
from .card import ModelCard, read_onnx_card
from .manifest import cpu_name, file_sha256
from .checkpoint import ModelSpec
from .input_uint8 import FLOAT32, InputFormat, record_format
from .quantize import FP32_NAME, INT8_NAME, RECORD_NAME
from .record import CalibrationRecord


@dataclass
class BuildConfig(TrtOptions):
    """What one build is asked for (TrtOptions: the TensorRT builder's own options, keyword-only)."""

    engines: Path = Path("engines")
    precision: Precision = Precision.int8
    backend: Backend = Backend.auto
    target: str = "auto"
    batch: tuple[int, int, int] | None = None   # None: 1:8:32, or a static DLA_BATCH for DLA
    img_size: int | None = None
    workspace_mib: int | None = None
    calib_cache: Path | None = None
    out: Path | None = None
    frontend: Frontend = Frontend.onnx
    weights: Path | None = None     # for the torch-tensorrt frontend
    calib: Path | None = None       # calibration images: torch-tensorrt --int8; CPU selection's accuracy check
    threads: int = 0                # CPU engines: threads the selection measures with (0 = all)
    spec: ModelSpec | None = None   # --preprocess / --classes: checked against the ONNX's description
    input_format: InputFormat = FLOAT32   # uint8: the engine takes pixels and normalises them itself


DEFAULT_BATCH = (1, 8, 32)
#: DLA engines need a static shape (min = opt = max); this one unless --batch says otherwise
DLA_BATCH = (8, 8, 8)


def resolve_batch(cfg: BuildConfig) -> tuple[int, int, int]:
    if cfg.batch is not None:
        return tuple(cfg.batch)  # type: ignore[return-value]
    return DLA_BATCH if cfg.dla_core is not None else DEFAULT_BATCH


def need_input(path: Path, what: str) -> Path:
    if not path.is_file():
        raise GhostedgeError(f"{path} not found ({what}): run ghostedge quantize --calib DIR first "
                             f"(it writes {FP32_NAME}, {INT8_NAME} and the calibration files into {path.parent})")
    return path


def record_for(engines: Path, onnx_path: Path, card: ModelCard | None = None) -> CalibrationRecord:
    """The calibration record, checked against the weights the ONNX (whose card is ``card``, read when not
    given) was exported from."""
    record = CalibrationRecord.read(need_input(engines / RECORD_NAME, "the calibration record"))
    info = card or read_onnx_card(onnx_path)
    if info and record.model_fingerprint not in (None, info.fingerprint):
        raise GhostedgeError(f"{engines / RECORD_NAME} was calibrated for other weights "
                             f"({record.model_fingerprint}) than {onnx_path.name} ({info.fingerprint}): "
                             "rerun ghostedge quantize")
    return record


def common_manifest(cfg: BuildConfig, src: Path, record: CalibrationRecord | None, info_src: Path,
                    card: ModelCard | None = None) -> dict:
    info = card or read_onnx_card(info_src)
    return {
        "precision": cfg.precision.value,
        "built_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "ghostedge": __version__,
        "source_onnx": {"path": str(src), "sha256": file_sha256(src)},
        "calibration": ({"fingerprint": record.data.fingerprint, "method": record.method,
                         "record_sha256": file_sha256(cfg.engines / RECORD_NAME)} if record else None),
        "model": record_format(info.to_dict(), cfg.input_format) if info else None,
        "batch": list(resolve_batch(cfg)),
        "host": {"machine": platform.machine(), "cpu": cpu_name(), "python": platform.python_version()},
    }
