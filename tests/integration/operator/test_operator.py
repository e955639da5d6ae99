"""The operator against an emulated API server, with stage pods run by the test kubelet.

Stages here are tests/support/fake_stage.py (the real stage protocol, no training), so these
tests are about the controller: idempotent Jobs, restarts, retries, spec edits, suspension,
deletion and HPO trials. The real stages run in test_quickstart.py.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import socket
import sys
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from tests.support.cluster import Cluster, optimization_job
from tests.support.kubelet import TestKubelet

pytestmark = pytest.mark.cluster

FakeCluster = tuple[Cluster, TestKubelet]


def spec(model: Path, *stages: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {
        "model": {"uri": model.as_uri()},
        "dataset": {"uri": "sklearn:digits"},
        "stages": list(stages),
        **extra,
    }


def prune(name: str, sparsity: float, **extra: Any) -> dict[str, Any]:
    return {"name": name, "type": "prune", "params": {"sparsity": sparsity}, **extra}


async def test_pipeline_runs_one_owned_job_per_stage(
    fake_cluster: FakeCluster, model_file: Path
) -> None:
    cluster, _ = fake_cluster
    port = free_port()
    await cluster.start_operator(metrics_port=port)
    owner = cluster.apply(
        optimization_job("pipe", spec(model_file, prune("a", 0.3), prune("b", 0.5, pool="gpu")))
    )
    status = await cluster.wait_phase("pipe", ("Succeeded", "Failed"), 60)
    assert status["phase"] == "Succeeded", status
    assert [s["phase"] for s in status["stages"]] == ["Succeeded", "Succeeded"]
    assert [s["node"] for s in status["stages"]] == ["node-cpu", "node-gpu"]
    assert status["observedGeneration"] == 1
    jobs = sorted(cluster.jobs(), key=lambda j: j["metadata"]["creationTimestamp"])
    assert len(jobs) == 2 and set(cluster.job_creations().values()) == {1}
    for job, stage in zip(jobs, ("a", "b"), strict=True):
        labels = job["metadata"]["labels"]
        assert labels["kompaktor.io/job"] == "pipe" and labels["kompaktor.io/stage"] == stage
        ref = job["metadata"]["ownerReferences"][0]
        assert ref["uid"] == owner["metadata"]["uid"] and ref["controller"] is True
    ready = {c["type"]: c for c in status["conditions"]}["Ready"]
    assert ready["status"] == "True"
    wanted = {"StageStarted", "StageSucceeded", "JobSucceeded"}
    await cluster.wait_for(  # kopf posts events in the background
        lambda: wanted <= {e["reason"] for e in cluster.emulator.live("v1/events")}, 10, "events"
    )

    metrics = await scrape(port)
    job = {"namespace": "default", "job": "pipe"}
    assert metrics["kompaktor_job_phase", frozen(job, phase="Succeeded")] == 1
    assert metrics["kompaktor_job_phase", frozen(job, phase="Running")] == 0
    cost = metrics["kompaktor_job_cost_usd", frozen(job)]
    assert cost == pytest.approx(status["costUSD"]) and cost > 0
    gpu = frozen(job, stage="b", type="prune", pool="gpu")
    assert metrics["kompaktor_stage_cost_usd", gpu] == pytest.approx(status["stages"][1]["costUSD"])
    assert metrics["kompaktor_stage_attempts", gpu] == 1


async def test_a_benchmark_runs_on_every_pool_it_names(
    fake_cluster: FakeCluster, model_file: Path
) -> None:
    """It ran on the first pool only (DESIGN: benchmark "on each pool named")."""
    cluster, _ = fake_cluster
    port = free_port()
    await cluster.start_operator(metrics_port=port)
    bench = {"name": "bench", "type": "benchmark", "pools": ["cpu", "arm"]}
    cluster.apply(optimization_job("pools", spec(model_file, prune("a", 0.3), bench)))
    status = await cluster.wait_phase("pools", ("Succeeded", "Failed"), 60)
    assert status["phase"] == "Succeeded", status
    runs = status["stages"][1]["pools"]
    assert [(r["pool"], r["node"], r["phase"]) for r in runs] == [
        ("cpu", "node-cpu", "Succeeded"),
        ("arm", "node-arm", "Succeeded"),
    ]
    stage_jobs = [
        j for j in cluster.jobs() if j["metadata"]["labels"]["kompaktor.io/stage"] == "bench"
    ]
    assert len(stage_jobs) == 2
    assert status["stages"][1]["costUSD"] == pytest.approx(sum(r["costUSD"] for r in runs))
    metrics = await scrape(port)
    job = {"namespace": "default", "job": "pools", "stage": "bench", "type": "benchmark"}
    for run in runs:
        labels = frozen(job, pool=run["pool"])
        assert metrics["kompaktor_stage_cost_usd", labels] == pytest.approx(run["costUSD"])


Labels = frozenset[tuple[str, str]]


def frozen(labels: dict[str, str], **more: str) -> Labels:
    return frozenset({**labels, **more}.items())


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


async def scrape(port: int) -> dict[tuple[str, Labels], float]:
    """The operator's /metrics over HTTP, as Prometheus would read it."""
    url = f"http://127.0.0.1:{port}/metrics"
    text = await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=10).read().decode())
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


