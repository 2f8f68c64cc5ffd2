"""Turn a `ghostedge train` checkpoint into what a user of another training stack brings: a plain
`torch.save` state dict (official / timm key names, FP16 storage, no metadata) plus a sidecar JSON that
describes its input, and optionally no class names at all (the ImageFolder convention then applies).

    python scripts/byo_checkpoint.py runs/m.safetensors tests/data/byo/m.pth [--unnamed]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ghostedge.card import ModelCard  # noqa: E402
from ghostedge.checkpoint import read_checkpoint  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("src", type=Path)
    ap.add_argument("dst", type=Path)
    ap.add_argument("--unnamed", action="store_true", help="leave the class names out of the sidecar")
    a = ap.parse_args()
    sd, meta = read_checkpoint(a.src)
    if not meta:
        sys.exit(f"{a.src} carries no ghostedge metadata to describe")
    a.dst.parent.mkdir(parents=True, exist_ok=True)
    torch.save({k: v.half() if v.is_floating_point() else v for k, v in sd.items()}, a.dst)
    card = ModelCard.from_dict(meta)
    pre = card.input
    side = {"input_size": pre.input_size, "resize": pre.resize, "interpolation": pre.interpolation,
            "mean": list(pre.mean), "std": list(pre.std)}
    if card.family != "ghostnet":   # timm's name, as a hub config.json gives it
        side["architecture"] = f"{card.family}_{round(100 * card.width):03d}"
    if not a.unnamed:
        side["classes"] = meta.get("wnids") or meta["classes"]
    extra = meta.get("extra", {})
    side["trained"] = {"val_top1": extra.get("val_top1"), "command": extra.get("command"),
                       "train_seconds": extra.get("train_seconds")}
    Path(str(a.dst) + ".json").write_text(json.dumps(side, indent=1) + "\n")
    print(f"wrote {a.dst} ({a.dst.stat().st_size / 1e6:.1f} MB) and {a.dst}.json")


if __name__ == "__main__":
    main()
