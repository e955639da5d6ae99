"""Stage runs as batch/v1 Jobs: the manifest from a RunRequest, and outcomes back from a Job.

Pure functions over plain dicts (no API calls), so the controller stays thin and the mapping is
testable without a cluster. A Job's name is derived from the run id alone, which makes creation
idempotent: after a restart, creating the same run again answers 409 and the Job is adopted.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from kompaktor.api.run import EXIT_INVALID, RESULT_FILE, RunFailure, RunRecord
from kompaktor.api.spec import API_VERSION, KIND
from kompaktor.artifacts import open_store
from kompaktor.config import OperatorConfig
from kompaktor.errors import KompaktorError
from kompaktor.executors.pods import CONTAINER, pod_spec
from kompaktor.plan import Observation, RunFailed, RunRequest, RunStarted, RunSucceeded
from kompaktor.plan.clock import parse_iso

MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_JOB = "kompaktor.io/job"
LABEL_STAGE = "kompaktor.io/stage"
LABEL_TRIAL = "kompaktor.io/trial"
LABEL_POOL = "kompaktor.io/pool"
ANNOTATION_RUN = "kompaktor.io/run-id"
ANNOTATION_OUTPUT = "kompaktor.io/output"
#: The stage's timeout, which the operator holds the stage container's running time to.
ANNOTATION_TIMEOUT = "kompaktor.io/timeout-seconds"
MAX_NAME = 63
#: Extra seconds over a stage's timeout before Kubernetes kills its pod (image pull, start):
#: a backstop; the operator fails the run when the container itself has run too long.
DEADLINE_SLACK_SECONDS = 60

Obj = Mapping[str, Any]


def job_name(job: str, run_id: str) -> str:
    """`<job>-<run id>` as a DNS label; a long one keeps its start and gains a hash suffix."""
    name = re.sub(r"[^a-z0-9-]+", "-", f"{job}-{run_id}".lower()).strip("-")
    if len(name) <= MAX_NAME:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    return f"{name[: MAX_NAME - 9].rstrip('-')}-{digest}"


def label_value(value: str) -> str:
    """Label values are at most 63 characters of [A-Za-z0-9._-]."""
    clean = re.sub(r"[^A-Za-z0-9._-]+", "-", value).strip("-._")
    return clean[:MAX_NAME].rstrip("-._")


def child_selector(job: str) -> str:
    return f"{MANAGED_BY}=kompaktor,{LABEL_JOB}={label_value(job)}"


def job_manifest(
    request: RunRequest, owner: Obj, config: OperatorConfig, *, namespace: str
) -> dict[str, Any]:
    """The batch/v1 Job for one run, owned by its OptimizationJob (so deletion cascades)."""
    pool = config.pool(request.pool)
    labels = {
        MANAGED_BY: "kompaktor",
        LABEL_JOB: label_value(request.job),
        LABEL_STAGE: label_value(request.stage),
        LABEL_POOL: label_value(pool.name),
    }
    if request.trial is not None:
        labels[LABEL_TRIAL] = str(request.trial)
    annotations = {ANNOTATION_RUN: request.run_id, ANNOTATION_OUTPUT: request.output_uri}
    if request.timeout_seconds is not None:
        annotations[ANNOTATION_TIMEOUT] = f"{request.timeout_seconds:g}"
    spec: dict[str, Any] = {
        "backoffLimit": 0,
        "template": {
            "metadata": {"labels": dict(labels), "annotations": dict(annotations)},
            "spec": pod_spec(request, pool, config),
        },
    }
    if request.timeout_seconds is not None:
        spec["activeDeadlineSeconds"] = int(request.timeout_seconds) + DEADLINE_SLACK_SECONDS
    if config.ttl_seconds_after_finished is not None:
        spec["ttlSecondsAfterFinished"] = config.ttl_seconds_after_finished
    meta = owner["metadata"]
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": job_name(request.job, request.run_id),
            "namespace": namespace,
            "labels": labels,
            "annotations": annotations,
            "ownerReferences": [
                {
                    "apiVersion": API_VERSION,
                    "kind": KIND,
                    "name": meta["name"],
                    "uid": meta["uid"],
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
        },
        "spec": spec,
    }


# ------------------------------------------------------------------------------ outcomes


def run_id_of(obj: Obj) -> str | None:
    value = (obj.get("metadata", {}).get("annotations") or {}).get(ANNOTATION_RUN)
    return str(value) if value else None


def _condition(job: Obj, kind: str) -> Obj | None:
    for cond in job.get("status", {}).get("conditions") or []:
        if cond.get("type") == kind and cond.get("status") == "True":
            return dict(cond)
    return None


def finished(job: Obj) -> bool:
    status = job.get("status", {})
    return bool(
        _condition(job, "Complete")
        or _condition(job, "Failed")
        or status.get("succeeded")
        or status.get("failed")
    )


def _terminated_state(pod: Obj) -> Obj | None:
    """The stage container's terminated state (or any container's) in `pod`, if it ended."""
    found: Obj | None = None
    for status in pod.get("status", {}).get("containerStatuses") or []:
        terminated = (status.get("state") or {}).get("terminated")
        if terminated and (found is None or status.get("name") == CONTAINER):
            found = dict(terminated)
    return found


def _ended(pod: Obj) -> bool:
    phase = pod.get("status", {}).get("phase")
    return phase in ("Succeeded", "Failed") or _terminated_state(pod) is not None


def _last_pod(pods: Sequence[Obj]) -> Obj | None:
    """The pod that says how the run ended: the newest one that terminated, else the newest.

    A Job may leave several pods (a retry after an eviction, a replaced pod): the newest by
    creation time, later in the list on a tie."""
    if not pods:
        return None
    oldest = datetime.min.replace(tzinfo=UTC)
    ranked = sorted(enumerate(pods), key=lambda item: (_created(item[1], oldest), item[0]))
    ended = [pod for _, pod in ranked if _ended(pod)]
    return ended[-1] if ended else ranked[-1][1]


def _terminated(pods: Sequence[Obj]) -> Obj | None:
    """The last pod's terminated container state (see `_last_pod`)."""
    pod = _last_pod(pods)
    return _terminated_state(pod) if pod is not None else None


