"""Build targets: Jetson boards and discrete GPUs, as data; detection of the machine we are on."""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from pathlib import Path

from .errors import GhostedgeError

GiB = 1 << 30


@dataclass(frozen=True)
class Target:
    name: str
    description: str
    dla_cores: int
    workspace: int | None        # bytes; a cap that fits the board's shared memory (None: TensorRT decides)
    precisions: tuple[str, ...]
    compute_capability: str | None = None
    jetson: bool = True
    cache_trt: str | None = None  # TensorRT a legacy calibration cache is stamped for (implicit INT8 users)


TARGETS: dict[str, Target] = {t.name: t for t in (
    Target("orin-nano", "Jetson Orin Nano (4/8 GB)", 0, 1 * GiB, ("fp32", "fp16", "int8"), "8.7"),
    Target("orin-nx", "Jetson Orin NX (8/16 GB; the 8 GB module has 1 DLA)", 2, 2 * GiB,
           ("fp32", "fp16", "int8"), "8.7"),
    Target("agx-orin", "Jetson AGX Orin (32/64 GB)", 2, 4 * GiB, ("fp32", "fp16", "int8"), "8.7"),
    Target("xavier-nx", "Jetson Xavier NX (8/16 GB)", 2, 1 * GiB, ("fp32", "fp16", "int8"), "7.2"),
    Target("agx-xavier", "Jetson AGX Xavier (32/64 GB)", 2, 2 * GiB, ("fp32", "fp16", "int8"), "7.2"),
    Target("thor", "Jetson AGX Thor (no DLA)", 0, 8 * GiB, ("fp32", "fp16", "int8"), "11.0", cache_trt="10.13"),
    Target("dgpu", "discrete / data-centre NVIDIA GPU", 0, None, ("fp32", "fp16", "int8"), None, jetson=False),
)}

# /proc/device-tree/model substrings -> preset (most specific first)
_MODEL_PATTERNS = (
    ("thor", "thor"), ("orin nano", "orin-nano"), ("orin nx", "orin-nx"), ("agx orin", "agx-orin"),
    ("orin", "agx-orin"), ("xavier nx", "xavier-nx"), ("agx xavier", "agx-xavier"),
    ("jetson-agx", "agx-xavier"), ("xavier", "agx-xavier"),
)

# L4T release -> (JetPack, TensorRT it ships). Keys are (major, minor, patch) where the patch decides, else
# (major, minor). Sources, per row: JetPack from jtop's NVIDIA_JETPACK table (rbonghi/jetson_stats
# jtop/core/jetson_variables.py at f41d5ca) and jetson-containers' (dusty-nv/jetson-containers
# jetson_containers/l4t_version.py at dd206bf); TensorRT from NVIDIA's JetPack release notes as jetson-containers
# pins it (packages/cuda/cudastack/config.py: L4T >= 39 -> 10.16.1, JetPack 7.0/7.1 -> 10.13, 6.1/6.2 -> 10.3).
# Where the two tables differ the row says so. No source maps an L4T release to JetPack 7.2.2 (the first
# JetPack TensorRT 11.4.1 supports), so no row claims TensorRT 11 on a board: `build` reads the TensorRT it runs.
L4T_TO_JETPACK = {
    (35, 1): ("5.0.2", "8.4.1"),                                          # jtop, jetson-containers
    (35, 2): ("5.1", "8.5.2"), (35, 3): ("5.1.1", "8.5.2"),                # jtop, jetson-containers
    (35, 4): ("5.1.2", "8.5.2"), (35, 5): ("5.1.3", "8.5.2"),              # jtop, jetson-containers
    (35, 6): ("5.1.4", "8.5.2"), (35, 6, 0): ("5.1.4", "8.5.2"),           # jtop, jetson-containers
    (35, 6, 1): ("5.1.5", "8.5.2"), (35, 6, 2): ("5.1.5", "8.5.2"),        # jtop, jetson-containers
    (35, 6, 3): ("5.1.5", "8.5.2"),                                       # jtop (not in jetson-containers)
    (35, 6, 4): ("5.1.6", "8.5.2"),                                       # jtop, jetson-containers
    (36, 2): ("6.0 DP", "8.6.2"), (36, 3): ("6.0", "8.6.2"),               # jtop, jetson-containers
    (36, 4): ("6.1", "10.3.0"),                                           # jtop, jetson-containers
    (36, 4, 2): ("6.1.1", "10.3.0"),                  # jetson-containers (jtop: "6.1 (rev1)")
    (36, 4, 3): ("6.2", "10.3.0"),                                        # jtop, jetson-containers
    (36, 4, 4): ("6.2.1", "10.3.0"), (36, 4, 7): ("6.2.1", "10.3.0"),      # jtop, jetson-containers
    (36, 5): ("6.2.2", "10.3.0"),                     # jtop (jetson-containers: "6.2.1")
    (38, 2): ("7.0", "10.13"), (38, 4): ("7.1", "10.13"),                  # jtop, jetson-containers
    (39, 0): ("7.2 EA", "10.16.1"),                                       # jtop, jetson-containers
    (39, 1): ("7.2", "10.16.1"),                      # jetson-containers ("7.2 GA"; not in jtop)
    (39, 2): ("7.2", "10.16.1"),                      # jtop ("7.2 GA"; not in jetson-containers)
}


