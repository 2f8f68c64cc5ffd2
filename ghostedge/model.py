"""The GhostNet family (V1, V2, V3) as data: which architectures exist and how each is built, recognised
from a state dict, renamed from foreign checkpoints and prepared for deployment (like timm's ``default_cfgs``
and ``checkpoint_filter_fn``); public entry points; counting.

The networks live in ``arch/``: V1 layer for layer as the official huawei-noah code (``arch/ghostnet.py``),
V2 and V3 as timm's ``timm/models/ghostnet.py`` (``arch/ghostnetv2.py``, ``arch/ghostnetv3.py``), all with
the key names of those checkpoints, so they load with strict=True. Reading checkpoints and their descriptions
is ``checkpoint.py``; what travels with the weights is ``card.py``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn as nn

from .arch.ghostnet import (GHOSTNET_CFGS, WIDTHS, ConvBnAct, GhostBottleneck, GhostModule,  # noqa: F401
                            GhostNet, SqueezeExcite, hard_sigmoid, make_divisible)
from .arch.ghostnetv2 import WIDTHS_V2, ghostnetv2
from .arch.ghostnetv3 import WIDTHS_V3, ghostnetv3, reparameterize
from .errors import GhostedgeError

State = dict[str, torch.Tensor]


def ghostnet(width: float = 1.0, num_classes: int = 1000, dropout: float = 0.2) -> GhostNet:
    if width <= 0:
        raise GhostedgeError(f"width {width} is not positive: use one of {WIDTHS}")
    return GhostNet(num_classes=num_classes, width=width, dropout=dropout)


#: thop's profiling counters, saved into the official V2 / V3 checkpoints beside every module
_THOP = ("total_ops", "total_params")
_OFFICIAL_BN = re.compile(r"\.bn\.")
_TIMM_NAME = re.compile(r"^(ghostnet(?:v[23])?)_(\d{3})(?:\.|$)")


def filter_state_dict(sd: State) -> State:
    """Foreign key names -> ours, as timm's ``checkpoint_filter_fn``: a DataParallel ``module.`` prefix off, thop's
    ``total_ops`` / ``total_params`` dropped, and the official V3 checkpoints' branch BatchNorms (``.bn.`` inside
    ``ghost*`` and ``dw_rpr_*``) renamed to timm's ``.bn1.`` (V1 and V2 keys are timm's already)."""
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    out = {}
    for k, v in sd.items():
        if k.rsplit(".", 1)[-1] in _THOP:
            continue
        if ".ghost" in k or ".dw_rpr_" in k:
            k = _OFFICIAL_BN.sub(".bn1.", k)
        out[k] = v
    return out


def _is_ghostnet(sd: State) -> bool:
    return "conv_stem.weight" in sd and "blocks.9.0.conv.weight" in sd


def _is_v3(sd: State) -> bool:
    return _is_ghostnet(sd) and any("_rpr_" in k for k in sd)


def _is_v2(sd: State) -> bool:
    return _is_ghostnet(sd) and not _is_v3(sd) and any(".short_conv." in k for k in sd)


def _is_v1(sd: State) -> bool:
    return _is_ghostnet(sd) and not _is_v2(sd) and not _is_v3(sd)


def _guess_width(widths: tuple[float, ...]) -> Callable[[State], float]:
    def guess(sd: State) -> float:
        """The width multiplier of a state dict, from its stem and head channels (1.0 if unknown)."""
        stem = sd.get("conv_stem.weight")
        head = sd.get("blocks.9.0.conv.weight")
        if stem is None or head is None:
            return 1.0
        for w in widths:
            if make_divisible(16 * w, 4) == stem.shape[0] and make_divisible(960 * w, 4) == head.shape[0]:
                return w
        return 1.0
    return guess


#: V1's width guess (its widths)
guess_width = _guess_width(WIDTHS)
ALL_WIDTHS = tuple(sorted(set(WIDTHS + WIDTHS_V2 + WIDTHS_V3)))


# --------------------------------------------------------------------------------------------
# The architectures, as data


@dataclass(frozen=True)
class Architecture:
    """One model family: its widths and how to build, recognise, load and deploy it."""

    family: str
    widths: tuple[float, ...]
    build: Callable[[float, int, float], nn.Module]                      # (width, num_classes, dropout)
    recognise: Callable[[State], bool]                                   # a state dict of this family?
    guess_width: Callable[[State], float]
    filter_state_dict: Callable[[State], State]                          # foreign key names -> ours
    for_deploy: Callable[[nn.Module], nn.Module] = lambda m: m           # re-parameterization (identity: V1, V2)
    #: the smallest square input every stage runs at (V2 / V3: the last attention stage, at 1/32, needs 2x2)
    min_input: int = 32


ARCHITECTURES: dict[str, Architecture] = {
    "ghostnet": Architecture("ghostnet", WIDTHS, ghostnet, _is_v1, guess_width, filter_state_dict),
    "ghostnetv2": Architecture("ghostnetv2", WIDTHS_V2, ghostnetv2, _is_v2, _guess_width(ALL_WIDTHS),
                               filter_state_dict, min_input=64),
    "ghostnetv3": Architecture("ghostnetv3", WIDTHS_V3, ghostnetv3, _is_v3, _guess_width(ALL_WIDTHS),
                               filter_state_dict, for_deploy=reparameterize, min_input=64),
}


def architecture(family: str) -> Architecture:
    if family not in ARCHITECTURES:
        raise GhostedgeError(f"model family {family!r} is unknown: this ghostedge knows {', '.join(ARCHITECTURES)}")
    return ARCHITECTURES[family]


def recognise(sd: State) -> Architecture | None:
    """The family whose key layout the (filtered) state dict has: V3 has re-parameterizable branches, V2 DFC
    branches; None for a state dict of none of them."""
    return next((a for a in ARCHITECTURES.values() if a.recognise(sd)), None)


def parse_timm_name(name: str) -> tuple[str, float] | None:
    """('ghostnetv2', 1.0) for timm's 'ghostnetv2_100' (a hub config.json / pretrained_cfg ``architecture``)."""
    m = _TIMM_NAME.match(str(name))
    return (m.group(1), int(m.group(2)) / 100) if m else None


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


def count_macs(model: nn.Module, img_size: int) -> int:
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
