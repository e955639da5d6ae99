"""The machine a benchmark ran on, read from the kernel's own description."""

from __future__ import annotations

import platform
from pathlib import Path

from kompaktor.metrics.hardware import cpu_model

X86 = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 9R14 96-Core Processor
flags\t\t: fpu avx512f

processor\t: 1
model name\t: AMD EPYC 9R14 96-Core Processor
"""

ARM64 = """processor\t: 0
BogoMIPS\t: 243.75
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp
CPU implementer\t: 0x41
CPU architecture: 8
CPU part\t: 0xd0c
"""


def test_x86_cpus_are_named_by_their_model_name(tmp_path: Path) -> None:
    (tmp_path / "cpuinfo").write_text(X86)
    assert cpu_model(tmp_path / "cpuinfo") == "AMD EPYC 9R14 96-Core Processor"


def test_arm64_cpus_without_a_name_give_their_part_numbers(tmp_path: Path) -> None:
    (tmp_path / "cpuinfo").write_text(ARM64)
    assert cpu_model(tmp_path / "cpuinfo") == "implementer 0x41 part 0xd0c"


def test_without_cpuinfo_the_platform_names_the_cpu(tmp_path: Path) -> None:
    assert cpu_model(tmp_path / "missing") == (platform.processor() or platform.machine())
