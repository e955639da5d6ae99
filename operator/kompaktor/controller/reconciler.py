"""One pass over one OptimizationJob: observe its Jobs, step the engine, act.

The CR's status is the only memory, so a pass is safe to run at any time, any number of times,
by a fresh operator: it reads the CR, lists the Jobs it owns, feeds the outcomes the status does
not hold yet, writes the new status first, and then creates or deletes Jobs. Creation uses the
run's deterministic name, so a Job that already exists is adopted, never duplicated.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence, Set
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from kompaktor.api.messages import spec_problems
from kompaktor.api.spec import OptimizationJobSpec
from kompaktor.api.status import OptimizationJobStatus
from kompaktor.config import OperatorConfig, check_pools
from kompaktor.controller.kube import Kube, cr_path, jobs_path, pods_path
from kompaktor.engine import reconcile
from kompaktor.errors import KompaktorError
from kompaktor.executors import kubernetes as k8s
from kompaktor.plan import (
    CancelRun,
    EmitEvent,
    EnsureRun,
    JobContext,
    Observation,
    Requeue,
    RunFailed,
    RunStarted,
    StepResult,
)
from kompaktor.plan.clock import iso, parse_iso
from kompaktor.plan.conditions import conditions_for
from kompaktor.plan.keys import run_id

#: With runs in flight, look again at least this often even if no event arrives.
ACTIVE_POLL_SECONDS = 30.0
#: While a pod is still pending, look again this often (it may be stuck: see `k8s.stuck`).
PENDING_POLL_SECONDS = 5.0
#: What a StageJobLost event says follows, for a stage's run and for an HPO trial (the plan
#: retries no trial: the search goes on with the others).
STAGE_RUN_LOST = "it counts as a failed attempt (retries follow the stage)"
TRIAL_LOST = "the trial counts as failed and the search goes on without it"
#: Status keys other writers own (kopf's progress); never removed by our patches.
FOREIGN_STATUS_KEYS = frozenset({"kopf"})

EventSink = Callable[[Mapping[str, Any], str, str, str], None]


@dataclass(frozen=True)
class Pass:
    """What one pass did, for the caller's sleep and for tests."""

    wake_after: float | None
    created: int = 0
    deleted: int = 0
    status: OptimizationJobStatus | None = None


@dataclass(frozen=True)
class InFlight:
    """A run the status says is in flight: a stage's (or one pool's) run, or an HPO trial."""

    stage: str
    trial: int | None
    #: Its Job's uid, once a pass saw the Job.
    job_uid: str | None
    #: When its pod was seen placed (`attempt_start_time`).
    placed: str | None
    #: The node it was placed on (stage runs; a status written before Job uids were kept).
    node: str | None = None

    @property
    def had_job(self) -> bool:
        """Whether its Job is known to have existed: the status is written before the Job is
        created, so until a pass has seen it, a missing Job may just not be created yet."""
        return bool(self.job_uid or self.placed or self.node)

    def learns(self, seen: RunStarted) -> bool:
        """Whether `seen` tells the status something new: the Job's uid, or its placement."""
        return bool((seen.job_uid and not self.job_uid) or (seen.node and not self.placed))


def active_runs(status: OptimizationJobStatus) -> dict[str, InFlight]:
    """Run id -> what the status holds of it, for every run the status says is in flight."""
    runs: dict[str, InFlight] = {}
    for stage in status.stages:
        for run in stage.runs():  # a stage on several pools: each pool's run
            if run.phase == "Running" and run.key and stage.type != "hpo":
                rid = run_id(stage.name, run.key, run.attempts)
                runs[rid] = InFlight(
                    stage.name, None, run.job_uid, run.attempt_start_time, run.node
                )
    for trial in status.trials:
        if trial.state == "Running" and trial.key:
            rid = run_id(trial.stage, trial.key, trial.attempts, trial.number)
            runs[rid] = InFlight(trial.stage, trial.number, trial.job_uid, trial.attempt_start_time)
    return runs


def pods_by_run(pods: Sequence[Mapping[str, Any]]) -> dict[str, list[Mapping[str, Any]]]:
    by_run: dict[str, list[Mapping[str, Any]]] = {}
    for pod in pods:
        rid = k8s.run_id_of(pod)
        if rid:
            by_run.setdefault(rid, []).append(pod)
    return by_run