async def test_restarts_at_every_stage_create_no_duplicate_jobs(
    fake_cluster: FakeCluster, model_file: Path
) -> None:
    cluster, kubelet = fake_cluster
    kubelet.env["FAKE_STAGE_SECONDS"] = "0.5"
    await cluster.start_operator()
    cluster.apply(
        optimization_job(
            "crashy", spec(model_file, prune("a", 0.2), prune("b", 0.4), prune("c", 0.6))
        )
    )
    for count in (1, 2, 3):
        # Kill the operator as soon as the stage's Job exists, let the pod finish while it is
        # down (the outcome must not be lost), then start a fresh operator.
        await cluster.wait_for(lambda n=count: len(kubelet.started) >= n, 60, f"job {count}")
        await cluster.kill_operator()
        name = kubelet.started[count - 1]
        await cluster.wait_for(
            lambda name=name: (
                "status" in str(cluster.emulator.get_live("batch/v1/jobs", "default", name))
                and (cluster.emulator.get_live("batch/v1/jobs", "default", name) or {})
                .get("status", {})
                .get("conditions")
            ),
            60,
            f"{name} to finish",
        )
        await cluster.start_operator()
    status = await cluster.wait_phase("crashy", ("Succeeded", "Failed"), 60)
    assert status["phase"] == "Succeeded", status
    assert cluster.job_creations() == {name: 1 for name in kubelet.started}
    assert len(kubelet.started) == 3
    assert [s["attempts"] for s in status["stages"]] == [1, 1, 1]


async def test_restart_while_a_stage_runs_adopts_its_job(
    fake_cluster: FakeCluster, model_file: Path
) -> None:
    cluster, kubelet = fake_cluster
    kubelet.env["FAKE_STAGE_SECONDS"] = "1.5"
    await cluster.start_operator()
    cluster.apply(optimization_job("adopt", spec(model_file, prune("a", 0.2))))
    await cluster.wait_for(lambda: kubelet.running, 60, "the stage pod to run")
    for _ in range(3):  # several kills while the same pod runs
        await cluster.kill_operator()
        await cluster.start_operator()
        await asyncio.sleep(0.2)
    status = await cluster.wait_phase("adopt", ("Succeeded", "Failed"), 60)
    assert status["phase"] == "Succeeded"
    assert list(cluster.job_creations().values()) == [1]


async def test_failing_stage_retries_then_fails_the_job(
    fake_cluster: FakeCluster, model_file: Path
) -> None:
    cluster, kubelet = fake_cluster
    kubelet.env["FAKE_STAGE_FAIL"] = "compress"
    await cluster.start_operator()
    failing = {"name": "squeeze", "type": "compress", "params": {"method": "lowrank"}, "retries": 2}
    cluster.apply(optimization_job("flaky", spec(model_file, prune("a", 0.2), failing)))
    status = await cluster.wait_phase("flaky", ("Succeeded", "Failed"), 60)
    assert status["phase"] == "Failed"
    stage = status["stages"][1]
    assert stage["phase"] == "Failed" and stage["attempts"] == 3
    assert "compress exploded" in stage["message"]
    degraded = {c["type"]: c for c in status["conditions"]}["Degraded"]
    assert degraded["status"] == "True" and "compress exploded" in degraded["message"]
    attempts = sorted(n for n in cluster.job_creations() if "-squeeze-" in n)
    assert [n[-2:] for n in attempts] == ["a1", "a2", "a3"]
    assert set(cluster.job_creations().values()) == {1}


