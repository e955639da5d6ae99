"""The quickstart pipeline through the operator, with the real stage command in each pod.

Inputs and artifacts live on a real S3-protocol server; stage pods get its credentials from a
Secret (envFrom), as in a cluster. The same job through `kompaktor run` (files) must report the
same figures: one engine, two executors, two stores.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from tests.support.cluster import Cluster, optimization_job
from tests.support.kubelet import TestKubelet
from tests.support.pools import operator_config
from tests.support.s3 import S3Server

from kompaktor.quickstart import DATA_FILE, MODEL_FILE, init_digits

pytestmark = [pytest.mark.slow, pytest.mark.cluster]


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return init_digits(tmp_path_factory.mktemp("quickstart"), epochs=2)


@pytest.fixture
async def s3_cluster(
    tmp_path: Path, s3_server: S3Server, quickstart: Path
) -> AsyncIterator[tuple[Cluster, TestKubelet, dict[str, Any]]]:
    """A cluster whose stage pods reach a real S3 server with a Secret's credentials only."""
    s3 = s3_server.client()
    for bucket in ("kompaktor-models", "kompaktor-runs"):
        s3.create_bucket(Bucket=bucket)
    for name in (MODEL_FILE, DATA_FILE):
        s3.upload_file(str(quickstart.parent / name), "kompaktor-models", f"digits/{name}")
    spec: dict[str, Any] = yaml.safe_load(quickstart.read_text())["spec"]
    spec["model"]["uri"] = f"s3://kompaktor-models/digits/{MODEL_FILE}"
    spec["dataset"]["uri"] = f"s3://kompaktor-models/digits/{DATA_FILE}"
    config = dict(
        operator_config(tmp_path),
        artifactsUri="s3://kompaktor-runs",
        s3EndpointUrl=s3_server.endpoint_url,
        s3CredentialsSecret="kompaktor-s3",
    )
    async with Cluster(tmp_path, config) as cluster:
        cluster.emulator.create("v1/secrets", {
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "kompaktor-s3", "namespace": "default"},
            "data": {key: base64.b64encode(os.environ[key].encode()).decode()
                     for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")},
        })  # fmt: skip
        async with TestKubelet(cluster.emulator, tmp_path / "kubelet") as kubelet:
            yield cluster, kubelet, spec


def local_run(job_file: Path) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-m", "kompaktor.cli", "run", str(job_file), "--json",
         "--artifacts", (job_file.parent / "local-runs").as_uri()],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    summary: dict[str, Any] = json.loads(done.stdout)
    return summary


async def test_quickstart_through_s3_matches_the_local_runners_figures(
    s3_cluster: tuple[Cluster, TestKubelet, dict[str, Any]], s3_server: S3Server, quickstart: Path
) -> None:
    cluster, kubelet, spec = s3_cluster
    await cluster.start_operator()
    cluster.apply(optimization_job("digits-cnn", spec))
    status = await cluster.wait_phase("digits-cnn", ("Succeeded", "Failed"), 300)
    assert status["phase"] == "Succeeded", status
    assert set(cluster.job_creations().values()) == {1}
    assert len(kubelet.started) == len(status["stages"])
    listed = s3_server.client().list_objects_v2(
        Bucket="kompaktor-runs", Prefix="default/digits-cnn/"
    )
    stored = {item["Key"].rsplit("/", 1)[-1] for item in listed.get("Contents", [])}
    assert {"result.json", "model.pt2"} <= stored, stored

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
