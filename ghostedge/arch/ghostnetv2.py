"""GhostNetV2: Enhance Cheap Operation with Long-Range Attention (Tang et al., NeurIPS 2022).

Layer for layer as timm's ``ghostnetv2_*`` (``timm/models/ghostnet.py``, ``version='v2'``) and the official
huawei-noah/Efficient-AI-Backbones ``ghostnetv2_pytorch``, with their state-dict key names, so either
checkpoint loads with strict=True. V2 is V1 with a DFC attention branch in ``ghost1`` of every bottleneck
past the first two: avg_pool2d(2) -> 1x1 conv+BN -> depthwise 1x5 + BN -> depthwise 5x1 + BN -> sigmoid ->
nearest upsample back to the feature size -> multiply.

The upsample is the one shape-dependent op. PyTorch's ``interpolate(size=...)`` exports as a Resize whose
size is computed from the input's shape; ``bind_input_size`` replaces it, for one input size, by a Resize
with constant scales that gives the same nearest-neighbour indices (see ``gate_scale``): a form every
TensorRT parser (8.5 to 11) and ONNX Runtime read, and the exported graph is then fixed to that size.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .ghostnet import GHOSTNET_CFGS, GhostModule, GhostNet

#: timm's ghostnetv2_100 / _130 / _160
WIDTHS_V2 = (1.0, 1.3, 1.6)


def gate_scale(small: int, big: int) -> float:
    """The constant Resize scale that maps a ``small``-long gate (floor(big/2), after avg_pool2d(2)) onto
    ``big`` with the nearest indices of ``interpolate(size=big)``, i.e. floor(i * small / big).

    Even ``big``: exactly 2 (indices i // 2). Odd ``big`` = 2*small + 1: big/small nudged up by 1e-6 (relative),
    so that floor(small * scale) == big in float32, while floor(i / scale) stays floor(i * small / big): that
    fraction is never an integer for 0 < i < big (gcd(small, 2*small + 1) = 1), and it is at least 1/big away
    from one, far more than the nudge moves it."""
    if big == 2 * small:
        return 2.0
    if big != 2 * small + 1 or small < 1:
        raise ValueError(f"a DFC gate of {small} cannot come from a feature of {big} (avg_pool2d(2))")
    return big / small * (1.0 + 1e-6)


def upsample_gate(gate: torch.Tensor, like: torch.Tensor, scale: tuple[float, float] | None) -> torch.Tensor:
    """Nearest upsample of the DFC gate to ``like``'s size: by its size (PyTorch eager, any input size), or by
    the constant scales ``bind_input_size`` found for one input size (the exported form)."""
    if scale is None:
        return F.interpolate(gate, size=(like.shape[-2], like.shape[-1]), mode="nearest")
    return F.interpolate(gate, scale_factor=scale, mode="nearest", recompute_scale_factor=False)


def dfc_branch(inp: int, oup: int, kernel_size: int = 1, stride: int = 1) -> nn.Sequential:
    """The decoupled fully connected attention branch (timm's / the official ``short_conv``)."""
    return nn.Sequential(
        nn.Conv2d(inp, oup, kernel_size, stride, kernel_size // 2, bias=False),
        nn.BatchNorm2d(oup),
        nn.Conv2d(oup, oup, kernel_size=(1, 5), stride=1, padding=(0, 2), groups=oup, bias=False),
        nn.BatchNorm2d(oup),
        nn.Conv2d(oup, oup, kernel_size=(5, 1), stride=1, padding=(2, 0), groups=oup, bias=False),
        nn.BatchNorm2d(oup),
    )


class GhostModuleV2(GhostModule):
    """A Ghost module whose output is gated by DFC attention computed at half resolution."""

    def __init__(self, inp: int, oup: int, kernel_size: int = 1, ratio: int = 2, dw_size: int = 3,
                 stride: int = 1, relu: bool = True):
        super().__init__(inp, oup, kernel_size, ratio, dw_size, stride, relu)
        self.short_conv = dfc_branch(inp, oup, kernel_size, stride)
        self.gate_scale: tuple[float, float] | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        res = self.short_conv(F.avg_pool2d(x, kernel_size=2, stride=2))
        out = super().forward(x)
        return out * upsample_gate(torch.sigmoid(res), out, self.gate_scale)


class GhostNetV2(GhostNet):
    family = "ghostnetv2"

    def __init__(self, num_classes: int = 1000, width: float = 1.0, dropout: float = 0.2,
                 cfgs: tuple = GHOSTNET_CFGS):
        super().__init__(num_classes=num_classes, width=width, dropout=dropout, cfgs=cfgs)
        layer = 0
        for stage in self.blocks[:-1]:
            for block in stage:
                if layer > 1:  # timm: version == 'v2' and layer_idx > 1 -> mode 'attn'
                    g = block.ghost1
                    conv = g.primary_conv[0]
                    block.ghost1 = GhostModuleV2(conv.in_channels, g.oup, conv.kernel_size[0],
                                                 dw_size=g.cheap_operation[0].kernel_size[0], relu=True)
                layer += 1


def ghostnetv2(width: float = 1.0, num_classes: int = 1000, dropout: float = 0.2) -> GhostNetV2:
    return GhostNetV2(num_classes=num_classes, width=width, dropout=dropout)


def bind_input_size(model: nn.Module, size: int) -> bool:
    """Fix every DFC gate's upsample to constant scales for a ``size`` x ``size`` input (the exported form).
    Returns whether the model has any such gate (its graph is then valid at that size only). Raises
    ValueError where a stage becomes smaller than 2 x 2 (avg_pool2d(2) needs it)."""
    gates = [m for m in model.modules() if hasattr(m, "gate_scale")]
    if not gates:
        return False
    seen: dict[nn.Module, tuple[int, int]] = {}
    hooks = [m.register_forward_pre_hook(lambda m, a: seen.__setitem__(m, tuple(a[0].shape[-2:])))
             for m in gates]
    for m in gates:
        m.gate_scale = None
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, 3, size, size))
    except RuntimeError as e:
        raise ValueError(f"input size {size}: a DFC attention stage is smaller than 2x2 ({e})") from None
    finally:
        for h in hooks:
            h.remove()
    for m in gates:
        h, w = seen[m]
        if h < 2 or w < 2:
            raise ValueError(f"input size {size}: a DFC attention stage is {h}x{w}, smaller than 2x2")
        m.gate_scale = (gate_scale(h // 2, h), gate_scale(w // 2, w))
    return True


def min_input_size() -> int:
    """The smallest input whose last DFC stage is still 2x2 (32x downsampling, avg_pool2d(2) at 1/32)."""
    return 2 * 32

