"""What this CPU's int8 dot products do: the fact that decides which CPU INT8 engines may be built here.

x86 CPUs with VNNI (AVX512_VNNI, AVX_VNNI) or AMX multiply u8 by s8 and accumulate straight into int32
(``vpdpbusd``): nothing saturates. Without them (AVX2-only x86, e.g. AMD Zen 2 / Zen 3, Intel before
Cascade Lake) ONNX Runtime's MLAS and oneDNN (OpenVINO's CPU plugin) use ``vpmaddubsw``, which adds two
u8 x s8 products into a **saturating int16**: with activations on the u8 grid [0, 255] a pair overflows
once |w_i| + |w_i+1| > 128 (255 * 128 = 32640 <= 32767). ONNX Runtime documents ``reduce_range`` (7-bit
weights) and the u8u8 format for this; NNCF has ``overflow_fix``. Measured on an AVX2-only EPYC, the u8s8
engine that was faithful on VNNI CPUs lost 2-5 points of top-1 agreement (issue #16).

So on such a CPU the candidates are built so that no int16 intermediate can overflow: weights on a 7-bit
grid (|w| <= 64, so any pair sums to at most 128) or, for ONNX Runtime, uint8 weights (MLAS's u8u8 kernels
widen both operands to int16 and multiply-add into int32 with ``vpmaddwd``). That is checked statically on
every engine built (``check_no_overflow`` in build_cpu).

``ONEDNN_MAX_CPU_ISA`` (or ``DNNL_MAX_CPU_ISA``) set to an ISA without VNNI sends OpenVINO's oneDNN
convolutions down the same AVX2 path on any CPU, so it counts for OpenVINO too. ``GHOSTEDGE_ASSUME_NO_VNNI=1``
makes ghostedge build the non-saturating candidates on any CPU (to measure what the fix costs on a VNNI CPU).
ARM CPUs widen u8/s8 products (NEON ``smull``/``umull`` + pairwise accumulate into int32, or ``sdot``/``udot``):
no int16 saturation there.
"""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

#: x86 features whose presence means u8 x s8 products accumulate in int32 (no int16 intermediate)
INT32_DOT_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")
#: oneDNN ISA caps (ONEDNN_MAX_CPU_ISA values) that have no VNNI instruction
ONEDNN_NO_VNNI_ISAS = ("SSE41", "AVX", "AVX2", "AVX512_CORE", "AVX512_MIC", "AVX512_MIC_4OPS")
#: the largest |int8 weight| that cannot overflow a vpmaddubsw pair for u8 activations (2 * 64 * 255 <= 32767)
NO_OVERFLOW_WEIGHT_MAX = 64


@dataclass(frozen=True)
class CpuInt8:
    """This CPU's int8 arithmetic as the CPU runtimes will use it."""

    name: str
    arch: str                       # platform.machine(): x86_64, aarch64, ...
    flags: frozenset[str]           # the CPU's feature flags (Linux /proc/cpuinfo names)
    onednn_isa: str | None = None   # ONEDNN_MAX_CPU_ISA / DNNL_MAX_CPU_ISA, when set
    assume_no_vnni: bool = False    # GHOSTEDGE_ASSUME_NO_VNNI=1

    @property
    def x86(self) -> bool:
        return self.arch.lower() in ("x86_64", "amd64", "i386", "i686", "x86")

    @property
    def vnni(self) -> bool:
        return any(f in self.flags for f in INT32_DOT_FLAGS)

    @property
    def ort_saturates(self) -> bool:
        """ONNX Runtime's u8s8 kernels add product pairs in int16 here (MLAS dispatches on CPUID)."""
        return self.assume_no_vnni or (self.x86 and not self.vnni)

    @property
    def onednn_saturates(self) -> bool:
        """OpenVINO's oneDNN u8s8 convolutions add product pairs in int16 here."""
        capped = (self.onednn_isa or "").upper() in ONEDNN_NO_VNNI_ISAS
        return self.ort_saturates or (self.x86 and capped)

    def describe(self) -> str:
        have = [f for f in ("avx2", "avx512f", *INT32_DOT_FLAGS) if f in self.flags]
        note = "" if not (self.x86 and not self.vnni) else ", no VNNI: u8 x s8 pairs saturate in int16"
        cap = f", ONEDNN_MAX_CPU_ISA={self.onednn_isa}" if self.onednn_isa else ""
        forced = ", GHOSTEDGE_ASSUME_NO_VNNI=1" if self.assume_no_vnni else ""
        return f"{self.name} ({' '.join(have) or 'no avx2/avx512/vnni flags'}{note}{cap}{forced})"

    def to_dict(self) -> dict:
        return {"name": self.name, "arch": self.arch, "vnni": self.vnni,
                "int8_flags": sorted(f for f in self.flags if f in ("avx2", "avx512f", *INT32_DOT_FLAGS)),
                "onednn_max_cpu_isa": self.onednn_isa, "assume_no_vnni": self.assume_no_vnni,
                "ort_saturates": self.ort_saturates, "onednn_saturates": self.onednn_saturates}


def _proc_flags(text: str) -> frozenset[str]:
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def _numpy_flags() -> frozenset[str]:
    """CPUID through numpy where there is no /proc/cpuinfo (macOS, Windows), in /proc/cpuinfo's names."""
    try:
        from numpy._core._multiarray_umath import __cpu_features__ as feats
    except ImportError:  # numpy < 2
        try:
            from numpy.core._multiarray_umath import __cpu_features__ as feats
        except ImportError:
            return frozenset()
    names = {"AVX2": "avx2", "AVX512F": "avx512f", "AVX512VNNI": "avx512_vnni", "ASIMDDP": "asimddp"}
    return frozenset(v for k, v in names.items() if feats.get(k))


def read_cpu(cpuinfo: str | None = None, arch: str | None = None, env: dict | None = None) -> CpuInt8:
    """This CPU (or the one a /proc/cpuinfo text describes)."""
    env = os.environ if env is None else env
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            cpuinfo = ""
    flags = _proc_flags(cpuinfo) or (_numpy_flags() if cpuinfo == "" else frozenset())
    name = next((ln.split(":", 1)[1].strip() for ln in cpuinfo.splitlines() if ln.startswith("model name")),
                platform.processor() or platform.machine())
    isa = env.get("ONEDNN_MAX_CPU_ISA") or env.get("DNNL_MAX_CPU_ISA") or None
    return CpuInt8(name=name, arch=arch or platform.machine(), flags=flags, onednn_isa=isa,
                   assume_no_vnni=env.get("GHOSTEDGE_ASSUME_NO_VNNI", "") not in ("", "0"))


@lru_cache(maxsize=1)
def host_cpu() -> CpuInt8:
    return read_cpu()