def started(job: Obj, pods: Sequence[Obj]) -> RunStarted | None:
    """What the run's Job says of it: its uid (the Job exists), and where its pod was
    scheduled, if it was (for status and cost)."""
    rid = run_id_of(job)
    if rid is None:
        return None
    uid = job.get("metadata", {}).get("uid")
    seen = RunStarted(rid, job_uid=str(uid) if uid else None)
    for pod in pods:
        node = pod.get("spec", {}).get("nodeName")
        if node:
            pool = (pod.get("metadata", {}).get("labels") or {}).get(LABEL_POOL)
            return replace(seen, node=node, pool=pool)
    return seen


def outcome(job: Obj, pods: Sequence[Obj]) -> Observation | None:
    """What a finished Job says: the record from its termination message, or why it failed.

    The message holds the run's summary (≤ 4 KB); when it is missing or cut, result.json in
    the store is the full record.
    """
    rid = run_id_of(job)
    if rid is None or not finished(job):
        return None
    terminated = _terminated(pods) or {}
    message = str(terminated.get("message") or "")
    if _condition(job, "Complete") or (job.get("status", {}).get("succeeded") and not
                                       _condition(job, "Failed")):  # fmt: skip
        return _succeeded(rid, message, job)
    try:
        failure = RunFailure.model_validate_json(message)
        return RunFailed(rid, failure.reason, failure.message, failure.retryable)
    except (ValidationError, ValueError):
        pass
    return _failed(rid, job, _last_pod(pods), terminated, message)


#: Container reasons that say no more than "it exited": the exit code says the rest.
GENERIC_TERMINATED = frozenset({"Error", "Completed"})


