"""The runtime fingerprint recorded in every receipt's ``runtime`` member.

It names everything that can make two honest runs of the same model on the same inputs
disagree bitwise: the engine and its version, the execution provider, the profile (graph
optimisation level, threads, execution mode) and the platform: OS, CPU architecture and the
CPU features that select different float kernels (FMA contracts a*b+c into one rounding;
AVX2/AVX-512/AMX/NEON/SVE kernels block reductions differently; VNNI, BF16 and FP16 units
change low-precision paths). A verifier compares fingerprints to tell a cheat from a machine
that legitimately rounds differently.
"""

from __future__ import annotations

import functools
import platform
from pathlib import Path
from typing import Any, Final

import onnxruntime as ort

from veriml.runtime._profile import Profile

__all__ = ["FLOAT_CPU_FLAGS", "platform_fingerprint", "runtime_fingerprint"]

# CPU features that can change which kernel (and so which rounding) a float op uses.
FLOAT_CPU_FLAGS: Final[frozenset[str]] = frozenset(
    {
        # x86-64 (/proc/cpuinfo "flags")
        "sse4_1",
        "sse4_2",
        "avx",
        "avx2",
        "fma",
        "f16c",
        "avx512f",
        "avx512dq",
        "avx512bw",
        "avx512vl",
        "avx512_vnni",
        "avx512_bf16",
        "avx512_fp16",
        "avx_vnni",
        "amx_tile",
        "amx_bf16",
        "amx_int8",
        "amx_fp16",
        # AArch64 (/proc/cpuinfo "Features")
        "fp",
        "asimd",
        "asimdhp",
        "asimddp",
        "fphp",
        "i8mm",
        "bf16",
        "sve",
        "sve2",
        "sme",
    }
)
_CPUINFO = Path("/proc/cpuinfo")
_CPUINFO_LIMIT = 4 * 1024 * 1024


def _cpu_flags(cpuinfo: str) -> list[str]:
    """The float-relevant flags of the first CPU listed in a ``/proc/cpuinfo`` text."""
    for line in cpuinfo.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip().lower() in ("flags", "features"):
            return sorted(set(value.split()) & FLOAT_CPU_FLAGS)
    return []


@functools.cache
def _platform() -> tuple[str, str, tuple[str, ...], str]:
    flags: list[str] = []
    source = "platform"
    try:
        with _CPUINFO.open("rb") as f:
            text = f.read(_CPUINFO_LIMIT).decode("utf-8", "replace")
        flags = _cpu_flags(text)
        source = "/proc/cpuinfo"
    except OSError:
        # Not Linux (or no procfs): architecture alone is what we can state truthfully.
        pass
    return (
        platform.system().lower() or "unknown",
        platform.machine().lower() or "unknown",
        tuple(flags),
        source,
    )


def platform_fingerprint() -> dict[str, Any]:
    """OS, architecture and float-relevant CPU flags. Reads ``/proc/cpuinfo`` once per process."""
    os_name, machine, flags, source = _platform()
    return {"os": os_name, "machine": machine, "cpu_flags": list(flags), "cpu_flags_source": source}


def runtime_fingerprint(profile: Profile) -> dict[str, Any]:
    """The JSON-able fingerprint of a run under ``profile`` on this machine.

    >>> runtime_fingerprint(Profile())["engine"]
    'onnxruntime'
    """
    return {
        "engine": "onnxruntime",
        "version": ort.__version__,
        **profile.to_json(),
        "platform": platform_fingerprint(),
    }