async def test_a_stage_timeout_holds_the_stage_to_its_own_running_time(
    fake_cluster: FakeCluster, model_file: Path
) -> None:
    """The Job's activeDeadlineSeconds is the timeout plus a minute of slack (scheduling,
    image pull); it was all there was, so `timeout: 2s` failed after 62 s."""
    cluster, kubelet = fake_cluster
    kubelet.env["FAKE_STAGE_SECONDS"] = "120"
    await cluster.start_operator()
    slow = prune("a", 0.2, timeout="2s")
    cluster.apply(optimization_job("slow", spec(model_file, slow)))
    status = await cluster.wait_phase("slow", ("Succeeded", "Failed"), 30)
    assert status["phase"] == "Failed", status
    assert "DeadlineExceeded: ran longer than 2s" in status["stages"][0]["message"]
    await cluster.wait_for(lambda: not kubelet.running, 30, "the stage pod to be stopped")


@pytest.mark.parametrize(("reason", "attempts"), [("InvalidImageName", 1), ("ErrImagePull", 2)])
async def test_a_pod_that_cannot_start_fails_its_run_with_the_reason(
    fake_cluster: FakeCluster, model_file: Path, reason: str, attempts: int
) -> None:
    cluster, kubelet = fake_cluster
    kubelet.unpullable["kompaktor:gpu"] = reason  # the gpu pool's image
    await cluster.start_operator()
    cluster.apply(optimization_job("noimage", spec(model_file, prune("a", 0.2, pool="gpu",
                                                                     retries=1))))  # fmt: skip
    status = await cluster.wait_phase("noimage", ("Succeeded", "Failed"), 60)
    stage = status["stages"][0]
    assert status["phase"] == "Failed" and stage["attempts"] == attempts
    assert reason in stage["message"] and "kompaktor:gpu" in stage["message"]
    await cluster.wait_for(lambda: not cluster.jobs(), 10, "the stuck Jobs to be deleted")
    assert len(cluster.job_creations()) == attempts


async def test_invalid_run_is_not_retried(fake_cluster: FakeCluster, model_file: Path) -> None:
    cluster, kubelet = fake_cluster
    kubelet.env["FAKE_STAGE_INVALID"] = "prune"
    await cluster.start_operator()
    cluster.apply(optimization_job("bad", spec(model_file, prune("a", 0.2, retries=3))))
    status = await cluster.wait_phase("bad", ("Succeeded", "Failed"), 60)
    assert status["phase"] == "Failed" and status["stages"][0]["attempts"] == 1
    assert len(cluster.job_creations()) == 1


async def test_spec_edit_reruns_from_the_changed_stage(
    fake_cluster: FakeCluster, model_file: Path
) -> None:
    cluster, _ = fake_cluster
    await cluster.start_operator()
    stages = [prune("a", 0.2), prune("b", 0.4), prune("c", 0.6)]
    cluster.apply(optimization_job("edit", spec(model_file, *stages)))
    first = await cluster.wait_phase("edit", ("Succeeded",), 60)
    before = set(cluster.job_creations())
    stages[1] = prune("b", 0.45)
    cluster.edit_spec("edit", {"stages": stages})

    def rerun() -> dict[str, Any] | None:
        status = cluster.status("edit")
        done = status.get("observedGeneration") == 2 and status.get("phase") == "Succeeded"
        return status if done else None

    second = await cluster.wait_for(rerun, 60, "the edited job to finish")
    new = set(cluster.job_creations()) - before
    assert sorted(n.split("-")[1] for n in new) == ["b", "c"]
    assert second["stages"][0] == first["stages"][0]
    assert second["stages"][1]["key"] != first["stages"][1]["key"]
    assert set(cluster.job_creations().values()) == {1}


