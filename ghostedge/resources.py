"""Memory guard: refuse a batch or an image set that cannot fit before allocating it.

An estimate, not a measurement: a GhostNet's largest activations are the 48x-width expansion at half
resolution (12 x width x S^2 values per image), and a runtime keeps a few of them alive at once, so
inference needs about 4 bytes x S^2 x (3 + 48 x width) per image. A batch that would need more than
the memory available now is an error that names the estimate, instead of a MemoryError (or the OOM
killer) half-way through a run.
"""

from __future__ import annotations

import os

from .errors import GhostedgeError

#: share of the available memory one step may plan to use
USABLE_FRACTION = 0.8


def available_memory() -> int | None:
    """Bytes available now (MemAvailable on Linux; physical pages elsewhere); None when unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def input_bytes(n: int, size: int) -> int:
    """n float32 NCHW RGB images of size x size."""
    return 4 * 3 * size * size * n


def inference_bytes(batch: int, size: int, width: float = 1.0) -> int:
    """Estimated peak memory of one GhostNet forward pass over ``batch`` images (inputs included)."""
    return 4 * size * size * batch * int(3 + 48 * max(width, 0.5))


def _gib(n: int) -> str:
    return f"{n / (1 << 30):.1f} GiB" if n >= 1 << 28 else f"{n / (1 << 20):.0f} MiB"


def check_memory(needed: int, what: str, fix: str) -> None:
    avail = available_memory()
    if avail is not None and needed > USABLE_FRACTION * avail:
        raise GhostedgeError(f"{what} needs about {_gib(needed)} of memory, and this machine has {_gib(avail)} "
                             f"available: {fix} (nothing was allocated)")


def check_batch(batch: int, size: int, width: float = 1.0, option: str = "--batch") -> None:
    check_memory(inference_bytes(batch, size, width), f"{option} {batch} at {size} px",
                 f"use a smaller {option}")


def check_images(n: int, size: int, what: str, fix: str) -> None:
    """n images held at once as float32 (plus their uint8 decode)."""
    check_memory(input_bytes(n, size) + input_bytes(n, size) // 4, f"{what} ({n} images at {size} px)", fix)


def check_logits(n: int, classes: int, models: int, what: str) -> None:
    """The logits a streamed drift pass keeps: n x classes float32 per model."""
    check_memory(4 * n * classes * models, f"{what} ({n} images x {classes} classes x {models} models of logits)",
                 "use fewer images (--max-eval-images)")
