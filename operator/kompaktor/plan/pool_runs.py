"""A stage that runs on several pools (a benchmark's `pools`): one run per pool, summed up
into the stage's own record, so the walk and the job's totals read it as any other stage."""

from __future__ import annotations

from kompaktor.api.status import EnergyMethod, PoolRun, StagePhase, StageStatus
from kompaktor.plan.types import TERMINAL

#: A run's place: its stage's index, and the pool run's index in it (None: the stage's own run).
Slot = tuple[int, int | None]


def summed(rec: StageStatus, runs: list[PoolRun]) -> StageStatus:
    """A stage on several pools, summed up from its pool runs: failed if one failed, done
    when all are; the first pool's figures and output (the model is the same on every pool),
    every pool's cost and energy."""
    phases = {run.phase for run in runs}
    phase: StagePhase = next(
        (p for p in ("Failed", "Running", "Retrying", "Cancelled", "Pending") if p in phases),
        "Succeeded",
    )
    first = runs[0] if runs else PoolRun()
    costs = [run.cost_usd for run in runs if run.cost_usd is not None]
    energies = [run.energy_joules for run in runs if run.energy_joules is not None]
    methods = {run.energy_method for run in runs if run.energy_method is not None}
    method: EnergyMethod | None = (
        None if not methods else methods.pop() if len(methods) == 1 else "estimate"
    )
    starts = [run.start_time for run in runs if run.start_time]
    ends = [run.completion_time for run in runs if run.completion_time]
    problems = [f"pool {run.pool}: {run.message}" for run in runs if run.message]
    return rec.model_copy(
        update={
            "pools": runs,
            "phase": phase,
            "attempts": sum(run.attempts for run in runs),
            "interrupted": sum(run.interrupted or 0 for run in runs) or None,
            "cached": bool(runs) and all(run.cached for run in runs),
            "output": first.output,
            "metrics": first.metrics,
            "node": None,
            "start_time": min(starts) if starts else None,
            "completion_time": max(ends) if phase in TERMINAL and ends else None,
            "next_retry_time": None,
            "cost_usd": sum(costs) if costs else None,
            "energy_joules": sum(energies) if energies else None,
            "energy_method": method,
            "message": "; ".join(problems) or None,
        }
    )
