"""Start a GhostNetV2 / V3 from a trained GhostNet (V1) of the same width: every V1 tensor goes to its place
in the new architecture, so a short fine-tune (``ghostedge train --weights OUT --keep-classifier``) replaces a
from-scratch run on a small CPU.

- V2 keeps V1's keys; each DFC branch (``ghost1.short_conv``) starts at its default init with its last
  BatchNorm at gamma 0.5, beta 2, so the gate sigmoid(.) starts near 0.88 (about V1) and is learnt.
- V3: V1's primary / cheap / strided depthwise conv + BN become branch 0 of ``*_rpr_conv``; branches 1-2,
  the 1x1 scale and the BN skip start at their default init with gamma 0.05 (small, but trained, so the
  re-parameterization has real branches to fold); the DFC branches as for V2.

    python scripts/v1_to_v2v3.py ghostnetv2 ghostedge/weights/ghostnet_100_imagenette.safetensors runs/v2init.pth
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ghostedge.checkpoint import read_checkpoint  # noqa: E402
from ghostedge.model import architecture  # noqa: E402

V3_RENAMES = ((".primary_conv.0.", ".primary_rpr_conv.0.conv."), (".primary_conv.1.", ".primary_rpr_conv.0.bn1."),
              (".cheap_operation.0.", ".cheap_rpr_conv.0.conv."), (".cheap_operation.1.", ".cheap_rpr_conv.0.bn1."),
              (".conv_dw.", ".dw_rpr_conv.0.conv."), (".bn_dw.", ".dw_rpr_conv.0.bn1."))


def transplant(arch: str, v1: dict[str, torch.Tensor], width: float, num_classes: int,
               seed: int = 0) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    model = architecture(arch).build(width, num_classes)
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    for k, v in sd.items():   # the new branches' BatchNorms
        if ".short_conv.5." in k:
            sd[k] = torch.full_like(v, 0.5 if k.endswith(".weight") else 2.0) if k.endswith((".weight", ".bias")) else v
        elif arch == "ghostnetv3" and "_rpr_" in k and k.endswith(".weight") and v.ndim == 1:
            sd[k] = torch.full_like(v, 0.05)
    for k, v in v1.items():
        if k.endswith("num_batches_tracked"):
            continue
        dst = k
        if arch == "ghostnetv3":
            for a, b in V3_RENAMES:
                dst = dst.replace(a, b)
        if dst not in sd or sd[dst].shape != v.shape:
            raise SystemExit(f"{k} -> {dst}: no such tensor of shape {tuple(v.shape)} in {arch} {width}x")
        sd[dst] = v.float()
    model.load_state_dict(sd, strict=True)
    return sd


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("arch", choices=["ghostnetv2", "ghostnetv3"])
    ap.add_argument("src", type=Path)
    ap.add_argument("dst", type=Path)
    a = ap.parse_args()
    v1, meta = read_checkpoint(a.src)
    width = (meta or {}).get("width", 1.0)
    sd = transplant(a.arch, v1, width, int(v1["classifier.weight"].shape[0]))
    a.dst.parent.mkdir(parents=True, exist_ok=True)
    torch.save(sd, a.dst)
    print(f"wrote {a.dst}: {a.arch} {width}x from {a.src}")


if __name__ == "__main__":
    main()