async def test_an_edit_reruns_what_reads_a_replaced_teacher_file(
    fake_cluster: FakeCluster, model_file: Path, tmp_path: Path
) -> None:
    """A teacher named by uri is keyed by its content, kept in status with the inputs' digests
    and digested again at the next edit: replaced under the same URI, it re-runs its stage
    (it used to be keyed by the URI alone, and the old output was reused)."""
    cluster, _ = fake_cluster
    await cluster.start_operator()
    teacher = tmp_path / "teacher.pt2"
    teacher.write_bytes(b"teacher one")
    distill = {"name": "d", "type": "distill", "params": {"teacher": {"uri": teacher.as_uri()}}}
    cluster.apply(optimization_job("teach", spec(model_file, distill, prune("p", 0.2))))
    first = await cluster.wait_phase("teach", ("Succeeded",), 60)
    digest = "sha256:" + hashlib.sha256(b"teacher one").hexdigest()
    assert first["modelFileDigests"] == {teacher.as_uri(): digest}
    before = set(cluster.job_creations())
    teacher.write_bytes(b"teacher two, another model")
    cluster.edit_spec("teach", {"budget": {"maxCostUSD": 100}})  # no key depends on it

    def rerun() -> dict[str, Any] | None:
        status = cluster.status("teach")
        done = status.get("observedGeneration") == 2 and status.get("phase") == "Succeeded"
        return status if done else None

    second = await cluster.wait_for(rerun, 60, "the edited job to finish")
    new = set(cluster.job_creations()) - before
    assert sorted(n.split("-")[1] for n in new) == ["d", "p"]
    assert second["stages"][0]["key"] != first["stages"][0]["key"]
    assert second["modelFileDigests"] != first["modelFileDigests"]


async def test_suspend_stops_the_running_job_and_resume_finishes(
    fake_cluster: FakeCluster, model_file: Path
) -> None:
    cluster, kubelet = fake_cluster
    kubelet.env["FAKE_STAGE_SECONDS"] = "30"
    await cluster.start_operator()
    cluster.apply(optimization_job("pause", spec(model_file, prune("a", 0.2))))
    await cluster.wait_for(lambda: kubelet.running, 60, "the stage to run")
    cluster.edit_spec("pause", {"suspend": True})
    await cluster.wait_phase("pause", ("Suspended",), 30)
    await cluster.wait_for(lambda: not cluster.jobs(), 30, "the Job to be deleted")
    await cluster.wait_for(lambda: not kubelet.running, 10, "the pod's process to be killed")
    kubelet.env["FAKE_STAGE_SECONDS"] = "0"
    cluster.edit_spec("pause", {"suspend": False})
    status = await cluster.wait_phase("pause", ("Succeeded", "Failed"), 60)
    assert status["phase"] == "Succeeded"


async def test_unknown_pool_fails_validation_naming_the_pools(
    fake_cluster: FakeCluster, model_file: Path
) -> None:
    cluster, _ = fake_cluster
    await cluster.start_operator()
    cluster.apply(optimization_job("nopool", spec(model_file, prune("a", 0.2, pool="tpu"))))
    status = await cluster.wait_phase("nopool", ("Failed",), 30)
    assert "unknown pool 'tpu'" in status["message"]
    assert "known pools: cpu, gpu, arm" in status["message"]
    assert not cluster.jobs()


async def test_deletion_collects_jobs_and_optionally_artifacts(
    fake_cluster: FakeCluster, model_file: Path, tmp_path: Path
) -> None:
    cluster, _ = fake_cluster
    await cluster.start_operator()
    for name, delete in (("keep", False), ("wipe", True)):
        cluster.apply(
            optimization_job(
                name, spec(model_file, prune("a", 0.2), artifacts={"deleteOnJobDeletion": delete})
            )
        )
    for name in ("keep", "wipe"):
        await cluster.wait_phase(name, ("Succeeded",), 60)
    store = tmp_path / "store" / "default"
    assert any((store / "keep").rglob("result.json")) and any((store / "wipe").rglob("result.json"))
    for name in ("keep", "wipe"):
        cluster.emulator.remove(cluster.oj, "default", name)
    await cluster.wait_for(
        lambda: (
            cluster.emulator.get_live(cluster.oj, "default", "wipe") is None
            and cluster.emulator.get_live(cluster.oj, "default", "keep") is None
        ),
        30,
        "both jobs to be deleted (finalizers released)",
    )
    assert not cluster.jobs()
    assert not cluster.emulator.live("v1/pods")
    assert any((store / "keep").rglob("result.json"))
    assert not any((store / "wipe").rglob("result.json"))