def _failed(rid: str, job: Obj, pod: Obj | None, terminated: Obj, message: str) -> RunFailed:
    """Why a Job failed, most specific first: the pod's own reason (Evicted), the container's
    (OOMKilled, ContainerStatusUnknown), its exit code; the Job's condition (BackoffLimitExceeded
    and the like only summarise) only when no pod says, or when the deadline killed the pod."""
    failed = _condition(job, "Failed") or {}
    tail = " | ".join(message.strip().splitlines()[-3:])
    code = terminated.get("exitCode")
    exit_text = f"exit code {code}" if code is not None else ""
    pod_status = pod.get("status", {}) if pod is not None else {}
    pod_reason = str(pod_status.get("reason") or "")
    container_reason = str(terminated.get("reason") or "")
    if container_reason in GENERIC_TERMINATED:
        container_reason = ""
    job_reason = str(failed.get("reason") or "JobFailed")
    job_message = str(failed.get("message") or "the Job failed")
    where = f"pod {_name(pod)}" if pod is not None else f"Job {_name(job)}, no pod left"
    if pod_reason:
        head = str(pod_status.get("message") or f"the pod failed: {pod_reason}").strip()
        context = ", ".join(part for part in (where, exit_text) if part)
        return RunFailed(rid, pod_reason, _join(f"{head} ({context})", tail))
    if container_reason:
        text = _join(f"{exit_text or 'no exit code'} ({where})", tail)
        return RunFailed(rid, container_reason, text, retryable=code != EXIT_INVALID)
    if code is not None and job_reason != "DeadlineExceeded":
        return RunFailed(rid, "StageCrashed", _join(f"{exit_text} ({where})", tail),
                         retryable=code != EXIT_INVALID)  # fmt: skip
    # No pod, a pod that never ended, or a pod the deadline killed: the Job's own word.
    context = ", ".join(part for part in (where, exit_text) if part)
    return RunFailed(rid, job_reason, _join(f"{job_message} ({context})", tail),
                     retryable=code != EXIT_INVALID)  # fmt: skip


def _join(head: str, tail: str) -> str:
    return f"{head}: {tail}" if tail else head


#: Waiting reasons no amount of waiting fixes.
HOPELESS_WAITING = frozenset({"InvalidImageName", "ErrImageNeverPull"})
#: Waiting reasons that may clear (a registry hiccup, a Secret created late), up to a limit.
SLOW_WAITING = frozenset(
    {"ImagePullBackOff", "ErrImagePull", "CreateContainerConfigError", "CreateContainerError"}
)


def _stage_state(pod: Obj | None) -> Obj:
    """The stage container's state (`running`, `terminated`, `waiting`), {} if not reported."""
    for container in (pod or {}).get("status", {}).get("containerStatuses") or []:
        if container.get("name") == CONTAINER:
            return dict(container.get("state") or {})
    return {}


def _timeout(job: Obj) -> float | None:
    limit = (job.get("metadata", {}).get("annotations") or {}).get(ANNOTATION_TIMEOUT)
    return None if limit is None else float(limit)


def ran_seconds(pods: Sequence[Obj], now: datetime) -> float:
    """How long the run's stage container ran (so far, while it runs); 0 if it never started."""
    state = _stage_state(_last_pod(pods))
    span = state.get("terminated") or state.get("running") or {}
    if not span.get("startedAt"):
        return 0.0
    end = parse_iso(str(span["finishedAt"])) if span.get("finishedAt") else now
    return max((end - parse_iso(str(span["startedAt"]))).total_seconds(), 0.0)


def time_left(job: Obj, pods: Sequence[Obj], now: datetime) -> float | None:
    """Seconds until the running stage container reaches the stage's timeout (≤ 0: it has);
    None without a timeout or a running container. The timeout counts the stage's own time,
    as `kompaktor run` does, not the pod's scheduling and image pull."""
    limit = _timeout(job)
    if limit is None:
        return None
    for pod in pods:
        running = _stage_state(pod).get("running") or {}
        if running.get("startedAt"):
            return limit - (now - parse_iso(str(running["startedAt"]))).total_seconds()
    return None


def overran(job: Obj, pods: Sequence[Obj], now: datetime) -> RunFailed | None:
    """A run whose stage container has run longer than the stage's timeout."""
    rid, limit, left = run_id_of(job), _timeout(job), time_left(job, pods, now)
    if rid is None or limit is None or left is None or left > 0 or finished(job):
        return None
    return RunFailed(rid, "DeadlineExceeded", f"ran longer than {limit:.0f}s ({_name(job)})")


