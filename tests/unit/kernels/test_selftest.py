"""kernels/selftest, the C++ check of the kernels with no Python, built and run on this CPU.

arm64 runs it under qemu-user (scripts/check_arm64_build.sh); running it natively here keeps
it in step with the kernels' C++ interfaces and proves its references right on every unit this
CPU has, so a failure there means arm64, not the test."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

import kompaktor_kernels as kk

SELFTEST = Path(__file__).resolve().parents[3] / "kernels" / "selftest"


@pytest.mark.skipif(
    shutil.which("make") is None or shutil.which("g++") is None, reason="needs make and g++"
)
def test_the_kernels_pass_their_cxx_selftest_on_every_unit(tmp_path: Path) -> None:
    build = subprocess.run(
        ["make", "-s", "-j2", "-C", str(SELFTEST), f"OUT={tmp_path}"],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert build.returncode == 0, build.stdout + build.stderr
    run = subprocess.run([str(tmp_path / "selftest")], capture_output=True, text=True, timeout=240)
    assert run.returncode == 0, run.stdout + run.stderr
    summary = re.fullmatch(r"(\d+) checks on ISA units 0\.\.(\d), 0 failed", run.stdout.strip())
    assert summary is not None, run.stdout
    checks, best = map(int, summary.groups())
    assert best == len(kk.available_isas()) - 1
    assert checks > 8000 * (best + 1)  # every shape, density, layout, batch on each unit
