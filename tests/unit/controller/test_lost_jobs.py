"""A stage's or HPO trial's Job deleted by someone else while it ran: `observe` reports the run
failed (StageJobLost, retryable) with the time it ran, instead of letting the pass recreate the
Job; and it reports each Job's uid once, so that a Job deleted before its pod got a node is told
apart from one not created yet."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from kompaktor.api.status import OptimizationJobStatus, StageStatus, TrialRecord
from kompaktor.controller.reconciler import observe
from kompaktor.executors import kubernetes as k8s
from kompaktor.plan import RunFailed, RunStarted
from kompaktor.plan.keys import run_id

NOW = datetime(2026, 11, 23, 12, 10, 0, tzinfo=UTC)
KEY = "0123456789abcdef"
RID = run_id("prune", KEY, 2)
JOB = k8s.job_name("demo", RID)
UID = "3f1c9a2e-0000-4000-8000-000000000001"
PLACED = "2026-11-23T12:00:00Z"


def status(**run: Any) -> OptimizationJobStatus:
    stage = StageStatus(name="prune", type="prune", phase="Running", key=KEY, attempts=2, **run)
    return OptimizationJobStatus(phase="Running", stages=[stage])


def job(**meta: Any) -> dict[str, Any]:
    return {
        "metadata": {
            "name": JOB,
            "uid": UID,
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


def placed(**run: Any) -> OptimizationJobStatus:
    """A run whose Job a pass saw, and whose pod it saw placed at PLACED."""
    return status(node="node-1", attempt_start_time=PLACED, job_uid=UID, **run)


def test_a_placed_run_whose_job_is_gone_failed_retryably_naming_stage_and_job() -> None:
    (found,) = seen(placed(), [], [])
    assert isinstance(found, RunFailed) and found.run_id == RID
    assert (found.reason, found.retryable) == ("StageJobLost", True)
    assert found.message == f"Job {JOB} of stage prune was deleted before its run ended"
    assert found.duration_seconds == 600.0  # paid since it was placed: its pods went too


def test_a_pod_left_behind_says_how_long_it_ran() -> None:
    (found,) = seen(placed(), [], [pod("2026-11-23T12:05:00Z")])
    assert found.reason == "StageJobLost" and found.duration_seconds == 300.0


def test_a_job_being_deleted_before_it_finished_is_lost_too() -> None:
    deleting = job(deletionTimestamp="2026-11-23T12:09:00Z")
    (found,) = seen(placed(), [deleting], [pod("2026-11-23T12:08:00Z")])
    assert found.reason == "StageJobLost" and found.duration_seconds == 120.0
    assert f"Job {JOB} of stage prune" in found.message


def test_a_run_whose_job_no_pass_saw_may_still_be_getting_it() -> None:
    """The status is written before the Job is created: a pass that failed in between must
    not turn into a failed attempt."""
    assert seen(status(), [], []) == []


def test_a_job_deleted_before_its_pod_got_a_node_is_lost_once_it_was_seen() -> None:
    """It was recreated without notice: only a node in status said the Job had existed."""
    (found,) = seen(status(job_uid=UID), [], [])
    assert (found.reason, found.run_id, found.duration_seconds) == ("StageJobLost", RID, 0.0)


def test_the_first_pass_to_see_a_job_reports_its_uid_and_then_its_node() -> None:
    assert seen(status(), [job()], []) == [RunStarted(RID, job_uid=UID)]
    assert seen(status(job_uid=UID), [job()], []) == []  # nothing new
    running = [pod("2026-11-23T12:08:00Z")]
    assert seen(status(job_uid=UID), [job()], running) == [
        RunStarted(RID, node="node-1", job_uid=UID)
    ]
    assert seen(placed(), [job()], running) == []


def test_a_listed_job_is_not_lost() -> None:
    assert seen(placed(), [job()], [pod("2026-11-23T12:08:00Z")]) == []


TRIAL_RID = run_id("tune", KEY, 1, 3)


def trial_status(**trial: Any) -> OptimizationJobStatus:
    stage = StageStatus(name="tune", type="hpo", phase="Running", key="f" * 16, attempts=1)
    running = TrialRecord(stage="tune", number=3, params={}, state="Running", key=KEY, attempts=1)
    return OptimizationJobStatus(
        phase="Running", stages=[stage], trials=[running.model_copy(update=trial)]
    )


def test_a_trial_whose_job_is_gone_failed_naming_stage_and_trial_number() -> None:
    """HPO trial Jobs deleted by hand were recreated silently."""
    (found,) = seen(trial_status(job_uid=UID, attempt_start_time=PLACED), [], [])
    assert isinstance(found, RunFailed) and found.run_id == TRIAL_RID
    assert (found.reason, found.retryable) == ("StageJobLost", True)
    name = k8s.job_name("demo", TRIAL_RID)
    assert found.message == f"Job {name} of trial 3 of stage tune was deleted before its run ended"
    assert found.duration_seconds == 600.0


def test_a_trial_reports_its_job_and_placement_and_is_not_lost_before() -> None:
    trial_job = job()
    trial_job["metadata"] |= {"annotations": {k8s.ANNOTATION_RUN: TRIAL_RID}}
    assert seen(trial_status(), [], []) == []
    assert seen(trial_status(), [trial_job], []) == [RunStarted(TRIAL_RID, job_uid=UID)]


def test_a_trial_job_being_deleted_names_the_trial_by_its_label() -> None:
    going = job(deletionTimestamp="2026-11-23T12:09:00Z")
    going["metadata"] |= {
        "annotations": {k8s.ANNOTATION_RUN: TRIAL_RID},
        "labels": {k8s.LABEL_STAGE: "tune", k8s.LABEL_TRIAL: "3"},
    }
    (found,) = seen(trial_status(job_uid=UID, attempt_start_time=PLACED), [going], [])
    assert found.reason == "StageJobLost" and found.duration_seconds == 600.0
    assert found.message.startswith(f"Job {JOB} of trial 3 of stage tune was deleted")
