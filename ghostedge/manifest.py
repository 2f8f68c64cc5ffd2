"""The sidecar manifest beside every engine (``<engine>.json``): what it was built from, with and for.

Engines stay raw (a ``.plan`` is exactly TensorRT's serialized engine); the manifest lets a mismatch
be explained ("built with TensorRT 10.3 on Orin (sm_87); this is ...") instead of failing to deserialize.
"""

from __future__ import annotations

import hashlib
import json
import platform
from pathlib import Path

from .errors import GhostedgeError, write_text_atomic

MANIFEST_FORMAT = "ghostedge-engine/1"


def manifest_path(engine: str | Path) -> Path:
    return Path(str(engine) + ".json")


def file_sha256(path: str | Path, n: int = 16) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:n]


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def version_tuple(v: str) -> tuple[int, int, int]:
    """'10.16.1.11' -> (10, 16, 1); '8.6' -> (8, 6, 0); digits only in each part ('2.13.0+cu128' works)."""
    parts = (str(v).split("+")[0].split(".") + ["0", "0"])[:3]
    return tuple(int("".join(c for c in p if c.isdigit()) or 0) for p in parts)  # type: ignore[return-value]


#: the CPU features INT8 / BF16 speed on x86 depends on
SPEED_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_tile", "amx_int8", "amx_bf16",
               "asimddp", "i8mm", "bf16")


def cpu_flags() -> list[str]:
    """Which of SPEED_FLAGS this CPU reports (Linux /proc/cpuinfo)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                have = set(line.split(":", 1)[1].split())
                return [f for f in SPEED_FLAGS if f in have]
    except OSError:
        pass
    return []


def write_manifest(engine: str | Path, data: dict) -> Path:
    data = {"format": MANIFEST_FORMAT, **data, "engine_sha256": file_sha256(engine)}
    return write_text_atomic(manifest_path(engine), json.dumps(data, indent=1))


def read_manifest(engine: str | Path, required: bool = True) -> dict | None:
    p = manifest_path(engine)
    if not p.is_file():
        if required:
            raise GhostedgeError(f"{engine} has no manifest ({p.name}): engines are checked against the "
                                 "machine they run on; rebuild it with ghostedge build")
        return None
    try:
        data = json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise GhostedgeError(f"{p} is not valid JSON ({e}): rebuild the engine with ghostedge build") from None
    if data.get("format") != MANIFEST_FORMAT:
        raise GhostedgeError(f"{p} is not a ghostedge engine manifest: rebuild the engine with ghostedge build")
    return data