async def test_hpo_trials_run_as_parallel_jobs_and_survive_a_restart(
    fake_cluster: FakeCluster, model_file: Path
) -> None:
    cluster, kubelet = fake_cluster
    kubelet.env["FAKE_STAGE_SECONDS"] = "1"
    await cluster.start_operator()
    hpo = {
        "name": "tune",
        "type": "hpo",
        "params": {
            "target": "prune",
            "sampler": "random",
            "trials": 4,
            "parallelism": 2,
            "space": {"sparsity": {"low": 0.1, "high": 0.9}},
        },
    }
    cluster.apply(optimization_job("study", spec(model_file, hpo)))
    await cluster.wait_for(lambda: len(kubelet.running) >= 2, 60, "two trials at once")
    trials = {j["metadata"]["labels"].get("kompaktor.io/trial") for j in cluster.jobs()}
    assert len(trials) == 2 and None not in trials
    await cluster.kill_operator()
    await cluster.start_operator()
    status = await cluster.wait_phase("study", ("Succeeded", "Failed"), 90)
    assert status["phase"] == "Succeeded", status
    assert len(status["trials"]) == 4
    assert all(t["state"] == "Complete" for t in status["trials"])
    assert len(cluster.job_creations()) == 4
    assert set(cluster.job_creations().values()) == {1}


async def test_two_replicas_only_the_leader_acts_and_a_standby_takes_over(
    fake_cluster: FakeCluster, model_file: Path
) -> None:
    cluster, kubelet = fake_cluster
    kubelet.env["FAKE_STAGE_SECONDS"] = "1"
    cluster.emulator.create(
        "kopf.dev/v1/clusterkopfpeerings",
        {"apiVersion": "kopf.dev/v1", "kind": "ClusterKopfPeering",
         "metadata": {"name": "kompaktor"}},
    )  # fmt: skip
    leader = await cluster.start_operator(standalone=False, priority=100)
    standby = await cluster.start_operator(standalone=False, priority=10)
    # kopf logs "Pausing operations" when it decides, and closes the watch-streams a moment later;
    # a job applied in between reaches the standby too, so wait until every stream is paused.
    paused = [
        f"Pausing the watch-stream for {kind}" for kind in ("optimizationjobs", "jobs", "pods")
    ]
    await cluster.wait_for(
        lambda: all(line in standby.log_tail(1 << 20) for line in paused),
        30,
        "the standby to pause",
    )
    cluster.apply(
        optimization_job("ha", spec(model_file, prune("a", 0.2), prune("b", 0.4), prune("c", 0.6)))
    )
    await cluster.wait_for(lambda: len(kubelet.started) >= 2, 60, "the second stage to start")
    await leader.kill()
    handover = len(cluster.emulator.writes)
    status = await cluster.wait_phase("ha", ("Succeeded", "Failed"), 90)
    assert status["phase"] == "Succeeded", status
    assert set(cluster.job_creations().values()) == {1} and len(kubelet.started) == 3

    def actors(writes: list[tuple[str, str, str]]) -> set[str]:
        acting = ("/jobs", "/optimizationjobs/")
        return {token for token, _, path in writes if any(p in path for p in acting)}

    # kopf takes a peer for dead once its record is older than the lifetime (6 s, renewed every
    # second), so this holds unless a replica or the API stalls for ~5 s; if it ever fails, the
    # message says which writes and whether the standby logged a resume.
    early = [w for w in cluster.emulator.writes[:handover] if w[0] != leader.token]
    peering = [line for line in standby.log_tail(1 << 20).splitlines() if "operations" in line]
    assert actors(cluster.emulator.writes[:handover]) == {leader.token}, (early[:4], peering)
    assert actors(cluster.emulator.writes[handover:]) == {standby.token}


async def test_kopf_run_starts_the_same_operator(
    fake_cluster: FakeCluster, model_file: Path, tmp_path: Path
) -> None:
    """`kopf run -m kompaktor.controller` (kopf's own CLI) registers the same handlers; the
    configuration comes from $KOMPAKTOR_CONFIG, as in the chart."""
    cluster, _ = fake_cluster
    log = (tmp_path / "kopf-run.log").open("wb")
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "kopf", "run", "-m", "kompaktor.controller", "--standalone",
        stdout=log, stderr=asyncio.subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    try:
        cluster.apply(optimization_job("via-kopf", spec(model_file, prune("a", 0.3, pool="arm"))))
        status = await cluster.wait_phase("via-kopf", ("Succeeded", "Failed"), 60)
        assert status["phase"] == "Succeeded", (tmp_path / "kopf-run.log").read_text()[-3000:]
        assert status["stages"][0]["node"] == "node-arm"
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        await process.wait()
        log.close()
