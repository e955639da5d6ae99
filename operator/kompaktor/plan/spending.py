"""What the job's work cost (USD) and drew (joules): finished runs, failed and stopped
attempts, runs that left status, and the job's totals.

Stopping or dropping work never hides what it spent: an attempt that left no record is paid
for by the time it ran, and what leaves status is kept in `replaced_*`, so that costUSD and
maxCostUSD count it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from kompaktor.api.run import RunRecord
from kompaktor.api.status import RunSlot, StageStatus, TrialRecord
from kompaktor.metrics.energy import attempt_joules, joint_method
from kompaktor.plan.clock import seconds_since
from kompaktor.plan.state import StepState
from kompaktor.plan.types import JobContext


def paid(ctx: JobContext, seconds: float, pool: str | None) -> float:
    """USD for `seconds` on `pool` (a run, or a failed attempt)."""
    return seconds / 3600.0 * ctx.pool_prices.get(pool or "", 0.0)


def run_cost(ctx: JobContext, record: RunRecord, pool: str | None) -> float:
    return paid(ctx, record.duration_seconds, pool)


def attempt_price(ctx: JobContext, pool: str | None, seconds: float) -> tuple[float, float]:
    """USD and joules of an attempt that ran `seconds` on `pool` and left no record (it
    failed, or the plan stopped it): both follow the time it ran (see `attempt_joules`)."""
    joules = attempt_joules(ctx.pool_watts.get(pool or ""), seconds)
    return paid(ctx, seconds, pool), joules


def with_attempt(ctx: JobContext, run: RunSlot, seconds: float) -> dict[str, Any]:
    """A run's cost and energy with such an attempt that ran `seconds` added."""
    cost, joules = attempt_price(ctx, run.pool, seconds)
    return {
        "cost_usd": (run.cost_usd or 0.0) + cost,
        "energy_joules": (run.energy_joules or 0.0) + joules,
        "energy_method": joint_method(run.energy_method, "estimate"),
    }


def stopped(work: StepState, run: RunSlot) -> dict[str, Any]:
    """What a running attempt the plan stops (a suspension, the job's end) adds to its run:
    the time since it was placed, paid for as a failed attempt is. Nothing when it was never
    placed."""
    if run.phase != "Running" or run.attempt_start_time is None:
        return {}
    return with_attempt(work.ctx, run, seconds_since(run.attempt_start_time, work.now))


def replaced(work: StepState, cost: float | None, energy: float | None) -> None:
    """Runs dropped from status (an edit re-keyed them) were still paid for."""
    if not cost and not energy:
        return
    before = work.status
    work.status = before.model_copy(
        update={
            "replaced_cost_usd": (before.replaced_cost_usd or 0.0) + (cost or 0.0),
            "replaced_energy_joules": (before.replaced_energy_joules or 0.0) + (energy or 0.0),
        }
    )


def spent(work: StepState) -> float:
    """USD so far: every stage run plus every HPO trial (an HPO stage only sums its trials)."""
    return _job_total(work, lambda run: run.cost_usd, work.status.replaced_cost_usd)


def drawn(work: StepState) -> float:
    """Joules so far, counted as `spent` counts USD."""
    return _job_total(work, lambda run: run.energy_joules, work.status.replaced_energy_joules)


def _job_total(
    work: StepState,
    figure: Callable[[StageStatus | TrialRecord], float | None],
    left_status: float | None,
) -> float:
    """A figure summed over the job: stage runs (an hpo stage's are its trials), trials, and
    what left status."""
    runs = sum(figure(s) or 0.0 for s in work.stages if s.type != "hpo")
    trials = sum(figure(t) or 0.0 for t in work.trials)
    return runs + trials + (left_status or 0.0)


def total(base: float | None, parts: Sequence[float | None]) -> float | None:
    """`base` plus `parts`, None while all are None (status leaves unset figures out)."""
    known = [x for x in (base, *parts) if x is not None]
    return sum(known) if known else None
