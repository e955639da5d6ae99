"""kubectl against the emulated API: apply an OptimizationJob, see it with its printer columns."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.support.cluster import Cluster  # noqa: E402

KUBECTL = shutil.which("kubectl")
pytestmark = pytest.mark.skipif(KUBECTL is None, reason="kubectl is not installed on this machine")

JOB = {
    "apiVersion": "kompaktor.io/v1alpha1",
    "kind": "OptimizationJob",
    "metadata": {"name": "digits-cnn", "namespace": "default"},
    "spec": {
        "model": {"uri": "s3://models/digits/cnn.pt2"},
        "dataset": {"uri": "sklearn:digits"},
        "stages": [{"name": "train", "type": "train", "params": {"epochs": 1}}],
    },
}


async def kubectl(cluster: Cluster, *args: str) -> str:
    env = dict(os.environ, KUBECONFIG=str(cluster.workdir / "kubeconfig"))
    done = await asyncio.to_thread(
        subprocess.run, [str(KUBECTL), "--request-timeout=20s", *args],
        capture_output=True, text=True, env=env, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, f"kubectl {' '.join(args)}: {done.stderr}"
    return done.stdout


async def test_apply_and_get_shows_the_printer_columns(tmp_path: Path) -> None:
    example = sorted((ROOT / "examples").rglob("*.yaml")) if (ROOT / "examples").exists() else []
    manifest = tmp_path / "job.yaml"
    manifest.write_text(yaml.safe_dump(JOB))
    async with Cluster(tmp_path, {"pools": [{"name": "cpu"}]}) as cluster:
        applied = await kubectl(cluster, "apply", "--validate=false", "-f", str(manifest))
        assert "optimizationjob.kompaktor.io/digits-cnn created" in applied
        cluster.emulator.patch(cluster.oj, "default", "digits-cnn", {"status": {
            "phase": "Succeeded", "stage": "train", "costUSD": 0.25, "energyJoules": 1200.0,
            "result": {"speedup": 2.5, "sizeRatio": 0.25, "metric": 0.97}}}, "status")  # fmt: skip
        table = await kubectl(cluster, "get", "oj")
        header, row = table.splitlines()[:2]
        assert header.split() == [
            "NAME", "PHASE", "STAGE", "SPEEDUP", "SIZE", "METRIC", "COST", "ENERGY", "AGE"
        ]  # fmt: skip
        assert row.split()[:8] == [
            "digits-cnn", "Succeeded", "train", "2.5", "0.25", "0.97", "0.25", "1200"
        ]  # fmt: skip
        again = await kubectl(cluster, "apply", "--validate=false", "-f", str(manifest))
        assert "unchanged" in again or "configured" in again
        assert example is not None