def observe(
    status: OptimizationJobStatus,
    jobs: Sequence[Mapping[str, Any]],
    pods: Sequence[Mapping[str, Any]],
    now: datetime,
    start_timeout: float,
    owner: str,
) -> list[Observation]:
    """Facts about in-flight runs only, so outcomes already recorded are never fed twice.

    A run whose pod cannot start is reported failed (its Job is then deleted by the pass), and
    so is a run (a stage's or an HPO trial's) whose Job someone deleted (`k8s.JOB_LOST`):
    recreating it silently would hide it, and let a Job deleted again and again run for ever."""
    active = active_runs(status)
    by_run = pods_by_run(pods)
    found: list[Observation] = []
    for job in jobs:
        rid = k8s.run_id_of(job)
        if rid is None or rid not in active:
            continue
        mine, run = by_run.get(rid, []), active[rid]
        if (seen := k8s.started(job, mine)) is not None and run.learns(seen):
            found.append(seen)
        result = k8s.outcome(job, mine) or k8s.deleting(job)
        result = result or k8s.stuck(job, mine, now, start_timeout) or k8s.overran(job, mine, now)
        if result is not None:
            found.append(_paid(result, mine, run, now))
    listed = {k8s.run_id_of(job) for job in jobs}
    for rid, run in active.items():
        if run.had_job and rid not in listed:
            lost = k8s.lost(rid, run.stage, k8s.job_name(owner, rid), run.trial)
            found.append(_paid(lost, by_run.get(rid, []), run, now))
    return found


def _paid(
    result: Observation, pods: Sequence[Mapping[str, Any]], run: InFlight, now: datetime
) -> Observation:
    """A failed attempt with the time it ran, which it is paid for: its container's, or since
    it was placed when its pods are gone (a deleted Job takes them along)."""
    if not isinstance(result, RunFailed):
        return result
    seconds = k8s.ran_seconds(pods, now)
    if not seconds and run.placed is not None:
        seconds = max((now - parse_iso(run.placed)).total_seconds(), 0.0)
    return replace(result, duration_seconds=seconds)


