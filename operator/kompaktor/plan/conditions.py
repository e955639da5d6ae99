"""status.conditions: Kubebuilder's Ready / Progressing / Degraded, and kstatus's abnormal-true
Reconciling / Stalled, which Flux's health checks read (without Stalled, a failed job was "in
progress" to them until their timeout)."""

from __future__ import annotations

import re

from kompaktor.api.status import (
    Condition,
    ConditionType,
    JobPhase,
    OptimizationJobStatus,
    StageStatus,
)

#: `Reason: text` (a run's failure, BudgetExceeded, InvalidSpec), after a pool run's prefix.
_REASON = re.compile(r"^(?:pool [^:]+: )?([A-Z][A-Za-z]+):")

_PHASE_REASON: dict[JobPhase, str] = {
    "Pending": "Pending",
    "Running": "StageRunning",
    "Succeeded": "Succeeded",
    "Failed": "Failed",
    "Cancelled": "Cancelled",
    "Suspended": "Suspended",
}
#: Phases the operator works on by itself.
_WORKING: tuple[JobPhase, ...] = ("Pending", "Running")
#: Phases that only an edit of the spec moves on from (kstatus's Stalled).
_STALLED: tuple[JobPhase, ...] = ("Failed", "Cancelled")


def set_condition(
    conditions: list[Condition],
    type_: ConditionType,
    value: bool,
    reason: str,
    message: str,
    now: str,
) -> list[Condition]:
    """Replace one condition; the transition time moves only when the status flips."""
    status = "True" if value else "False"
    previous = next((c for c in conditions if c.type == type_), None)
    changed = previous is None or previous.status != status
    when = now if changed or previous is None else previous.last_transition_time
    updated = Condition(
        type=type_, status=status, reason=reason, message=message, last_transition_time=when
    )
    return [c for c in conditions if c.type != type_] + [updated]


def conditions_for(status: OptimizationJobStatus, now: str) -> list[Condition]:
    """Conditions that follow from the phase and message of a status."""
    phase, plain = status.phase, status.message or ""
    reason = _PHASE_REASON[phase]
    working = phase in _WORKING
    retrying = next((s for s in status.stages if s.phase == "Retrying"), None)
    why = _trouble_reason(status) or reason
    trouble = plain or (_retry_message(retrying) if retrying else "")
    conds = list(status.conditions)
    conds = set_condition(conds, "Ready", phase == "Succeeded", reason, plain, now)
    conds = set_condition(conds, "Progressing", working, reason, plain, now)
    progress = _progress_message(status, trouble) if working else ""
    conds = set_condition(conds, "Reconciling", working, reason, progress, now)
    conds = _abnormal(conds, "Degraded", phase == "Failed" or bool(retrying), why, trouble, now)
    return _abnormal(conds, "Stalled", phase in _STALLED, why, trouble, now)


def _abnormal(
    conditions: list[Condition],
    type_: ConditionType,
    value: bool,
    reason: str,
    message: str,
    now: str,
) -> list[Condition]:
    """A condition that is True only when something is wrong: it then says what, else nothing."""
    if value:
        return set_condition(conditions, type_, True, reason, message, now)
    return set_condition(conditions, type_, False, "AsExpected", "", now)


def _trouble_reason(status: OptimizationJobStatus) -> str | None:
    """The reason the job's message gives, else that of its failed or retrying stage."""
    troubled = next((s for s in status.stages if s.phase in ("Failed", "Retrying")), None)
    stage_reason = _reason(troubled.message) if troubled and troubled.message else None
    return _reason(status.message or "") or stage_reason


def _retry_message(stage: StageStatus) -> str:
    return f"stage {stage.name} is retrying: {stage.message or 'its run failed'}"


def _progress_message(status: OptimizationJobStatus, trouble: str) -> str:
    """What a job still at work is doing, for the tools that wait on Reconciling."""
    if trouble:
        return trouble
    if status.phase == "Pending":
        return "digesting the input model and dataset"
    return f"stage {status.stage} is running" if status.stage else "planning the stages"


def _reason(message: str) -> str | None:
    """The machine-readable reason a message starts with (`OOMKilled: …`), if any."""
    found = _REASON.match(message)
    return found.group(1) if found else None