def stuck(job: Obj, pods: Sequence[Obj], now: datetime, timeout: float) -> RunFailed | None:
    """A run whose pod cannot start: a bad image at once, a missing image, Secret or node after
    `timeout` seconds; a Job that made no pod in `timeout` seconds (a ResourceQuota, Pod Security
    admission: the Job controller retries FailedCreate for ever). Kubernetes itself would wait
    until the Job's deadline, or for ever."""
    rid = run_id_of(job)
    if rid is None or finished(job):
        return None
    if not pods:
        return _no_pod(rid, job, now, timeout)
    for pod in pods:
        waited = (now - _created(pod, now)).total_seconds()
        for container in pod.get("status", {}).get("containerStatuses") or []:
            waiting = (container.get("state") or {}).get("waiting") or {}
            reason = str(waiting.get("reason") or "")
            if reason in HOPELESS_WAITING or (reason in SLOW_WAITING and waited > timeout):
                detail = waiting.get("message") or "the container cannot start"
                return RunFailed(rid, reason, f"pod {_name(pod)}: {reason}: {detail}",
                                 retryable=reason not in HOPELESS_WAITING)  # fmt: skip
        for condition in pod.get("status", {}).get("conditions") or []:
            unschedulable = condition.get("type") == "PodScheduled" and (
                condition.get("reason") == "Unschedulable"
            )
            if unschedulable and condition.get("status") == "False" and waited > timeout:
                detail = condition.get("message") or "no node fits"
                return RunFailed(rid, "Unschedulable", f"pod {_name(pod)}: {detail}")
    return None


#: The reason of a run whose Job someone deleted before it ended (the operator deletes only
#: Jobs of runs it has already recorded as done).
JOB_LOST = "StageJobLost"


def lost(rid: str, stage: str, job: str, trial: int | str | None = None) -> RunFailed:
    """A run whose Job `job` was deleted while it ran (an HPO trial's: `trial` is its number):
    a failed attempt, as if it had crashed."""
    run = f"stage {stage}" if trial is None else f"trial {trial} of stage {stage}"
    return RunFailed(rid, JOB_LOST, f"Job {job} of {run} was deleted before its run ended")


def deleting(job: Obj) -> RunFailed | None:
    """A Job being deleted before it finished (a foreground deletion waits for its pods)."""
    rid, meta = run_id_of(job), job.get("metadata", {})
    if rid is None or finished(job) or not meta.get("deletionTimestamp"):
        return None
    labels = meta.get("labels") or {}
    return lost(rid, str(labels.get(LABEL_STAGE, "?")), _name(job), labels.get(LABEL_TRIAL))


#: Job conditions that mean it ends on its own (its pods may be gone already).
ENDING = frozenset({"FailureTarget", "SuccessCriteriaMet"})
#: Job status counters of pods it has (had): any of them set means a pod did exist.
POD_COUNTS = ("active", "ready", "terminating", "succeeded", "failed")


def _no_pod(rid: str, job: Obj, now: datetime, timeout: float) -> RunFailed | None:
    """A Job older than `timeout` with no pod listed and none counted in its status."""
    status = job.get("status", {})
    if job.get("spec", {}).get("suspend") or any(status.get(key) for key in POD_COUNTS):
        return None
    conditions = [c for c in status.get("conditions") or [] if c.get("status") == "True"]
    if any(c.get("type") in ENDING for c in conditions):
        return None
    if (now - _created(job, now)).total_seconds() <= timeout:
        return None
    text = f"Job {_name(job)} created no pod in {timeout:.0f}s"
    for cond in conditions:
        if cond.get("message") and cond.get("type") != "Suspended":
            text += f"; {cond.get('reason') or cond.get('type')}: {cond['message']}"
    return RunFailed(rid, "NoPod", text)


def _created(obj: Obj, now: datetime) -> datetime:
    """When `obj` was created; `now` (nothing waited yet) if it does not say."""
    stamp = obj.get("metadata", {}).get("creationTimestamp")
    try:
        return parse_iso(str(stamp)) if stamp else now
    except ValueError:
        return now


def _name(obj: Obj) -> str:
    return str(obj.get("metadata", {}).get("name", "?"))


def _succeeded(rid: str, message: str, job: Obj) -> Observation:
    try:
        return RunSucceeded(rid, RunRecord.model_validate_json(message))
    except (ValidationError, ValueError):
        pass
    output = (job.get("metadata", {}).get("annotations") or {}).get(ANNOTATION_OUTPUT)
    try:
        if not output:
            raise KompaktorError("the Job names no output")
        data = open_store(str(output)).get_bytes(RESULT_FILE)
        return RunSucceeded(rid, RunRecord.model_validate_json(data))
    except (KompaktorError, ValidationError, ValueError) as error:
        return RunFailed(rid, "NoResult", f"the run succeeded but left no result: {error}")
