"""A stage's runs (its own, or one per pool): started once the cache has no output for their
key, observed, retried with backoff, judged by the objective's gate, stopped."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from kompaktor.api.run import RunRecord
from kompaktor.api.spec import Objective, StageSpec
from kompaktor.api.status import RunSlot
from kompaktor.evaluate import AccuracyBound
from kompaktor.metrics.energy import joint_method
from kompaktor.plan import spending
from kompaktor.plan.clock import iso, parse_iso
from kompaktor.plan.keys import run_id
from kompaktor.plan.pool_runs import Slot
from kompaktor.plan.run_requests import run_request
from kompaktor.plan.state import StepState
from kompaktor.plan.types import (
    CancelRun,
    EnsureRun,
    JobContext,
    ProbeCache,
    Requeue,
    RunFailed,
    RunRequest,
    RunStarted,
)

#: Retry n waits base * 2**(n-1) seconds, capped.
MAX_BACKOFF_SECONDS = 600.0


def awaiting_cache(work: StepState, key: str) -> Slot | None:
    """The run whose cache probe for `key` is out (it is Pending), if any."""
    return next(
        (at for _, at, run in work.runs() if run.phase == "Pending" and run.key == key), None
    )


def running(work: StepState, rid: str) -> Slot | None:
    """The running run whose current attempt is `rid`, if any (else the news is stale)."""
    for rec, at, run in work.runs():
        if run.phase == "Running" and run.key and rid == run_id(rec.name, run.key, run.attempts):
            return at
    return None


def on_cache_probed(work: StepState, at: Slot, record: RunRecord | None) -> None:
    """Reuse the output found for the run's key, or start its attempt: a first one, or the
    next one after a suspension."""
    if record is not None:
        stage_done(work, at, record, cached=True)
        return
    start_attempt(work, at, work.slot(at).attempts + 1)
    work.event("StageStarted", f"{work.named(at)} ({work.stages[at[0]].type}) started")


def start_attempt(work: StepState, at: Slot, attempt: int) -> None:
    """Run `attempt` of a slot. Its Job and node are the new attempt's, not learnt yet: a
    recorded one says the attempt's Job existed (see the controller's lost-Job check)."""
    run = work.slot(at)
    work.update_slot(
        at,
        phase="Running",
        attempts=attempt,
        start_time=run.start_time or work.stamp,
        next_retry_time=None,
        node=None,
        attempt_start_time=None,
        job_uid=None,
    )


def on_started(work: StepState, at: Slot, obs: RunStarted) -> None:
    """Record what is new of a running attempt: its Job's uid, its placement (once)."""
    run = work.slot(at)
    changes = learnt(work, obs, run.job_uid, run.attempt_start_time)
    if "attempt_start_time" in changes:
        changes |= {"node": obs.node, "pool": obs.pool or run.pool}
    work.update_slot(at, **changes)


def learnt(
    work: StepState, obs: RunStarted, job_uid: str | None, placed: str | None
) -> dict[str, Any]:
    """The fields `obs` sets that are not set yet: the Job's uid, when it was placed."""
    changes: dict[str, Any] = {}
    if obs.job_uid and not job_uid:
        changes["job_uid"] = obs.job_uid
    if obs.node and not placed:
        changes["attempt_start_time"] = work.stamp
    return changes


def on_succeeded(work: StepState, at: Slot, record: RunRecord) -> None:
    stage_done(work, at, record, cached=False)


def stage_done(work: StepState, at: Slot, record: RunRecord, *, cached: bool) -> None:
    """A run finished (or its output was found in the cache): Succeeded, or Failed when its
    output fails the gate (a stage with gate: false passes, saying so in its message); paid
    for, unless it was cached."""
    index = at[0]
    rec, run = work.stages[index], work.slot(at)
    pool = run.pool or work.pool_for(work.spec.stages[index])
    # A cached record's energy was its original run's, counted then; the estimates of
    # failed attempts before it stay.
    ran = 0.0 if cached else record.energy_joules
    before = run.energy_joules
    over = gate(work.spec.objective, record)
    why = over if work.spec.stages[index].gate else None
    if why and index < len(work.spec.stages) - 1:
        why += _RECOVERY_HINT
    cost = 0.0 if cached else spending.run_cost(work.ctx, record, pool)
    work.update_slot(
        at,
        phase="Failed" if why else "Succeeded",
        cached=cached,
        output=record.output,
        metrics=record.metrics,
        completion_time=work.stamp,
        start_time=run.start_time or work.stamp,
        pool=pool,
        node=record.node or run.node,
        cost_usd=(run.cost_usd or 0.0) + cost,
        energy_joules=None if before is None and ran is None else (before or 0) + (ran or 0),
        energy_method=joint_method(run.energy_method, record.energy_method),
        message=why or (over and f"not gated: {over.removeprefix('GateFailed: ')}"),
    )
    named = work.named(at)
    if why:
        work.event("GateFailed", f"{named}: {why}", warning=True)
    elif cached:
        work.event("CacheHit", f"{named} ({rec.type}) reused {record.output.uri}")
    else:
        work.event("StageSucceeded", f"{named} ({rec.type}) succeeded")


