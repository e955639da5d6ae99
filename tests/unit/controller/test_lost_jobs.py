"""A stage's Job deleted by someone else while it ran: `observe` reports the run failed
(StageJobLost, retryable) with the time it ran, instead of letting the pass recreate the Job."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from kompaktor.api.status import OptimizationJobStatus, StageStatus
from kompaktor.controller.reconciler import observe
from kompaktor.executors import kubernetes as k8s
from kompaktor.plan import RunFailed
from kompaktor.plan.keys import run_id

NOW = datetime(2026, 11, 23, 12, 10, 0, tzinfo=UTC)
KEY = "0123456789abcdef"
RID = run_id("prune", KEY, 2)
JOB = k8s.job_name("demo", RID)


def status(**run: Any) -> OptimizationJobStatus:
    stage = StageStatus(name="prune", type="prune", phase="Running", key=KEY, attempts=2, **run)
    return OptimizationJobStatus(phase="Running", stages=[stage])


def job(**meta: Any) -> dict[str, Any]:
    return {
        "metadata": {
            "name": JOB,
            "labels": {k8s.LABEL_STAGE: "prune"},
            "annotations": {k8s.ANNOTATION_RUN: RID},
            **meta,
        },
        "status": {"active": 1},
    }


def pod(started: str) -> dict[str, Any]:
    running = {"running": {"startedAt": started}}
    return {
        "metadata": {"name": f"{JOB}-x", "annotations": {k8s.ANNOTATION_RUN: RID}},
        "spec": {"nodeName": "node-1"},
        "status": {"phase": "Running", "containerStatuses": [{"name": "stage", "state": running}]},
    }


def seen(state: OptimizationJobStatus, jobs: list[Any], pods: list[Any]) -> list[Any]:
    return observe(state, jobs, pods, NOW, 600.0, "demo")


def test_a_placed_run_whose_job_is_gone_failed_retryably_naming_stage_and_job() -> None:
    (found,) = seen(status(node="node-1", attempt_start_time="2026-11-23T12:00:00Z"), [], [])
    assert isinstance(found, RunFailed) and found.run_id == RID
    assert (found.reason, found.retryable) == ("StageJobLost", True)
    assert found.message == f"Job {JOB} of stage prune was deleted before its run ended"
    assert found.duration_seconds == 600.0  # paid since it was placed: its pods went too


def test_a_pod_left_behind_says_how_long_it_ran() -> None:
    state = status(node="node-1", attempt_start_time="2026-11-23T12:00:00Z")
    (found,) = seen(state, [], [pod("2026-11-23T12:05:00Z")])
    assert found.reason == "StageJobLost" and found.duration_seconds == 300.0


def test_a_job_being_deleted_before_it_finished_is_lost_too() -> None:
    deleting = job(deletionTimestamp="2026-11-23T12:09:00Z")
    (found,) = seen(status(node="node-1"), [deleting], [pod("2026-11-23T12:08:00Z")])
    assert found.reason == "StageJobLost" and found.duration_seconds == 120.0
    assert f"Job {JOB} of stage prune" in found.message


def test_a_run_not_placed_yet_may_still_be_getting_its_job() -> None:
    """The status is written before the Job is created: a pass that failed in between must
    not turn into a failed attempt."""
    assert seen(status(), [], []) == []


def test_a_listed_job_is_not_lost() -> None:
    assert seen(status(node="node-1"), [job()], [pod("2026-11-23T12:08:00Z")]) == []
