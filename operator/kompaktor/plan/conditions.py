"""status.conditions in the Kubebuilder style: Ready / Progressing / Degraded."""

from __future__ import annotations

from kompaktor.api.status import Condition, ConditionType, OptimizationJobStatus


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
    phase, message = status.phase, status.message or ""
    reason = {
        "Pending": "Pending",
        "Running": "StageRunning",
        "Succeeded": "Succeeded",
        "Failed": "Failed",
        "Cancelled": "Cancelled",
        "Suspended": "Suspended",
    }[phase]
    degraded_reason = next(
        (
            s.message.split(":", 1)[0]
            for s in status.stages
            if s.phase in ("Failed", "Retrying") and s.message
        ),
        reason,
    )
    conds = list(status.conditions)
    conds = set_condition(conds, "Ready", phase == "Succeeded", reason, message, now)
    conds = set_condition(
        conds, "Progressing", phase in ("Pending", "Running"), reason, message, now
    )
    degraded = phase == "Failed" or any(s.phase == "Retrying" for s in status.stages)
    conds = set_condition(
        conds,
        "Degraded",
        degraded,
        degraded_reason if degraded else "AsExpected",
        message if degraded else "",
        now,
    )
    return conds
