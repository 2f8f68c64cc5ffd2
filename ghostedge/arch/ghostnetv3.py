"""GhostNetV3: Exploring the Training Strategies for Compact Models (Liu et al., arXiv 2404.11202).

Layer for layer as timm's ``ghostnetv3_*`` (``timm/models/ghostnet.py``, ``version='v3'``), with timm's key
names; the official huawei-noah/Efficient-AI-Backbones ``ghostnetv3_pytorch`` checkpoints name each branch's
BatchNorm ``.bn`` where timm says ``.bn1`` (``filter_state_dict`` renames them as timm's
``checkpoint_filter_fn`` does).

V3 trains with parallel re-parameterizable branches: in every Ghost module three primary 1x1 convs, and three
depthwise 3x3 convs plus a 1x1 depthwise scale and a BatchNorm skip on the cheap operation; on every strided
depthwise conv three kxk convs plus a 1x1 scale. ``reparameterize`` folds each group into one conv with a
bias (RepVGG), which is the model that is exported and quantized: a multi-branch graph would hand TensorRT
3-5 convs plus Adds per module. Past the first two bottlenecks ``ghost1`` carries V2's DFC attention.
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .ghostnet import GHOSTNET_CFGS, GhostNet, SqueezeExcite, make_divisible, shortcut
from .ghostnetv2 import dfc_branch, upsample_gate

#: timm's ghostnetv3_050 / _100 / _130 / _160
WIDTHS_V3 = (0.5, 1.0, 1.3, 1.6)
NUM_BRANCHES = 3


class ConvBn(nn.Module):
    """Conv + BatchNorm, no activation (timm's ``ConvBnAct(act_layer=None)``: keys ``conv``, ``bn1``)."""

    def __init__(self, inp: int, oup: int, kernel_size: int, stride: int = 1, padding: int = 0, groups: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(inp, oup, kernel_size, stride, padding, groups=groups, bias=False)
        self.bn1 = nn.BatchNorm2d(oup)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn1(self.conv(x))


def _fuse(kernel: torch.Tensor, bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    std = (bn.running_var + bn.eps).sqrt()
    t = bn.weight / std
    return kernel * t.reshape(-1, 1, 1, 1), bn.bias - bn.running_mean * t


def _fused_conv(like: nn.Conv2d, convs: list[ConvBn], scale: ConvBn | None = None,
                skip: nn.BatchNorm2d | None = None) -> nn.Conv2d:
    """One conv (with bias) equal to the sum of ``convs``, a 1x1 ``scale`` branch and a BN ``skip``."""
    k = like.kernel_size[0]
    weight = torch.zeros_like(like.weight)
    bias = torch.zeros(like.out_channels, dtype=weight.dtype)
    for b in convs:
        w, c = _fuse(b.conv.weight, b.bn1)
        weight, bias = weight + w, bias + c
    if scale is not None:
        w, c = _fuse(scale.conv.weight, scale.bn1)
        weight, bias = weight + F.pad(w, [k // 2] * 4), bias + c
    if skip is not None:  # identity of a depthwise conv: a centre tap of 1 per channel
        ident = torch.zeros_like(like.weight)
        ident[:, 0, k // 2, k // 2] = 1.0
        w, c = _fuse(ident, skip)
        weight, bias = weight + w, bias + c
    out = nn.Conv2d(like.in_channels, like.out_channels, like.kernel_size, like.stride, like.padding,
                    like.dilation, like.groups, bias=True)
    with torch.no_grad():
        out.weight.copy_(weight)
        out.bias.copy_(bias)
    return out


class GhostModuleV3(nn.Module):
    def __init__(self, inp: int, oup: int, kernel_size: int = 1, ratio: int = 2, dw_size: int = 3,
                 stride: int = 1, relu: bool = True, attention: bool = False):
        super().__init__()
        self.oup = oup
        self.relu = relu
        init_channels = math.ceil(oup / ratio)
        new_channels = init_channels * (ratio - 1)
        self.primary_rpr_conv = nn.ModuleList(
            ConvBn(inp, init_channels, kernel_size, stride, kernel_size // 2) for _ in range(NUM_BRANCHES))
        self.cheap_rpr_skip = nn.BatchNorm2d(init_channels)
        self.cheap_rpr_conv = nn.ModuleList(
            ConvBn(init_channels, new_channels, dw_size, 1, dw_size // 2, groups=init_channels)
            for _ in range(NUM_BRANCHES))
        self.cheap_rpr_scale = ConvBn(init_channels, new_channels, 1, 1, 0, groups=init_channels)
        if attention:
            self.short_conv = dfc_branch(inp, oup, kernel_size, stride)
            self.gate_scale: tuple[float, float] | None = None
        self.attention = attention
        self.deployed = False

    def _act(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x) if self.relu else x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.deployed:
            x1 = self.primary_conv(x)
            x2 = self.cheap_operation(x1)
        else:
            x1 = 0
            for conv in self.primary_rpr_conv:
                x1 = x1 + conv(x)
            x1 = self._act(x1)
            x2 = self.cheap_rpr_scale(x1) + self.cheap_rpr_skip(x1)
            for conv in self.cheap_rpr_conv:
                x2 = x2 + conv(x1)
            x2 = self._act(x2)
        out = torch.cat([x1, x2], dim=1)
        if not self.attention:
            return out
        res = self.short_conv(F.avg_pool2d(x, kernel_size=2, stride=2))
        out = out[:, : self.oup] if out.shape[1] != self.oup else out
        return out * upsample_gate(torch.sigmoid(res), out, self.gate_scale)

    def reparameterize(self) -> None:
        """Fold the branches into ``primary_conv`` / ``cheap_operation`` (timm's deploy layout)."""
        if self.deployed:
            return
        act = (lambda: nn.ReLU(inplace=True)) if self.relu else nn.Sequential
        p = self.primary_rpr_conv
        self.primary_conv = nn.Sequential(_fused_conv(p[0].conv, list(p)), act())
        c = self.cheap_rpr_conv
        self.cheap_operation = nn.Sequential(
            _fused_conv(c[0].conv, list(c), self.cheap_rpr_scale, self.cheap_rpr_skip), act())
        del self.primary_rpr_conv, self.cheap_rpr_conv, self.cheap_rpr_scale, self.cheap_rpr_skip
        self.deployed = True


class GhostBottleneckV3(nn.Module):
    def __init__(self, in_chs: int, mid_chs: int, out_chs: int, dw_kernel_size: int = 3, stride: int = 1,
                 se_ratio: float = 0.0, attention: bool = False):
        super().__init__()
        self.stride = stride
        self.ghost1 = GhostModuleV3(in_chs, mid_chs, relu=True, attention=attention)
        if stride > 1:
            pad = (dw_kernel_size - 1) // 2
            self.dw_rpr_conv = nn.ModuleList(
                ConvBn(mid_chs, mid_chs, dw_kernel_size, stride, pad, groups=mid_chs) for _ in range(NUM_BRANCHES))
            self.dw_rpr_scale = ConvBn(mid_chs, mid_chs, 1, 2, 0, groups=mid_chs)
        self.se = SqueezeExcite(mid_chs, se_ratio=se_ratio) if se_ratio and se_ratio > 0 else None
        self.ghost2 = GhostModuleV3(mid_chs, out_chs, relu=False)
        self.shortcut = shortcut(in_chs, out_chs, dw_kernel_size, stride)
        self.deployed = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = x
        x = self.ghost1(x)
        if self.stride > 1:
            if self.deployed:
                x = self.conv_dw(x)
            else:
                x1 = self.dw_rpr_scale(x)
                for conv in self.dw_rpr_conv:
                    x1 = x1 + conv(x)
                x = x1
        if self.se is not None:
            x = self.se(x)
        x = self.ghost2(x)
        return x + self.shortcut(residual)

    def reparameterize(self) -> None:
        if self.deployed:
            return
        if self.stride > 1:
            self.conv_dw = _fused_conv(self.dw_rpr_conv[0].conv, list(self.dw_rpr_conv), self.dw_rpr_scale)
            del self.dw_rpr_conv, self.dw_rpr_scale
        self.deployed = True


class GhostNetV3(GhostNet):
    family = "ghostnetv3"

    def __init__(self, num_classes: int = 1000, width: float = 1.0, dropout: float = 0.2,
                 cfgs: tuple = GHOSTNET_CFGS):
        super().__init__(num_classes=num_classes, width=width, dropout=dropout, cfgs=cfgs)
        input_channel = make_divisible(16 * width, 4)
        layer = 0
        for si, cfg in enumerate(cfgs):
            layers = []
            for k, exp_size, c, se_ratio, s in cfg:
                out_chs = make_divisible(c * width, 4)
                mid_chs = make_divisible(exp_size * width, 4)
                # timm: version == 'v3' and layer_idx > 1 -> ghost1 mode 'shortcut' (DFC attention)
                layers.append(GhostBottleneckV3(input_channel, mid_chs, out_chs, k, s, se_ratio=se_ratio,
                                                attention=layer > 1))
                input_channel = out_chs
                layer += 1
            self.blocks[si] = nn.Sequential(*layers)

    @property
    def reparameterized(self) -> bool:
        return all(m.deployed for m in self.modules() if isinstance(m, (GhostModuleV3, GhostBottleneckV3)))


def ghostnetv3(width: float = 1.0, num_classes: int = 1000, dropout: float = 0.2) -> GhostNetV3:
    return GhostNetV3(num_classes=num_classes, width=width, dropout=dropout)


def reparameterize(model: nn.Module) -> nn.Module:
    """A copy of ``model`` (eval mode) with every V3 branch group folded into one conv; the input is left as
    it was (timm's ``GhostNet.convert_to_deploy`` discards the copy it makes; this returns it)."""
    m = copy.deepcopy(model).eval()
    with torch.no_grad():
        for mod in list(m.modules()):
            if isinstance(mod, (GhostModuleV3, GhostBottleneckV3)):
                mod.reparameterize()
    return m
