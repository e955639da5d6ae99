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

EXAMPLE = ROOT / "examples" / "digits-pipeline" / "cluster.yaml"


async def kubectl(cluster: Cluster, *args: str) -> str:
    env = dict(os.environ, KUBECONFIG=str(cluster.workdir / "kubeconfig"))
    done = await asyncio.to_thread(
        subprocess.run, [str(KUBECTL), "--request-timeout=20s", *args],
        capture_output=True, text=True, env=env, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, f"kubectl {' '.join(args)}: {done.stderr}"
    return done.stdout


async def test_apply_an_example_and_get_shows_the_printer_columns(tmp_path: Path) -> None:
    name = yaml.safe_load(EXAMPLE.read_text())["metadata"]["name"]
    async with Cluster(tmp_path, {"pools": [{"name": "cpu"}]}) as cluster:
        applied = await kubectl(cluster, "apply", "--validate=false", "-f", str(EXAMPLE))
        assert f"optimizationjob.kompaktor.io/{name} created" in applied
        stored = cluster.job(name)
        assert stored["spec"]["stages"][-1]["pools"] == ["cpu", "arm"]
        cluster.emulator.patch_object(cluster.oj, "default", name, {"status": {
            "phase": "Succeeded", "stage": "bench", "costUSD": 0.25, "energyJoules": 1200.0,
            "result": {"speedup": 2.5, "sizeRatio": 0.25, "metric": 0.97}}}, "status")  # fmt: skip
        table = await kubectl(cluster, "get", "oj")
        header, row = table.splitlines()[:2]
        assert header.split() == [
            "NAME", "PHASE", "STAGE", "SPEEDUP", "SIZE", "METRIC", "COST", "ENERGY", "AGE"
        ]  # fmt: skip
        assert row.split()[:8] == [
            name, "Succeeded", "bench", "2.5", "0.25", "0.97", "0.25", "1200"
        ]  # fmt: skip
        again = await kubectl(cluster, "apply", "--validate=false", "-f", str(EXAMPLE))
        assert f"optimizationjob.kompaktor.io/{name} unchanged" in again
