"""The pipeline as a pure state machine: (job, status, observations, now) -> (status, actions).

Both executors drive this one function: the local runner with processes, the controller with
batch Jobs. It never does I/O; what it needs to know it asks for with an action (probe the
inputs, probe the cache) and learns from the next step's observations.

A step: an edit starts a finished job again (`rerun`), an invalid spec fails it, a suspension
stops its runs; else the observations are applied (`observe`), the budget is checked
(`budget`), the stages are walked (`pipeline`), and the job's phase and totals follow (`job`).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any, TypeVar

from kompaktor.api.status import OptimizationJobStatus, RunSlot, StageStatus
from kompaktor.errors import JobSpecError
from kompaktor.plan import job, spending
from kompaktor.plan.budget import check_budget
from kompaktor.plan.clock import iso, parse_iso
from kompaktor.plan.conditions import conditions_for
from kompaktor.plan.observe import observe
from kompaktor.plan.pipeline import walk
from kompaktor.plan.state import StepState
from kompaktor.plan.stopping import suspend
from kompaktor.plan.types import TERMINAL, JobContext, Observation, StepResult
from kompaktor.stages.validate import validate_job

__all__ = ["rerun", "step"]


Run = TypeVar("Run", bound=RunSlot)


def _moved_on(stage: StageStatus, gap: timedelta) -> StageStatus:
    """A stage (and its pool runs) that a suspension stopped, started `gap` later."""

    def later(run: Run) -> Run:
        if run.start_time is None or run.completion_time is not None:
            return run
        return run.model_copy(update={"start_time": iso(parse_iso(run.start_time) + gap)})

    moved = later(stage)
    pools = [later(pool) for pool in stage.pools] if stage.pools else stage.pools
    return moved.model_copy(update={"pools": pools})


def step(
    ctx: JobContext,
    status: OptimizationJobStatus,
    observations: Sequence[Observation],
    now: datetime,
) -> StepResult:
    """Advance the job by what was observed; say what should happen next."""
    new_generation = status.observed_generation != ctx.generation
    if status.phase in TERMINAL and not new_generation:
        # Nothing to run; the conditions still follow the phase, so a job that finished under
        # an older operator gains the ones added since (kstatus's Stalled for Flux).
        return StepResult(_with_conditions(status, iso(now)))
    if new_generation:
        # An edit is when a model replaced under the same URI can be noticed: the inputs are
        # digested again, so keys follow what the edited job reads, not what it read before.
        status = status.model_copy(
            update={"input_digest": None, "dataset_digest": None, "model_file_digests": None}
        )
    if new_generation and status.phase in TERMINAL:
        status = rerun(status)
    work = StepState(ctx, status, now)
    try:
        params = validate_job(ctx.spec)
    except JobSpecError as error:
        work.fail(f"InvalidSpec: {error}")
        work.event("InvalidSpec", str(error), warning=True)
        return _result(work)
    if ctx.spec.suspend:
        suspend(work, "the job is suspended (spec.suspend)")
        since = status.suspend_time if status.phase == "Suspended" else work.stamp
        return _result(work, phase="Suspended", suspend_time=since)
    if status.phase == "Suspended":
        # The time budget counts time the job may run: the suspension moves its start on, and
        # that of each stage it stopped, so a stage's time is the time it could run too.
        start, since = status.start_time, status.suspend_time
        if since is not None:
            gap = now - parse_iso(since)
            start = start and iso(parse_iso(start) + gap)
            work.stages = [_moved_on(stage, gap) for stage in work.stages]
        work.status = work.status.model_copy(
            update={"phase": "Running", "start_time": start, "suspend_time": None}
        )
    observe(work, observations)
    if work.status.phase != "Failed":
        check_budget(work)
    if work.status.phase != "Failed":
        walk(work, params)
    return _result(work)


def rerun(status: OptimizationJobStatus) -> OptimizationJobStatus:
    """A finished job that is edited runs again. Both budgets start over: maxDuration from a
    new startTime, maxCostUSD from what the job had spent (`cost_before_rerun_usd`). Stages that
    failed or were cancelled are tried again (the edit may have raised retries or changed the
    pool; a run that failed the gate is cached and judged again, unrun), their spending kept
    in `replaced_*`: costUSD is all the job spent, and never goes down."""
    again = ("Failed", "Cancelled")
    dropped = [s for s in status.stages if s.phase in again and s.type != "hpo"]
    return status.model_copy(
        update={
            "phase": "Running",
            "message": None,
            "start_time": None,
            "completion_time": None,
            "replaced_cost_usd": spending.total(
                status.replaced_cost_usd, [s.cost_usd for s in dropped]
            ),
            "replaced_energy_joules": spending.total(
                status.replaced_energy_joules, [s.energy_joules for s in dropped]
            ),
            "cost_before_rerun_usd": status.cost_usd,
            "stages": [
                StageStatus(name=s.name, type=s.type) if s.phase in again else s
                for s in status.stages
            ],
        }
    )


def _result(work: StepState, **last: Any) -> StepResult:
    """The step's outcome: the job's phase and totals written, then `last` (a suspension's
    phase), and the conditions that follow from it all."""
    job.finish(work)
    status = work.status.model_copy(update=last) if last else work.status
    return StepResult(_with_conditions(status, work.stamp), work.actions)


def _with_conditions(status: OptimizationJobStatus, stamp: str) -> OptimizationJobStatus:
    return status.model_copy(update={"conditions": conditions_for(status, stamp)})
