"""What Flux makes of a job: kstatus's rules for a custom resource, applied to statuses the plan
makes in each phase. A failed job read as "in progress" (Ready False and no Stalled), so Flux's
health checks waited for their timeout instead of failing."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from kompaktor.api.status import Condition, OptimizationJobStatus
from kompaktor.controller.reconciler import invalid
from kompaktor.plan import step
from kompaktor.plan.conditions import conditions_for
from tests.unit.plan.phases import Obj, cluster_object, phases
from tests.unit.plan.test_machine import T0, ctx, spec, started

STAMP = "2026-11-23T12:00:00Z"


def kstatus(obj: Obj) -> tuple[str, str]:
    """(status, message) by sigs.k8s.io/cli-utils pkg/kstatus/status: checkGeneration, then
    checkGenericProperties (the first True Reconciling or Stalled decides), then
    checkReadyCondition, else Current."""
    status: dict[str, Any] = obj.get("status") or {}
    generation, observed = obj["metadata"].get("generation"), status.get("observedGeneration")
    if generation is not None and observed is not None and observed != generation:
        return "InProgress", f"generation is {generation}, but latest observed is {observed}"
    conditions: list[dict[str, str]] = status.get("conditions") or []
    for cond in conditions:
        if cond["status"] == "True" and cond["type"] == "Reconciling":
            return "InProgress", cond.get("message", "")
        if cond["status"] == "True" and cond["type"] == "Stalled":
            return "Failed", cond.get("message", "")
    ready = next((c for c in conditions if c["type"] == "Ready"), None)
    if ready is not None:
        return ("Current" if ready["status"] == "True" else "InProgress"), ready.get("message", "")
    return "Current", "Resource is current"


def condition(status: OptimizationJobStatus, type_: str) -> Condition:
    return next(c for c in status.conditions if c.type == type_)


PHASES = phases()


@pytest.mark.parametrize(
    ("phase", "expected"),
    [
        ("pending", "InProgress"),
        ("running", "InProgress"),
        ("retrying", "InProgress"),
        ("failed", "Failed"),
        ("invalid", "Failed"),
        ("succeeded", "Current"),
        ("edited", "InProgress"),
        # kstatus has no "suspended": Ready False reads as in progress.
        ("suspended", "InProgress"),
    ],
)
def test_flux_reads_each_phase(phase: str, expected: str) -> None:
    assert kstatus(PHASES[phase])[0] == expected


@pytest.mark.parametrize(
    ("phase", "message"),
    [
        ("pending", "digesting the input model and dataset"),
        ("running", "stage train is running"),
        ("retrying", "stage train is retrying: OOMKilled: 137"),
        ("failed", "stage train failed: InvalidInput: corrupt model"),
    ],
)
def test_flux_is_told_what_the_job_does_or_why_it_stopped(phase: str, message: str) -> None:
    assert kstatus(PHASES[phase])[1] == message


def test_stalled_names_the_reason_as_degraded_does() -> None:
    job = ctx(spec(budget={"maxDuration": "1m"}))
    late = step(job, started(job).status, [], T0 + timedelta(minutes=2)).status
    stalled, degraded = condition(late, "Stalled"), condition(late, "Degraded")
    assert (stalled.status, stalled.reason) == ("True", "BudgetExceeded")
    assert (stalled.reason, stalled.message) == (degraded.reason, degraded.message)
    assert condition(late, "Reconciling").status == "False"


def test_reconciling_and_stalled_are_false_and_quiet_once_the_job_succeeded() -> None:
    done = OptimizationJobStatus.model_validate(PHASES["succeeded"]["status"])
    reconciling, stalled = condition(done, "Reconciling"), condition(done, "Stalled")
    assert (reconciling.status, reconciling.reason, reconciling.message) == (
        "False", "Succeeded", ""
    )  # fmt: skip
    assert (stalled.status, stalled.reason, stalled.message) == ("False", "AsExpected", "")
    assert {c.type for c in done.conditions} == {
        "Ready", "Progressing", "Degraded", "Reconciling", "Stalled"
    }  # fmt: skip


def test_a_spec_the_operator_refused_is_stalled_with_invalid_spec() -> None:
    refused = invalid(OptimizationJobStatus(), "spec.stages: empty", 3, T0)
    assert kstatus(cluster_object(refused, 3)) == ("Failed", "InvalidSpec: spec.stages: empty")
    assert condition(refused, "Stalled").reason == "InvalidSpec"


def test_a_cancelled_job_is_stalled() -> None:
    cancelled = OptimizationJobStatus(phase="Cancelled", observed_generation=1)
    cancelled = cancelled.model_copy(update={"conditions": conditions_for(cancelled, STAMP)})
    assert kstatus(cluster_object(cancelled)) == ("Failed", "")
    assert condition(cancelled, "Stalled").reason == "Cancelled"


@pytest.mark.parametrize("phase", [p for p in PHASES if p not in ("new", "edited")])
def test_every_status_the_plan_writes_has_seen_the_generation(phase: str) -> None:
    obj = PHASES[phase]
    assert obj["status"]["observedGeneration"] == obj["metadata"]["generation"]


def test_an_edited_job_is_in_progress_again_once_the_operator_sees_the_edit() -> None:
    done = OptimizationJobStatus.model_validate(PHASES["succeeded"]["status"])
    seen = step(ctx(generation=2), done, [], T0).status
    assert seen.observed_generation == 2
    assert kstatus(cluster_object(seen, 2))[0] == "InProgress"
    assert condition(seen, "Ready").status == "False"


def test_a_retry_is_reconciling_not_stalled() -> None:
    retrying = OptimizationJobStatus.model_validate(PHASES["retrying"]["status"])
    assert condition(retrying, "Reconciling").status == "True"
    assert condition(retrying, "Stalled").status == "False"
    assert condition(retrying, "Degraded").status == "True"


def test_reconciling_keeps_its_transition_time_while_the_job_runs() -> None:
    job = ctx()
    first = started(job).status
    later = step(job, first, [], T0 + timedelta(seconds=30)).status
    since = condition(first, "Reconciling").last_transition_time
    assert since is not None and condition(later, "Reconciling").last_transition_time == since


def test_a_job_that_failed_under_an_older_operator_gains_stalled_on_the_next_pass() -> None:
    failed = OptimizationJobStatus.model_validate(PHASES["failed"]["status"])
    old = [c for c in failed.conditions if c.type in ("Ready", "Progressing", "Degraded")]
    before = failed.model_copy(update={"conditions": old})
    assert kstatus(cluster_object(before))[0] == "InProgress"
    after = step(ctx(), before, [], T0 + timedelta(hours=1)).status
    assert kstatus(cluster_object(after))[0] == "Failed"
    # the conditions it had keep their transition times; only the new ones are stamped now
    assert condition(after, "Ready") == condition(before, "Ready")
    assert after.model_copy(update={"conditions": []}) == before.model_copy(
        update={"conditions": []}
    )
