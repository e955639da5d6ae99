"""What a benchmark ran on, recorded beside its figures.

A latency means little without the machine: pools differ in CPU model and instruction set, and
the compiled kernels pick their path (AVX-512, AVX2, portable) per CPU, so a sparse layer's
speed on the ARM pool is not its speed on the CPU pool. Every field is read, never assumed.
"""

from __future__ import annotations

import platform
from pathlib import Path
from typing import Any

from kompaktor.metrics.energy import cpu_count

CPUINFO = Path("/proc/cpuinfo")


def cpu_model(cpuinfo: Path = CPUINFO) -> str:
    """The CPU's marketing name (x86 "model name"; arm64 kernels often give none, then the
    implementer and part numbers), else the platform's processor or machine string."""
    fields: dict[str, str] = {}
    try:
        text = cpuinfo.read_text()
    except OSError:
        text = ""
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() not in fields:
            fields[key.strip()] = value.strip()
    if fields.get("model name"):
        return fields["model name"]
    if "CPU implementer" in fields:
        return f"implementer {fields['CPU implementer']} part {fields.get('CPU part', '?')}"
    return platform.processor() or platform.machine()


def describe() -> dict[str, Any]:
    """The machine as this process sees it: CPU, architecture, usable cores, torch's threads,
    the kernels' dispatch path and int8 kernels (when the package is installed) and the GPU,
    if any."""
    import torch

    from kompaktor.surgery.kernels import optional_kernel

    info: dict[str, Any] = {
        "cpu": cpu_model(),
        "arch": platform.machine(),
        "cpus": cpu_count(),
        "torch": torch.__version__,
        "torchThreads": torch.get_num_threads(),
    }
    active_isa, int8_path = optional_kernel("active_isa"), optional_kernel("int8_path")
    if active_isa is not None and int8_path is not None:
        info["kernelsIsa"] = active_isa()
        info["kernelsInt8"] = int8_path()
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info
