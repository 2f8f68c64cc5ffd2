"""The model card: what travels with a set of weights (architecture, input, classes), in one dataclass.

A card is built once per command (checkpoint metadata, sidecar, flags, ONNX metadata or a manifest) and
passed down; every input size and every resize rule comes from its ``InputSpec`` (``resize_for`` is the
only place a resize is derived). It is stored one way: the card's JSON, under the ONNX metadata key
"ghostedge" and as record["model"] / manifest["model"]. ``ModelCard.from_dict`` and ``read_onnx_card`` also
read every older layout ghostedge wrote, so existing files keep working.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import GhostedgeError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INTERPOLATIONS = ("bilinear", "bicubic", "nearest", "lanczos")
#: named mean/std pairs users say instead of numbers
NORMALIZATIONS = {
    "imagenet": (IMAGENET_MEAN, IMAGENET_STD),
    "inception": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),   # timm's IMAGENET_INCEPTION_*: x/127.5 - 1
    "none": ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0)),        # plain 0..1 pixels
}
#: the ONNX metadata key holding the card's JSON
ONNX_KEY = "ghostedge"
#: flat keys written beside it for other tools (Netron, scripts); ghostedge reads them only from files that
#: lack the "ghostedge" key
ONNX_MIRROR_KEYS = ("fingerprint", "preprocess", "width", "classes")


@dataclass
class InputSpec:
    """How an image becomes the model's input: resize short side to size/crop_pct, center crop (as timm's
    ``pretrained_cfg``: input_size, crop_pct, interpolation, mean, std)."""

    input_size: int = 224
    crop_pct: float = 0.875
    interpolation: str = "bilinear"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict) -> "InputSpec":
        known = {f.name for f in dataclasses.fields(cls)}
        kw = {k: tuple(float(x) for x in v) if isinstance(v, (list, tuple)) else v
              for k, v in d.items() if k in known}
        return cls(**kw)

    def resize_for(self, size: int) -> int:
        """Short side before the center crop for an input of ``size`` (the crop ratio kept)."""
        return int(round(size / self.crop_pct))

    @property
    def resize(self) -> int:
        """Short side before the center crop, at the native input size."""
        return self.resize_for(self.input_size)

    @staticmethod
    def crop_pct_for(size: int, resize: float) -> float:
        """The crop ratio of a description that says ``resize`` (short side) for an input of ``size``."""
        return size / float(resize)

    def describe(self) -> str:
        """The one-line form ``parse_preprocess`` reads back."""
        f = lambda v: ",".join(f"{x:g}" for x in v)  # noqa: E731
        return (f"size={self.input_size} resize={self.resize} interpolation={self.interpolation} "
                f"mean={f(self.mean)} std={f(self.std)}")

    def same_as(self, other: "InputSpec") -> bool:
        """The same pixels: size, resize, interpolation and mean/std (to 1e-4)."""
        return self.input_size == other.input_size and self.resize == other.resize and \
            self.interpolation == other.interpolation and \
            all(abs(x - y) < 1e-4 for x, y in zip(self.mean + self.std, other.mean + other.std))

    def check(self) -> "InputSpec":
        """Raise a GhostedgeError naming the bad field (a sidecar or --preprocess value)."""
        if not isinstance(self.input_size, int) or self.input_size < 32:
            raise GhostedgeError(f"preprocessing: input size {self.input_size!r} is not an integer >= 32 "
                                 "(GhostNet downsamples 32x): fix size= in --preprocess or the sidecar")
        if not (0.05 < float(self.crop_pct) <= 1.0):
            raise GhostedgeError(f"preprocessing: crop_pct {self.crop_pct} is not in (0.05, 1] (resize must be "
                                 ">= size): fix resize= / crop_pct= in --preprocess or the sidecar")
        if self.interpolation not in INTERPOLATIONS:
            raise GhostedgeError(f"preprocessing: interpolation {self.interpolation!r} is unknown: use one of "
                                 f"{', '.join(INTERPOLATIONS)}")
        for name, v in (("mean", self.mean), ("std", self.std)):
            if len(v) != 3 or not all(math.isfinite(x) for x in v):
                raise GhostedgeError(f"preprocessing: {name} {list(v)} is not three finite numbers (R,G,B)")
        if min(self.std) <= 0:
            raise GhostedgeError(f"preprocessing: std {list(self.std)} has a value <= 0: std divides the input")
        return self


_KEY_ALIASES = {"size": "input_size", "input_size": "input_size", "img_size": "input_size",
                "resize": "resize", "crop": "crop_pct", "crop_pct": "crop_pct", "interp": "interpolation",
                "interpolation": "interpolation", "mean": "mean", "std": "std", "norm": "norm"}


def parse_preprocess(spec: str, base: InputSpec | None = None) -> tuple[InputSpec, set[str]]:
    """Read a one-line description such as ``size=128 resize=146 interpolation=bicubic mean=0.5,0.5,0.5
    std=0.5,0.5,0.5`` (or ``norm=imagenet``) on top of ``base``. Returns it and the keys given."""
    d = (base or InputSpec()).to_dict()
    given: set[str] = set()
    resize = None
    for item in spec.replace(";", " ").split():
        key, sep, val = item.partition("=")
        k = _KEY_ALIASES.get(key.strip().lower())
        if not sep or k is None:
            raise GhostedgeError(f"--preprocess: {item!r} is not KEY=VALUE with KEY one of size, resize, crop_pct, "
                                 "interpolation, mean, std, norm (e.g. 'size=128 resize=146 norm=imagenet')")
        try:
            if k == "input_size":
                d[k] = int(val)
            elif k == "resize":
                resize = int(val)
            elif k == "crop_pct":
                d[k] = float(val)
            elif k == "interpolation":
                d[k] = val.lower()
            elif k == "norm":
                if val.lower() not in NORMALIZATIONS:
                    raise GhostedgeError(f"--preprocess norm={val}: use one of {', '.join(NORMALIZATIONS)} "
                                         "or give mean= and std=")
                d["mean"], d["std"] = (list(x) for x in NORMALIZATIONS[val.lower()])
                given |= {"mean", "std"}
                continue
            else:
                nums = [float(x) for x in val.split(",")]
                d[k] = nums * 3 if len(nums) == 1 else nums
        except ValueError:
            raise GhostedgeError(f"--preprocess {key}={val}: not a number (lists are comma-separated: "
                                 "mean=0.485,0.456,0.406)") from None
        given.add(k if k != "resize" else "crop_pct")
    if resize is not None:
        if resize < d["input_size"]:
            raise GhostedgeError(f"--preprocess resize={resize} is smaller than size={d['input_size']}: the "
                                 "center crop must fit inside the resized image")
        d["crop_pct"] = InputSpec.crop_pct_for(d["input_size"], resize)   # else a new size keeps the crop ratio
    return InputSpec.from_dict(d).check(), given


@dataclass
class ModelCard:
    """Everything that travels with a set of weights: architecture, input, classes, provenance."""

    family: str = "ghostnet"                                # a key of model.ARCHITECTURES
    width: float = 1.0
    reparameterized: bool = False                           # for_deploy already applied (V3)
    num_classes: int = 1000
    classes: list[str] = field(default_factory=list)        # class names, index order
    wnids: list[str] = field(default_factory=list)          # ImageNet wnids where known
    input: InputSpec = field(default_factory=InputSpec)
    source: str = "random init"                             # where the weights came from
    fingerprint: str = ""                                   # sha256 of the weights (first 16 hex)
    extra: dict[str, Any] = field(default_factory=dict)     # training record etc.

    @property
    def preprocess(self) -> InputSpec:
        """The input spec under the name the stored JSON (and older code) uses."""
        return self.input

    @preprocess.setter
    def preprocess(self, value: InputSpec) -> None:
        self.input = value

    def to_dict(self) -> dict:
        # the input spec is stored as "preprocess": the key every file ghostedge wrote carries
        d = dataclasses.asdict(self)
        del d["input"]
        d["preprocess"] = self.input.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "ModelCard":
        """A card from its JSON, or from any older layout ghostedge wrote (ModelInfo dicts with "preprocess")."""
        d = dict(d)
        pre = d.pop("input", None) or d.pop("preprocess", None) or {}
        d.pop("preprocess", None)
        known = {f.name for f in dataclasses.fields(cls)} - {"input"}
        return cls(input=InputSpec.from_dict(pre), **{k: v for k, v in d.items() if k in known})

    def copy(self) -> "ModelCard":
        return ModelCard.from_dict(self.to_dict())


def unnamed_classes(classes: list[str], wnids: list[str]) -> bool:
    """True when a model's classes are only indices (a plain state dict without a description)."""
    return not wnids and list(classes) == [str(i) for i in range(len(classes))]


