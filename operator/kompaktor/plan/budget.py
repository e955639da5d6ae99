"""The job's budget: maxDuration, counted from startTime, and maxCostUSD, counted from the
edit that ran a finished job again."""

from __future__ import annotations

from datetime import timedelta

from kompaktor.plan import spending
from kompaktor.plan.clock import parse_iso
from kompaktor.plan.state import StepState
from kompaktor.plan.types import Requeue


def check_budget(work: StepState) -> None:
    """Fail the job that ran over its budget; else wake the driver at its deadline."""
    budget = work.spec.budget
    start = work.status.start_time
    if budget.max_duration_seconds is not None and start is not None:
        deadline = parse_iso(start) + timedelta(seconds=budget.max_duration_seconds)
        if work.now >= deadline:
            work.fail(f"BudgetExceeded: ran longer than maxDuration {budget.max_duration}")
            work.event("BudgetExceeded", work.status.message or "", warning=True)
            return
        work.actions.append(Requeue((deadline - work.now).total_seconds()))
    spent = spending.spent(work) - (work.status.cost_before_rerun_usd or 0.0)
    if budget.max_cost_usd is not None and spent > budget.max_cost_usd:
        since = " since the edit that ran it again" if work.status.cost_before_rerun_usd else ""
        work.fail(
            f"BudgetExceeded: cost {spent:.2f} USD{since} is over maxCostUSD "
            f"{budget.max_cost_usd}; raise spec.budget.maxCostUSD to run on"
        )
        work.event("BudgetExceeded", work.status.message or "", warning=True)
