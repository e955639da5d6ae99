"""Stopping all the job runs: for good when it fails, or to go on later when it is suspended.
A stopped attempt is paid for by the time it ran (see `spending.stopped`)."""

from __future__ import annotations

from kompaktor.plan import spending
from kompaktor.plan.stage_runs import cancel_run
from kompaktor.plan.state import StepState
from kompaktor.plan.trial_runs import stop_in_flight
from kompaktor.plan.types import EnsureRun, ProbeCache


def cancel_active(work: StepState, why: str) -> None:
    """End every run not done Cancelled, and take back this step's asks to run or probe."""
    work.actions[:] = [a for a in work.actions if not isinstance(a, EnsureRun | ProbeCache)]
    for rec, at, run in work.runs():
        if run.phase in ("Pending", "Running", "Retrying"):  # Pending: never reached
            if rec.type != "hpo":
                cancel_run(work, rec.name, run, why)
            work.update_slot(at, phase="Cancelled", **spending.stopped(work, run))
    stop_in_flight(work, pause=False)


def suspend(work: StepState, why: str) -> None:
    """Stop the runs in flight so that resuming goes on where they were: a stopped run is
    Pending again with its attempts kept (its cache is probed, then its next attempt runs),
    and the attempt cut short is `interrupted`, not failed, so it spends no retry. A stage
    waiting to retry keeps waiting; an hpo stage goes on from its trials in status. What
    the stopped attempts ran is paid for: a stopped run's in its cost, a trial's in
    `replaced_*`."""
    for rec, at, run in work.runs():
        if run.phase != "Running":
            continue
        if rec.type == "hpo":
            work.update_slot(at, phase="Pending", attempts=0)
            continue
        cancel_run(work, rec.name, run, why)
        interrupted = (run.interrupted or 0) + 1
        work.update_slot(
            at, phase="Pending", interrupted=interrupted, **spending.stopped(work, run)
        )
    stop_in_flight(work, pause=True)