# --------------------------------------------------------------------------------------------
# In ONNX files

def onnx_metadata(card: ModelCard) -> dict[str, str]:
    """The ONNX metadata a card is stored as: its JSON under "ghostedge", plus flat mirrors for other tools."""
    return {ONNX_KEY: json.dumps(card.to_dict()), "fingerprint": card.fingerprint,
            "preprocess": json.dumps(card.input.to_dict()), "width": str(card.width),
            "classes": json.dumps(card.classes)}


def write_onnx_card(proto: Any, card: ModelCard) -> None:
    """Replace ``proto``'s metadata with the card (an onnx.ModelProto, changed in place)."""
    del proto.metadata_props[:]
    for k, v in onnx_metadata(card).items():
        proto.metadata_props.add(key=k, value=v)


def read_onnx_card(model: Any) -> ModelCard | None:
    """The card a ghostedge export stored in an ONNX file or onnx.ModelProto (None for foreign files)."""
    if not hasattr(model, "metadata_props"):
        import onnx

        model = onnx.load(str(model), load_external_data=False)
    meta = {p.key: p.value for p in model.metadata_props}
    if ONNX_KEY in meta:
        return ModelCard.from_dict(json.loads(meta[ONNX_KEY]))
    if "preprocess" in meta:     # only the flat keys (a file whose "ghostedge" entry was stripped)
        classes = json.loads(meta.get("classes", "[]"))
        return ModelCard(width=float(meta.get("width", 1.0)), num_classes=len(classes) or 1000, classes=classes,
                         input=InputSpec.from_dict(json.loads(meta["preprocess"])),
                         fingerprint=meta.get("fingerprint", ""))
    return None


def onnx_input_size(model: Any) -> int | None:
    """The static square H = W of an ONNX file's first input, or None when it is dynamic (ghostedge's
    exports are: they carry a card instead)."""
    if not hasattr(model, "graph"):
        import onnx

        model = onnx.load(str(model), load_external_data=False)
    if not model.graph.input:
        return None
    dims = model.graph.input[0].type.tensor_type.shape.dim
    hw = [d.dim_value if d.HasField("dim_value") else None for d in dims[2:]] if len(dims) == 4 else []
    return hw[0] if len(hw) == 2 and hw[0] and hw[0] == hw[1] else None


def card_for_onnx(path: str | Path) -> ModelCard:
    """The card of an ONNX file: the one it carries, else (a foreign ONNX) one whose input size is the file's
    static input shape. A foreign file with a dynamic input shape has no size to say: a clear error."""
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    card = read_onnx_card(proto)
    if card is not None:
        return card
    size = onnx_input_size(proto)
    if size is None:
        raise GhostedgeError(f"{Path(path).name} carries no ghostedge model card and its input size is dynamic: "
                             "give the input size (the image side in pixels) to run it")
    return ModelCard(input=InputSpec(input_size=size), source=str(path))
