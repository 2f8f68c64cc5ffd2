"""Per-layer rows every backend's inspector returns, and the flags they share (FP32 fallback, reformat, DLA->GPU)."""

from __future__ import annotations

#: layer kinds that move data or shapes: their float precision is not a compute fallback
_NO_COMPUTE = ("Reformat", "Shuffle", "Slice", "Concatenation", "Constant", "Identity", "NoOp", "Cast")


def annotate_layers(rows: list[dict]) -> list[dict]:
    """Flag FP32 fallbacks, reformat layers and (for DLA engines) GPU-resident layers."""
    any_dla = any(r["device"] == "DLA" for r in rows)
    for r in rows:
        flags = []
        if r["precision"] == "fp32" and r["type"] not in _NO_COMPUTE:
            flags.append("fp32")
        if r["type"] == "Reformat" or "reformat" in r["name"].lower():
            flags.append("reformat")
        if any_dla and r["device"] == "GPU":
            flags.append("dla->gpu")
        r["flags"] = flags
    return rows
