"""The calibration record: what quantize measured, in one typed object, written and read only here.

``ghostnet.calib.json`` is the portable product of calibration (DESIGN.md): per-tensor ranges, the method
and images they came from (with the file list, so later checks can hold those images out), the model the
ranges belong to, and the tools that made them. Every stage reads it through :class:`CalibrationRecord`;
no other module touches its JSON keys. Records written by older ghostedge versions (no file list, no
implicit-INT8 or refinement sections) still read.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .card import ModelCard
from .errors import GhostedgeError, write_text_atomic

RECORD_FORMAT = "ghostedge-calib/1"
#: what the record's quantization section says (TensorRT's INT8 scheme; asymmetric backends use min/max)
QUANTIZATION_SCHEME = {"weights": "int8 symmetric per-channel axis 0",
                       "activations": "int8 symmetric per-tensor (TensorRT); min/max kept for asymmetric backends"}


@dataclass
class TensorRange:
    """One tensor's calibrated range: observed min/max, the chosen symmetric bound amax and its int8 scale."""
    min: float
    max: float
    amax: float
    scale: float
    range: str | None = None      # the range method chosen for this tensor (--ranges auto)

    def to_dict(self) -> dict:
        d: dict[str, Any] = {"min": self.min, "max": self.max, "amax": self.amax, "scale": self.scale}
        if self.range is not None:
            d["range"] = self.range
        return d

    @classmethod
    def from_dict(cls, d: dict) -> TensorRange:
        lo, hi = float(d["min"]), float(d["max"])
        amax = float(d.get("amax", max(abs(lo), abs(hi))))
        return cls(min=lo, max=hi, amax=amax, scale=float(d.get("scale", max(amax, 1e-8) / 127.0)),
                   range=d.get("range"))


@dataclass
class CalibrationData:
    """The images calibrated on: folder, content fingerprint, and (since the file list) which files."""
    folder: str
    fingerprint: str
    files: int
    skipped_unreadable: int = 0
    paths: list[str] | None = None   # relative to folder; None in records from before the file list

    def to_dict(self) -> dict:
        d: dict[str, Any] = {"folder": self.folder, "fingerprint": self.fingerprint, "files": self.files,
                             "skipped_unreadable": self.skipped_unreadable}
        if self.paths is not None:
            d["paths"] = list(self.paths)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> CalibrationData:
        return cls(folder=str(d.get("folder", "")), fingerprint=str(d.get("fingerprint", "")),
                   files=int(d.get("files", len(d.get("paths", [])))),
                   skipped_unreadable=int(d.get("skipped_unreadable", 0)),
                   paths=list(d["paths"]) if "paths" in d else None)


@dataclass
class CalibrationRecord:
    """Everything one quantize run measured and chose. ``model`` is the model description as a dict
    (fingerprint, weights, width, classes, preprocess, ...)."""
    method: str
    tensors: dict[str, TensorRange]
    data: CalibrationData
    model: dict = field(default_factory=dict)
    percentile: float | None = None
    num_images: int = 0
    batch: int = 0
    seed: int = 0                          # the image selection: sample_images(folder, num_images, seed)
    img_size: int | None = None
    input: str = "input"
    tools: dict[str, str] = field(default_factory=dict)
    excluded_nodes: list[str] = field(default_factory=list)   # nodes kept in float
    cache_trt_version: str | None = None
    implicit_int8: dict | None = None      # the legacy-cache build's source and how it differs
    quantization: dict = field(default_factory=lambda: dict(QUANTIZATION_SCHEME))
    refinement: dict = field(default_factory=dict)
    format: str = RECORD_FORMAT

    @property
    def model_fingerprint(self) -> str | None:
        return self.model.get("fingerprint")

    @property
    def card(self) -> ModelCard | None:
        """The model card calibrated (older records carry a subset of its fields)."""
        return ModelCard.from_dict(self.model) if self.model else None

    def amax(self) -> dict[str, float]:
        return {k: t.amax for k, t in self.tensors.items()}

    def to_dict(self) -> dict:
        return {
            "format": self.format, "method": self.method, "percentile": self.percentile,
            "num_images": self.num_images, "batch": self.batch, "seed": self.seed, "img_size": self.img_size,
            "input": self.input, "data": self.data.to_dict(), "model": self.model, "tools": self.tools,
            "excluded_nodes": list(self.excluded_nodes), "cache_trt_version": self.cache_trt_version,
            **({"implicit_int8": self.implicit_int8} if self.implicit_int8 is not None else {}),
            "quantization": self.quantization, "refinement": self.refinement,
            "tensors": {k: t.to_dict() for k, t in self.tensors.items()},
        }

    @classmethod
    def from_dict(cls, d: dict) -> CalibrationRecord:
        """From the JSON of any ghostedge version that wrote this format (missing sections get defaults)."""
        return cls(method=str(d["method"]), tensors={k: TensorRange.from_dict(v) for k, v in d["tensors"].items()},
                   data=CalibrationData.from_dict(d.get("data", {})), model=dict(d.get("model") or {}),
                   percentile=d.get("percentile"), num_images=int(d.get("num_images", 0)),
                   batch=int(d.get("batch", 0)), seed=int(d.get("seed", 0)), img_size=d.get("img_size"),
                   input=d.get("input", "input"), tools=dict(d.get("tools", {})),
                   excluded_nodes=list(d.get("excluded_nodes", [])), cache_trt_version=d.get("cache_trt_version"),
                   implicit_int8=d.get("implicit_int8"),
                   quantization=dict(d.get("quantization", QUANTIZATION_SCHEME)),
                   refinement=dict(d.get("refinement", {})), format=d.get("format", RECORD_FORMAT))

    def write(self, path: str | Path) -> Path:
        """Atomically (temp file + rename): a reader never sees half a record."""
        return write_text_atomic(path, json.dumps(self.to_dict(), indent=1))

    @classmethod
    def read(cls, path: str | Path) -> CalibrationRecord:
        p = Path(path)
        if not p.is_file():
            raise GhostedgeError(f"calibration record {p} not found: run ghostedge quantize --calib DIR first")
        try:
            d = json.loads(p.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise GhostedgeError(f"{p} is not a valid calibration record ({e}): rerun ghostedge quantize") from None
        if not isinstance(d, dict) or d.get("format") != RECORD_FORMAT or "tensors" not in d or "method" not in d:
            raise GhostedgeError(f"{p} is not a ghostedge calibration record: rerun ghostedge quantize")
        try:
            return cls.from_dict(d)
        except (KeyError, TypeError, ValueError) as e:
            raise GhostedgeError(f"{p} is a damaged calibration record ({type(e).__name__}: {e}): rerun "
                                 "ghostedge quantize") from None
