"""What the CPU really has (its name and feature flags), and the precision that follows.

bf16 on a CPU without bf16 instructions is several times *slower* than fp32,
so it is chosen only when the CPU flags say the hardware is there. The devices torch sees are
asked in :mod:`vitsearch.model.pytorch.devices` (torch is the model package's alone).
"""

from __future__ import annotations

import platform
from pathlib import Path

BF16_CPU_FLAGS = frozenset({"amx_bf16", "avx512_bf16"})


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> frozenset[str]:
    """The CPU feature flags (Linux); empty where they cannot be read."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.partition(":")[2].split())
    return frozenset()


def cpu_name(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    try:
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def has_bf16_hardware(flags: frozenset[str]) -> bool:
    return bool(flags & BF16_CPU_FLAGS)


def choose_precision(requested: str, device: str, flags: frozenset[str] | None = None) -> str:
    """fp16 on CUDA, bf16 on CPUs with bf16 hardware, fp32 otherwise, unless asked."""
    if requested != "auto":
        return requested
    if device == "cuda":
        return "fp16"
    if device == "cpu" and has_bf16_hardware(cpu_flags() if flags is None else flags):
        return "bf16"
    return "fp32"