def status_patch(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
    """A JSON merge patch from `old` to `new`: removed keys become null."""
    patch: dict[str, Any] = {}
    for key in old:
        if key not in new and key not in FOREIGN_STATUS_KEYS:
            patch[key] = None
    for key, value in new.items():
        before = old.get(key)
        if isinstance(value, Mapping) and isinstance(before, Mapping):
            inner = status_patch(before, value)
            if inner:
                patch[key] = inner
        elif value != before:
            patch[key] = value
    return patch


def invalid(
    status: OptimizationJobStatus, message: str, generation: int, now: datetime
) -> OptimizationJobStatus:
    failed = status.model_copy(
        update={
            "phase": "Failed",
            "message": f"InvalidSpec: {message}",
            "observed_generation": generation,
            "completion_time": status.completion_time or iso(now),
        }
    )
    return failed.model_copy(update={"conditions": conditions_for(failed, iso(now))})


class Reconciler:
    """The controller's executor: Jobs in the API server, outcomes from Jobs and pods."""

    def __init__(self, kube: Kube, config: OperatorConfig, emit: EventSink) -> None:
        self.kube, self.config, self.emit = kube, config, emit

    async def run_pass(self, namespace: str, name: str, now: datetime | None = None) -> Pass:
        obj = await self.kube.get(cr_path(namespace, name))
        if obj is None or obj["metadata"].get("deletionTimestamp"):
            return Pass(None)
        now = now or datetime.now(UTC)
        raw_status = dict(obj.get("status") or {})
        status = OptimizationJobStatus.model_validate(raw_status)
        generation = int(obj["metadata"].get("generation") or 1)
        try:
            ctx = self.context(obj, namespace, name, generation)
        except KompaktorError as error:
            return await self._reject(obj, raw_status, status, str(error), generation, now)
        selector = k8s.child_selector(name)
        jobs, pods = await asyncio.gather(
            self.kube.list(jobs_path(namespace), selector),
            self.kube.list(pods_path(namespace), selector),
        )
        timeout = self.config.pod_start_timeout_seconds
        observations = observe(status, jobs, pods, now, timeout, name)
        result = await asyncio.to_thread(reconcile, ctx, status, observations, now)
        await self._write_status(namespace, name, raw_status, result.status)
        self._report_lost(obj, observations, status)
        done = await self._act(obj, namespace, result, jobs)
        # Runs reported failed while still active (pods that cannot start): the outcome is in
        # the status already, so their Jobs go and a retry gets a Job of its own.
        failed = {o.run_id for o in observations if isinstance(o, RunFailed)}
        live = [job for job in jobs if not k8s.finished(job)]
        removed = await self._delete_runs(namespace, live, failed)
        wake = done.wake_after
        if any(pod.get("status", {}).get("phase") == "Pending" for pod in pods):
            wake = min(wake or PENDING_POLL_SECONDS, PENDING_POLL_SECONDS)
        by_run = pods_by_run(pods)
        for job in live:  # wake as a stage's timeout runs out
            left = k8s.time_left(job, by_run.get(k8s.run_id_of(job) or "", []), now)
            if left is not None:
                wake = min(wake or ACTIVE_POLL_SECONDS, max(left, 0.0) + 0.5)
        return replace(done, wake_after=wake, status=result.status, deleted=done.deleted + removed)

    def context(
        self, obj: Mapping[str, Any], namespace: str, name: str, generation: int
    ) -> JobContext:
        try:
            spec = OptimizationJobSpec.model_validate(obj.get("spec") or {})
        except ValidationError as error:
            raise KompaktorError(spec_problems(error, obj.get("spec"))) from None
        check_pools(spec, self.config)
        return JobContext(
            name=name,
            namespace=namespace,
            spec=spec,
            artifacts_uri=self.config.artifacts_for(spec, namespace, name),
            generation=generation,
            default_pool=self.config.default_pool_name,
            pool_prices=self.config.prices,
            pool_watts={pool.name: pool.watts for pool in self.config.pools},
            retry_base_seconds=self.config.retry_base_seconds,
        )

    async def _reject(
        self,
        obj: Mapping[str, Any],
        raw_status: Mapping[str, Any],
        status: OptimizationJobStatus,
        message: str,
        generation: int,
        now: datetime,
    ) -> Pass:
        if status.observed_generation == generation and status.phase == "Failed":
            return Pass(None, status=status)  # already said; still exported as metrics
        failed = invalid(status, message, generation, now)
        await self._write_status(
            obj["metadata"]["namespace"], obj["metadata"]["name"], raw_status, failed
        )
        self.emit(obj, "Warning", "InvalidSpec", message)
        return Pass(None, status=failed)

    async def _write_status(
        self, namespace: str, name: str, old: Mapping[str, Any], status: OptimizationJobStatus
    ) -> None:
        patch = status_patch(old, status.dump())
        if patch:
            await self.kube.patch_status(cr_path(namespace, name), patch)

    def _report_lost(
        self,
        obj: Mapping[str, Any],
        observations: Sequence[Observation],
        status: OptimizationJobStatus,
    ) -> None:
        """A Warning event for each run whose Job was deleted under it (after the status says
        so, so that a pass run again does not say it twice), saying what follows."""
        active = active_runs(status)
        for found in observations:
            if isinstance(found, RunFailed) and found.reason == k8s.JOB_LOST:
                trial = found.run_id in active and active[found.run_id].trial is not None
                then = TRIAL_LOST if trial else STAGE_RUN_LOST
                self.emit(obj, "Warning", k8s.JOB_LOST, f"{found.message}; {then}")

    async def _delete_runs(
        self, namespace: str, jobs: Sequence[Mapping[str, Any]], run_ids: Set[str]
    ) -> int:
        """Delete the Jobs among `jobs` that belong to `run_ids`; answers how many."""
        deleted = 0
        for job in jobs:
            if k8s.run_id_of(job) in run_ids:
                await self.kube.delete(jobs_path(namespace, job["metadata"]["name"]))
                deleted += 1
        return deleted

    async def _act(
        self,
        obj: Mapping[str, Any],
        namespace: str,
        result: StepResult,
        jobs: Sequence[Mapping[str, Any]],
    ) -> Pass:
        existing = {job["metadata"]["name"] for job in jobs}
        created = deleted = 0
        wake: float | None = None
        for action in result.actions:
            match action:
                case EmitEvent():
                    self.emit(obj, action.type, action.reason, action.message)
                case EnsureRun():
                    request = action.request
                    if k8s.job_name(request.job, request.run_id) not in existing:
                        manifest = k8s.job_manifest(request, obj, self.config, namespace=namespace)
                        created += await self.kube.create(jobs_path(namespace), manifest)
                case CancelRun():
                    deleted += await self._delete_runs(namespace, jobs, {action.run_id})
                case Requeue():
                    wake = action.after_seconds if wake is None else min(wake, action.after_seconds)
        if result.active:
            wake = min(wake or ACTIVE_POLL_SECONDS, ACTIVE_POLL_SECONDS)
        return Pass(None if wake is None else max(wake, 0.05), created, deleted)
