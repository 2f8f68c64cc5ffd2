"""Process-wide settings a stage changes only for its own duration.

A library call must leave the process as it found it: torch's thread count, flush-denormal mode,
deterministic-algorithms switch and the global random generators (Python, NumPy, torch) are set inside a
``with`` block and restored on the way out, also when the stage raises.
"""

from __future__ import annotations

import random
from contextlib import contextmanager
from typing import Iterator

import numpy as np


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run with ``n`` intra-op threads (0: leave torch's setting alone)."""
    import torch

    prev = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if n and torch.get_num_threads() != prev:
            torch.set_num_threads(prev)


def flush_denormal_enabled() -> bool:
    """torch has no getter for flush-denormal: a denormal float32 survives a multiply only when it is off."""
    import torch

    return float((torch.tensor([1e-39], dtype=torch.float32) * 1.0).item()) == 0.0


@contextmanager
def flush_denormals() -> Iterator[None]:
    """Flush denormal floats to zero inside the block, then put the previous mode back."""
    import torch

    prev = flush_denormal_enabled()
    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_flush_denormal(prev)


@contextmanager
def seeded(seed: int, deterministic: bool = False) -> Iterator[None]:
    """Seed Python's, NumPy's and torch's (CPU) global generators for the block; their previous states (and,
    with ``deterministic``, torch's deterministic-algorithms switch) come back afterwards."""
    import torch

    py_state, np_state = random.getstate(), np.random.get_state()
    det, warn = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    with torch.random.fork_rng(devices=[]):
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)
        if deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
        try:
            yield
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)
            if deterministic:
                torch.use_deterministic_algorithms(det, warn_only=warn)
