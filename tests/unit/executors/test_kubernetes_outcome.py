"""Why a stage's Job failed, from plain Job and pod dicts: the pod's own reason first."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from kompaktor.executors.kubernetes import ANNOTATION_RUN, outcome, ran_seconds, stuck
from kompaktor.plan import RunFailed

JOB = "digits-prune-0123456789-a1"
BACKOFF = {"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded",
           "message": "Job has reached the specified backoff limit"}  # fmt: skip
DEADLINE = {"type": "Failed", "status": "True", "reason": "DeadlineExceeded",
            "message": "Job was active longer than specified deadline"}  # fmt: skip
TRACEBACK = "\n".join(
    [
        "epoch 1/4 loss 0.91",
        "Traceback (most recent call last):",
        '  File "/app/kompaktor/stages/prune.py", line 80, in run',
        "ValueError: sparsity must be below 1",
    ]
)


def job(*conditions: dict[str, Any], created: str = "2026-01-01T00:00:00Z", **status: Any) -> Any:
    return {
        "metadata": {
            "name": JOB,
            "creationTimestamp": created,
            "annotations": {ANNOTATION_RUN: "run-1"},
        },
        "status": {**status, "conditions": list(conditions)},
    }


def pod(
    name: str = f"{JOB}-x7k2p",
    *,
    created: str = "2026-01-01T00:00:01Z",
    phase: str = "Failed",
    reason: str | None = None,
    message: str | None = None,
    terminated: dict[str, Any] | None = None,
) -> Any:
    status: dict[str, Any] = {"phase": phase}
    if reason:
        status["reason"] = reason
    if message:
        status["message"] = message
    state = {"terminated": terminated} if terminated is not None else {"waiting": {}}
    status["containerStatuses"] = [{"name": "stage", "state": state}]
    return {"metadata": {"name": name, "creationTimestamp": created}, "status": status}


def failed(job_obj: Any, pods: list[Any]) -> RunFailed:
    found = outcome(job_obj, pods)
    assert isinstance(found, RunFailed), found
    assert found.run_id == "run-1"
    return found


def test_oom_killed_names_the_container_reason_and_exit_code() -> None:
    log = "epoch 1/4 loss 0.91\nepoch 2/4 loss 0.52"
    killed = pod(terminated={"exitCode": 137, "reason": "OOMKilled", "message": log})
    found = failed(job(BACKOFF, failed=1), [killed])
    assert found.reason == "OOMKilled"
    assert "exit code 137" in found.message and f"pod {JOB}-x7k2p" in found.message
    assert "epoch 2/4 loss 0.52" in found.message
    assert "BackoffLimitExceeded" not in found.message
    assert found.retryable is True


def test_evicted_pod_keeps_the_kubelet_message() -> None:
    evicted = pod(
        reason="Evicted",
        message="The node was low on resource: memory. Threshold quantity: 100Mi.",
        terminated={"exitCode": 137, "reason": "Error"},
    )
    found = failed(job(BACKOFF, failed=1), [evicted])
    assert found.reason == "Evicted"
    assert "The node was low on resource: memory" in found.message
    assert f"pod {JOB}-x7k2p" in found.message and "exit code 137" in found.message
    assert found.retryable is True


def test_deleted_pod_reports_the_container_status() -> None:
    gone = pod(terminated={"exitCode": 137, "reason": "ContainerStatusUnknown",
                           "message": "The container could not be located"})  # fmt: skip
    found = failed(job(BACKOFF, failed=1), [gone])
    assert found.reason == "ContainerStatusUnknown"
    assert "exit code 137" in found.message and "could not be located" in found.message


def test_crash_without_a_termination_message_is_a_stage_crash_with_its_exit_code() -> None:
    # FallbackToLogsOnError: the log's tail stands in for the missing termination message.
    crashed = pod(terminated={"exitCode": 1, "reason": "Error", "message": TRACEBACK})
    found = failed(job(BACKOFF, failed=1), [crashed])
    assert found.reason == "StageCrashed"
    assert found.message.startswith("exit code 1 ")
    assert f"pod {JOB}-x7k2p" in found.message
    assert found.message.endswith("ValueError: sparsity must be below 1")
    assert "epoch 1/4" not in found.message  # the last three lines only
    assert found.retryable is True


def test_crash_with_an_empty_log_still_says_its_exit_code() -> None:
    crashed = pod(terminated={"exitCode": 1, "reason": "Error"})
    found = failed(job(BACKOFF, failed=1), [crashed])
    assert found.reason == "StageCrashed"
    assert found.message == f"exit code 1 (pod {JOB}-x7k2p)"


def test_invalid_exit_code_is_not_retried() -> None:
    crashed = pod(terminated={"exitCode": 2, "reason": "Error", "message": "bad params"})
    found = failed(job(BACKOFF, failed=1), [crashed])
    assert found.reason == "StageCrashed" and found.retryable is False


def test_run_failure_in_the_termination_message_wins() -> None:
    failure = {"type": "RunFailure", "reason": "InputMissing",
               "message": "s3://b/in.pt2 does not exist", "retryable": False}  # fmt: skip
    ended = pod(terminated={"exitCode": 1, "reason": "Error", "message": json.dumps(failure)})
    found = failed(job(BACKOFF, failed=1), [ended])
    assert (found.reason, found.message) == ("InputMissing", "s3://b/in.pt2 does not exist")
    assert found.retryable is False


def test_deadline_with_no_pod_says_deadline_and_names_the_job() -> None:
    found = failed(job(DEADLINE, failed=1), [])
    assert found.reason == "DeadlineExceeded"
    assert "Job was active longer than specified deadline" in found.message
    assert f"Job {JOB}" in found.message
    assert found.retryable is True


def test_deadline_before_the_pod_ran_names_the_pending_pod() -> None:
    pending = pod(phase="Pending")
    found = failed(job(DEADLINE, failed=1), [pending])
    assert found.reason == "DeadlineExceeded"
    assert f"pod {JOB}-x7k2p" in found.message


def test_deadline_that_killed_the_pod_stays_a_deadline() -> None:
    killed = pod(terminated={"exitCode": 137, "reason": "Error", "message": "epoch 3/4"})
    found = failed(job(DEADLINE, failed=1), [killed])
    assert found.reason == "DeadlineExceeded"
    assert "exit code 137" in found.message and "epoch 3/4" in found.message


def test_with_several_pods_the_newest_terminated_one_speaks() -> None:
    older = pod(f"{JOB}-aaaaa", created="2026-01-01T00:00:01Z",
                terminated={"exitCode": 137, "reason": "OOMKilled"})  # fmt: skip
    newer = pod(f"{JOB}-bbbbb", created="2026-01-01T00:05:00Z",
                terminated={"exitCode": 1, "reason": "Error", "message": TRACEBACK})  # fmt: skip
    newest = pod(f"{JOB}-ccccc", created="2026-01-01T00:09:00Z", phase="Pending")
    found = failed(job(BACKOFF, failed=2), [newer, older, newest])
    assert found.reason == "StageCrashed"
    assert f"pod {JOB}-bbbbb" in found.message and "ValueError" in found.message


# ------------------------------------------------------------------ Jobs that make no pod

QUOTA = {"type": "ReplicaFailure", "status": "True", "reason": "FailedCreate",
         "message": 'pods "x" is forbidden: exceeded quota: compute'}  # fmt: skip


def at(seconds: int) -> datetime:
    return datetime(2026, 1, 1, tzinfo=UTC) + timedelta(seconds=seconds)


def test_a_job_without_pods_past_the_timeout_fails_with_no_pod() -> None:
    found = stuck(job(QUOTA), [], at(90), timeout=60)
    assert found is not None and found.run_id == "run-1"
    assert found.reason == "NoPod" and found.retryable is True
    assert found.message.startswith(f"Job {JOB} created no pod in 60s")
    assert "exceeded quota: compute" in found.message


def test_a_job_without_pods_and_without_conditions_says_so() -> None:
    found = stuck(job(), [], at(90), timeout=60)
    assert found is not None and found.message == f"Job {JOB} created no pod in 60s"


@pytest.mark.parametrize(
    ("job_obj", "seconds"),
    [
        (job(QUOTA), 30),  # before the timeout
        (job(active=1), 90),  # a pod the list has not caught up with
        (job(failed=1), 90),  # finished: `outcome` speaks
        (job({"type": "FailureTarget", "status": "True", "reason": "DeadlineExceeded"}), 90),
        (dict(job(), spec={"suspend": True}), 90),
    ],
)
def test_a_job_without_pods_is_not_stuck_yet(job_obj: Any, seconds: int) -> None:
    assert stuck(job_obj, [], at(seconds), timeout=60) is None


def test_a_failed_attempt_is_timed_from_its_container() -> None:
    """Failed attempts are paid for by the time their container ran (it was 0: free)."""
    ended = {"exitCode": 1, "reason": "Error", "startedAt": "2026-01-01T00:00:05Z",
             "finishedAt": "2026-01-01T00:01:45Z"}  # fmt: skip
    assert ran_seconds([pod(terminated=ended)], at(600)) == 100.0
    running = pod(phase="Running")
    running["status"]["containerStatuses"][0]["state"] = {
        "running": {"startedAt": "2026-01-01T00:00:10Z"}
    }
    assert ran_seconds([running], at(70)) == 60.0
    assert ran_seconds([pod(phase="Pending")], at(70)) == 0.0
    assert ran_seconds([], at(70)) == 0.0