#: Said when a stage before the last fails the gate: a later one may win the accuracy back.
_RECOVERY_HINT = "; if a later stage wins it back (distill after prune), set gate: false here"


def gate(objective: Objective, record: RunRecord) -> str | None:
    """Why a stage output fails the objective, or None when it is inside the bound."""
    metric, baseline = record.metrics.get("metric"), record.metrics.get("referenceMetric")
    bound = AccuracyBound(objective.metric, baseline, objective.max_drop)
    if metric is None or bound.admits(metric):
        return None
    assert baseline is not None  # a bound with no baseline admits everything
    drop = bound.drop(metric)
    direction = "below" if bound.sign > 0 else "above"
    return (
        f"GateFailed: {objective.metric} {metric:.4f} is {drop:.4f} {direction} the input "
        f"model's {baseline:.4f} (maxDrop {objective.max_drop})"
    )


def on_failed(work: StepState, at: Slot, obs: RunFailed) -> None:
    """A failed attempt, paid for by the time it ran: retried after a backoff while the
    stage has retries left (a suspended attempt spends none), else the run fails."""
    run, named = work.slot(at), work.named(at)
    retries = work.spec.stages[at[0]].retries
    message = f"{obs.reason}: {obs.message}"
    work.update_slot(at, **spending.with_attempt(work.ctx, run, obs.duration_seconds))
    failed = run.attempts - (run.interrupted or 0)
    if obs.retryable and failed <= retries:
        retry_at = iso(work.now + timedelta(seconds=backoff_seconds(work.ctx, failed)))
        work.update_slot(at, phase="Retrying", next_retry_time=retry_at, message=message)
        work.event(
            "StageRetrying",
            f"{named} attempt {run.attempts} failed ({message}); retrying at {retry_at}",
            warning=True,
        )
    else:
        work.update_slot(at, phase="Failed", message=message, completion_time=work.stamp)
        work.event("StageFailed", f"{named} failed: {message}", warning=True)


def backoff_seconds(ctx: JobContext, failed: int) -> float:
    """How long the retry after the `failed`-th failed attempt waits."""
    delay: float = min(ctx.retry_base_seconds * 2 ** (failed - 1), MAX_BACKOFF_SECONDS)
    return delay


def drive_stage(
    work: StepState, index: int, stage: StageSpec, params: dict[str, Any], input_uri: str
) -> None:
    for at, _ in work.slots(index):
        drive_run(work, at, stage, params, input_uri)
    rec = work.stages[index]
    if rec.phase == "Failed":
        work.fail(f"stage {stage.name} failed: {rec.message}")


def drive_run(
    work: StepState, at: Slot, stage: StageSpec, params: dict[str, Any], input_uri: str
) -> None:
    """Ask for what the run needs next: its cache probed, its attempt kept running, or its
    retry started once it is due (until then, a wake-up when it is)."""
    run = work.slot(at)
    if run.key is None:
        return
    pool = run.pool or work.pool_for(stage)

    def request(attempt: int) -> RunRequest:
        return run_request(work, at[0], stage.type, params, run.key or "", input_uri, attempt, pool)

    match run.phase:
        case "Pending":
            work.actions.append(ProbeCache(run.key, request(1).output_uri))
        case "Running":
            work.actions.append(EnsureRun(request(max(run.attempts, 1))))
        case "Retrying":
            due = parse_iso(run.next_retry_time) if run.next_retry_time else work.now
            if work.now >= due:
                start_attempt(work, at, run.attempts + 1)
                work.actions.append(EnsureRun(request(run.attempts + 1)))
            else:
                work.actions.append(Requeue((due - work.now).total_seconds()))


def cancel_run(work: StepState, name: str, run: RunSlot, why: str) -> None:
    if run.phase == "Running" and run.key:
        rid = run_id(name, run.key, run.attempts)
        work.actions.append(CancelRun(rid))
        work.event("StageCancelled", f"stage {name}: run {rid} stopped: {why}")


def drop_run(work: StepState, name: str, run: RunSlot, why: str) -> None:
    """A run that leaves status (an edit re-keyed its stage or no longer names its pool):
    stopped if it runs, and all it spent, the attempt in flight too, kept in `replaced_*`
    so that costUSD and maxCostUSD still count it."""
    cancel_run(work, name, run, why)
    paid = run.model_copy(update=spending.stopped(work, run))
    spending.replaced(work, paid.cost_usd, paid.energy_joules)