def jetpack_for(v: tuple[int, int, int]) -> tuple[str, str] | None:
    """(JetPack, TensorRT) for an L4T release, the patch-level entry first."""
    return L4T_TO_JETPACK.get(v) or L4T_TO_JETPACK.get(v[:2])


@dataclass
class Platform:
    target: Target
    board: str | None = None          # device-tree model string
    l4t: str | None = None
    jetpack: str | None = None
    expected_trt: str | None = None


def parse_l4t(text: str) -> tuple[int, int, int] | None:
    """'# R36 (release), REVISION: 4.3, ...' -> (36, 4, 3)."""
    m = re.search(r"R(\d+)\s*\(release\),\s*REVISION:\s*(\d+)(?:\.(\d+))?", text)
    if not m:
        return None
    return int(m.group(1)), int(m.group(2)), int(m.group(3) or 0)


def preset_for_board(model: str) -> Target | None:
    low = model.lower()
    for pat, name in _MODEL_PATTERNS:
        if pat in low:
            return TARGETS[name]
    return None


def detect(root: Path = Path("/")) -> Platform | None:
    """The Jetson we run on (None elsewhere), from /proc/device-tree/model and /etc/nv_tegra_release."""
    model_file = root / "proc/device-tree/model"
    release = root / "etc/nv_tegra_release"
    if not model_file.is_file() and not release.is_file():
        return None
    board = model_file.read_bytes().decode(errors="replace").strip("\x00\n ") if model_file.is_file() else ""
    target = preset_for_board(board)
    if target is None:
        warnings.warn(f"unrecognised Jetson board {board or '(no /proc/device-tree/model)'!r}: using the agx-orin "
                      "preset (workspace cap, DLA cores); pass --target to choose the right one", stacklevel=2)
        target = TARGETS["agx-orin"]
    plat = Platform(target=target, board=board or None)
    if release.is_file():
        v = parse_l4t(release.read_text(errors="replace"))
        if v:
            plat.l4t = ".".join(map(str, v))
            jp = jetpack_for(v)
            if jp:
                plat.jetpack, plat.expected_trt = jp
    return plat


def resolve(name: str, root: Path = Path("/")) -> Platform:
    """'auto' -> the detected Jetson, else a discrete GPU; or a preset by name."""
    if name == "auto":
        return detect(root) or Platform(target=TARGETS["dgpu"])
    if name not in TARGETS:
        raise GhostedgeError(f"unknown --target {name!r}: use auto or one of {', '.join(TARGETS)}")
    return Platform(target=TARGETS[name])


def check_dla(plat: Platform, dla_core: int | None) -> None:
    """Boards without DLA refuse --dla-core before anything is built. How many cores the device really has
    is asked from TensorRT at build time (``builder.num_DLA_cores``): presets disagree with some modules
    (the Orin NX 8 GB has one)."""
    if dla_core is None:
        return
    t = plat.target
    if t.dla_cores == 0:
        raise GhostedgeError(f"--dla-core {dla_core}: {t.description} has no DLA: leave out --dla-core to "
                             "build for the GPU")
    if dla_core < 0:
        raise GhostedgeError(f"--dla-core {dla_core}: DLA cores are numbered from 0")


def jetson_gpu_clock(root: Path = Path("/")) -> dict | None:
    """The Jetson GPU's devfreq clock, read as jtop reads it (``/sys/class/devfreq/*``: the GPU node is
    ``17000000.ga10b`` on Orin, ``17000000.gv11b`` on Xavier, ``*.gpu`` elsewhere): cur/min/max Hz and
    whether it is pinned (min == max, what ``jetson_clocks`` does under the current nvpmodel)."""
    base = root / "sys/class/devfreq"
    if not base.is_dir():
        return None
    for d in sorted(base.iterdir()):
        name = d.name.lower()
        of_name = ""
        try:
            of_name = (d / "device/of_node/name").read_text(errors="replace").strip("\x00\n ").lower()
        except OSError:
            pass
        if not any(k in name for k in ("gpu", "ga10b", "gv11b", "gp10b", "gb10b")) and of_name != "gpu":
            continue

        def read(f: str) -> int | None:
            try:
                return int((d / f).read_text().split()[0])
            except (OSError, ValueError, IndexError):
                return None

        cur, lo, hi = read("cur_freq"), read("min_freq"), read("max_freq")
        # pinned as jtop judges it (jtop/core/jetson_clocks.py ``jetson_clocks_alive``: the GPU's devfreq min ==
        # max): jetson_clocks raises min_freq to max_freq, and max_freq is what the nvpmodel power mode allows,
        # below the top available frequency on capped modes (Orin Nano / NX 7-25 W)
        return {"node": d.name, "cur_hz": cur, "min_hz": lo, "max_hz": hi,
                "jetson_clocks": bool(lo is not None and hi is not None and lo == hi)}
    return None
