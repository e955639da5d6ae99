"""Operator fixtures: an emulated cluster with the operator in-process and a test kubelet.

`fake_cluster` runs stages with tests/support/fake_stage.py (the stage protocol without
training, so restart and retry mechanics take seconds); `real_cluster` runs the real
`kompaktor stage run`.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
if str(ROOT) not in sys.path:  # `tests.support` is imported by its package path
    sys.path.insert(0, str(ROOT))

from tests.support.cluster import Cluster  # noqa: E402
from tests.support.kubelet import TestKubelet  # noqa: E402
from tests.support.pools import operator_config  # noqa: E402


@pytest.fixture
def model_file(tmp_path: Path) -> Path:
    path = tmp_path / "model.pt2"
    path.write_bytes(b"not really a model")
    return path


@pytest.fixture
async def fake_cluster(tmp_path: Path) -> AsyncIterator[tuple[Cluster, TestKubelet]]:
    async with Cluster(tmp_path, operator_config(tmp_path), stub_inputs=True) as cluster:
        kubelet = TestKubelet(
            cluster.emulator,
            tmp_path / "kubelet",
            env={"PYTHONPATH": str(ROOT)},
            runner=[sys.executable, "-m", "tests.support.fake_stage"],
        )
        async with kubelet:
            yield cluster, kubelet
