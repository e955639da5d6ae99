"""Stage and HPO trial Jobs deleted by hand mid-run, and suspension, against the emulated API
server: a lost Job is a failed attempt the user is told about, even one deleted before its pod
got a node; suspending spends no retry and refunds none."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

import pytest
from tests.support.cluster import Cluster, optimization_job
from tests.support.kubelet import JOBS, TestKubelet
from tests.support.pools import operator_config

ROOT = Path(__file__).resolve().parents[3]

pytestmark = pytest.mark.cluster

FakeCluster = tuple[Cluster, TestKubelet]


def one_stage(model: Path, **stage: Any) -> dict[str, Any]:
    prune = {"name": "a", "type": "prune", "params": {"sparsity": 0.2}, **stage}
    return {"model": {"uri": model.as_uri()}, "dataset": {"uri": "sklearn:digits"},
            "stages": [prune]}  # fmt: skip


def stage(cluster: Cluster, name: str) -> dict[str, Any]:
    found: dict[str, Any] = (cluster.status(name).get("stages") or [{}])[0]
    return found


async def delete_running_job(cluster: Cluster, name: str, attempt: int) -> str:
    """Wait until attempt `attempt` runs on a node, let it run a moment, delete its Job."""

    def placed() -> bool:
        now = stage(cluster, name)
        return bool(now.get("attempts") == attempt and now.get("phase") == "Running"
                    and now.get("node"))  # fmt: skip

    await cluster.wait_for(placed, 60, f"attempt {attempt} to be placed")
    await asyncio.sleep(1.0)  # so that it ran a while, and costs
    (job,) = [j for j in cluster.jobs() if j["metadata"]["name"].endswith(f"-a{attempt}")]
    cluster.emulator.remove(JOBS, "default", job["metadata"]["name"])
    return str(job["metadata"]["name"])


async def test_a_stage_job_deleted_by_hand_is_a_failed_attempt_the_user_sees(
    fake_cluster: FakeCluster, model_file: Path
) -> None:
    """It was recreated silently, under the same name, for ever."""
    cluster, kubelet = fake_cluster
    kubelet.env["FAKE_STAGE_SECONDS"] = "60"
    await cluster.start_operator()
    cluster.apply(optimization_job("lost", one_stage(model_file, retries=1)))
    first = await delete_running_job(cluster, "lost", 1)
    retried = await cluster.wait_for(
        lambda: (s := stage(cluster, "lost")).get("attempts") == 2 and s, 30, "a second attempt"
    )
    assert retried["costUSD"] > 0  # the lost attempt's time is paid for
    assert retried["energyJoules"] > 0 and retried["energyMethod"] == "estimate"

    def lost_events() -> list[str]:
        events = cluster.emulator.live("v1/events")
        return [e["message"] for e in events if e["reason"] == "StageJobLost"]

    (message,) = await cluster.wait_for(lost_events, 10, "the StageJobLost event")
    assert f"Job {first} of stage a was deleted before its run ended" in message
    assert cluster.job_creations()[first] == 1  # not recreated

    await delete_running_job(cluster, "lost", 2)  # its last retry
    status = await cluster.wait_phase("lost", ("Failed", "Succeeded"), 30)
    assert status["phase"] == "Failed", status
    assert status["stages"][0]["attempts"] == 2
    assert "StageJobLost" in status["stages"][0]["message"]
    assert len(cluster.job_creations()) == 2


async def test_suspend_and_resume_keep_the_attempts_used(
    fake_cluster: FakeCluster, model_file: Path
) -> None:
    """Attempts went back to 0 on resume: suspending gave a stage its retries back."""
    cluster, kubelet = fake_cluster
    kubelet.env["FAKE_STAGE_SECONDS"] = "60"
    await cluster.start_operator()
    cluster.apply(optimization_job("pause", one_stage(model_file, retries=1)))
    await delete_running_job(cluster, "pause", 1)  # attempt 1 fails (its Job lost)
    await cluster.wait_for(
        lambda: stage(cluster, "pause").get("node") and stage(cluster, "pause")["attempts"] == 2,
        30, "attempt 2 to be placed",
    )  # fmt: skip
    cluster.edit_spec("pause", {"suspend": True})
    await cluster.wait_phase("pause", ("Suspended",), 30)
    await cluster.wait_for(lambda: not cluster.jobs(), 30, "the Job to be deleted")
    suspended = stage(cluster, "pause")
    assert (suspended["attempts"], suspended["interrupted"]) == (2, 1)
    kubelet.env["FAKE_STAGE_FAIL"] = "prune"
    kubelet.env["FAKE_STAGE_SECONDS"] = "0"
    cluster.edit_spec("pause", {"suspend": False})
    status = await cluster.wait_phase("pause", ("Succeeded", "Failed"), 60)
    # Attempt 3 ran (the suspended one spent no retry) and failed: the one retry was spent.
    assert status["phase"] == "Failed", status
    assert status["stages"][0]["attempts"] == 3
    assert sorted(name[-2:] for name in cluster.job_creations()) == ["a1", "a2", "a3"]


def lost_events(cluster: Cluster) -> list[str]:
    events = cluster.emulator.live("v1/events")
    return [e["message"] for e in events if e["reason"] == "StageJobLost"]


async def test_an_hpo_trial_job_deleted_by_hand_is_a_failed_trial_the_user_sees(
    fake_cluster: FakeCluster, model_file: Path
) -> None:
    """Trial Jobs were recreated silently, under the same name."""
    cluster, kubelet = fake_cluster
    kubelet.env["FAKE_STAGE_SECONDS"] = "60"
    await cluster.start_operator()
    search = {"name": "tune", "type": "hpo", "params": {
        "target": "prune", "sampler": "random", "trials": 2, "parallelism": 1,
        "space": {"sparsity": {"low": 0.1, "high": 0.9}}}}  # fmt: skip
    cluster.apply(optimization_job("search", {**one_stage(model_file), "stages": [search]}))

    def placed() -> bool:
        trials = cluster.status("search").get("trials") or []
        return bool(trials and trials[0].get("attemptStartTime") and trials[0].get("jobUid"))

    await cluster.wait_for(placed, 60, "trial 0 to be placed")
    await asyncio.sleep(1.0)  # so that it ran a while, and costs
    (job,) = cluster.jobs()
    name = job["metadata"]["name"]
    kubelet.env["FAKE_STAGE_SECONDS"] = "0"  # trial 1 runs at once
    cluster.emulator.remove(JOBS, "default", name)
    status = await cluster.wait_phase("search", ("Succeeded", "Failed"), 60)
    assert status["phase"] == "Succeeded", status
    first, second = status["trials"]
    lost = f"Job {name} of trial 0 of stage tune was deleted before its run ended"
    assert (first["state"], first["message"]) == ("Failed", f"StageJobLost: {lost}")
    assert first["costUSD"] > 0 and first["energyJoules"] > 0  # paid up to the deletion
    assert "jobUid" not in first and "attemptStartTime" not in first
    assert second["state"] == "Complete"
    (message,) = await cluster.wait_for(lambda: lost_events(cluster), 10, "the StageJobLost event")
    assert message == f"{lost}; the trial counts as failed and the search goes on without it"
    assert cluster.job_creations()[name] == 1  # not recreated


async def test_a_job_deleted_before_its_pod_got_a_node_is_a_failed_attempt_too(
    tmp_path: Path, model_file: Path
) -> None:
    """Without a node in status the Job was recreated without notice; now the pass that saw
    the Job records its uid."""
    config = operator_config(tmp_path) | {"podStartTimeoutSeconds": 120}  # no NoPod here
    async with Cluster(tmp_path, config, stub_inputs=True) as cluster:
        kubelet = TestKubelet(
            cluster.emulator, tmp_path / "kubelet", env={"PYTHONPATH": str(ROOT)},
            runner=[sys.executable, "-m", "tests.support.fake_stage"], paused=True,
        )  # fmt: skip
        async with kubelet:
            await cluster.start_operator()
            cluster.apply(optimization_job("early", one_stage(model_file, retries=1)))
            seen = await cluster.wait_for(
                lambda: stage(cluster, "early").get("jobUid"), 60, "the Job to be seen"
            )
            (job,) = cluster.jobs()
            assert job["metadata"]["uid"] == seen and not stage(cluster, "early").get("node")
            cluster.emulator.remove(JOBS, "default", job["metadata"]["name"])
            (message,) = await cluster.wait_for(
                lambda: lost_events(cluster), 30, "the StageJobLost event"
            )
            assert f"Job {job['metadata']['name']} of stage a was deleted" in message
            kubelet.paused = False
            status = await cluster.wait_phase("early", ("Succeeded", "Failed"), 60)
            assert status["phase"] == "Succeeded", status
            assert status["stages"][0]["attempts"] == 2
            assert sorted(name[-2:] for name in cluster.job_creations()) == ["a1", "a2"]
