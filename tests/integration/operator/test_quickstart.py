"""The quickstart pipeline through the operator, with the real stage command in each pod.

The same job through `kompaktor run` must report the same figures: one engine, two executors.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from tests.support.cluster import ROOT, Cluster, optimization_job
from tests.support.kubelet import TestKubelet
from tests.support.pools import operator_config

from kompaktor.quickstart import init_digits

pytestmark = [pytest.mark.slow, pytest.mark.cluster]


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return init_digits(tmp_path_factory.mktemp("quickstart"), epochs=2)


@pytest.fixture
async def real_cluster(tmp_path: Path) -> AsyncIterator[tuple[Cluster, TestKubelet]]:
    async with Cluster(tmp_path, operator_config(tmp_path)) as cluster:
        kubelet = TestKubelet(cluster.emulator, tmp_path / "kubelet", env={"PYTHONPATH": str(ROOT)})
        async with kubelet:
            yield cluster, kubelet


def cluster_spec(job_file: Path) -> dict[str, Any]:
    """The job as a user would apply it: inputs at absolute URIs (here: files)."""
    spec: dict[str, Any] = yaml.safe_load(job_file.read_text())["spec"]
    for field in ("model", "dataset"):
        spec[field]["uri"] = (job_file.parent / spec[field]["uri"]).resolve().as_uri()
    return spec


def local_run(job_file: Path) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-m", "kompaktor.cli", "run", str(job_file), "--json",
         "--artifacts", (job_file.parent / "local-runs").as_uri()],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    summary: dict[str, Any] = json.loads(done.stdout)
    return summary


async def test_quickstart_succeeds_with_the_local_runners_figures(
    real_cluster: tuple[Cluster, TestKubelet], quickstart: Path
) -> None:
    cluster, kubelet = real_cluster
    await cluster.start_operator()
    cluster.apply(optimization_job("digits-cnn", cluster_spec(quickstart)))
    status = await cluster.wait_phase("digits-cnn", ("Succeeded", "Failed"), 300)
    assert status["phase"] == "Succeeded", status
    assert set(cluster.job_creations().values()) == {1}
    assert len(kubelet.started) == len(status["stages"])

    local = local_run(quickstart)
    assert local["phase"] == "Succeeded"
    assert status["stages"][0]["key"] == local["stages"][0]["key"]  # same inputs, same key
    for ours, theirs in zip(status["stages"], local["stages"], strict=True):
        assert ours["name"] == theirs["name"]
        assert ours["metrics"]["metric"] == pytest.approx(theirs["metrics"]["metric"], abs=1e-9)
    result = status["result"]
    assert result["metric"] == pytest.approx(local["result"]["metric"], abs=1e-9)
    assert result["metric"] >= result["baselineMetric"] - 0.01
    assert result["speedup"] > 0 and result["sizeRatio"] > 0
    assert status["costUSD"] > 0 and status["energyJoules"] > 0
