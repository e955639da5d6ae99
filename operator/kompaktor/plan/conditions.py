"""status.conditions in the Kubebuilder style: Ready / Progressing / Degraded."""

from __future__ import annotations

import re

from kompaktor.api.status import Condition, ConditionType, OptimizationJobStatus

#: `Reason: text` (a run's failure, BudgetExceeded, InvalidSpec), after a pool run's prefix.
_REASON = re.compile(r"^(?:pool [^:]+: )?([A-Z][A-Za-z]+):")


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
    troubled = next((s for s in status.stages if s.phase in ("Failed", "Retrying")), None)
    stage_reason = _reason(troubled.message) if troubled and troubled.message else None
    degraded_reason = _reason(message) or stage_reason or reason
    if not message and troubled is not None and troubled.phase == "Retrying":
        message = f"stage {troubled.name} is retrying: {troubled.message or 'its run failed'}"
    conds = list(status.conditions)
    conds = set_condition(conds, "Ready", phase == "Succeeded", reason, status.message or "", now)
    conds = set_condition(
        conds, "Progressing", phase in ("Pending", "Running"), reason, status.message or "", now
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


def _reason(message: str) -> str | None:
    """The machine-readable reason a message starts with (`OOMKilled: …`), if any."""
    found = _REASON.match(message)
    return found.group(1) if found else None
