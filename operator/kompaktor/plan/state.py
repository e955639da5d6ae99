"""One step's working copy of the job's status, and the actions the step collects.

The plan's other modules are functions of this state. They change a run through `update_slot`,
so that a pool run's change always sums up into its stage's record.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from typing import Any

from kompaktor.api.spec import StageSpec
from kompaktor.api.status import OptimizationJobStatus, RunSlot, StageStatus, TrialRecord
from kompaktor.plan.clock import iso
from kompaktor.plan.pool_runs import Slot, summed
from kompaktor.plan.types import Action, EmitEvent, JobContext


class StepState:
    """What one step works on: the job, the status as it goes, the time, and the actions."""

    def __init__(self, ctx: JobContext, status: OptimizationJobStatus, now: datetime) -> None:
        self.ctx, self.spec, self.now = ctx, ctx.spec, now
        self.stamp = iso(now)
        self.status = status
        self.phase_before = status.phase
        self.stages: list[StageStatus] = list(status.stages)
        self.trials: list[TrialRecord] = list(status.trials)
        self.actions: list[Action] = []

    def event(self, reason: str, message: str, warning: bool = False) -> None:
        self.actions.append(EmitEvent("Warning" if warning else "Normal", reason, message))

    def fail(self, message: str) -> None:
        self.status = self.status.model_copy(update={"phase": "Failed", "message": message})

    def update_stage(self, index: int, **changes: Any) -> StageStatus:
        self.stages[index] = self.stages[index].model_copy(update=changes)
        return self.stages[index]

    def slots(self, index: int) -> list[tuple[Slot, RunSlot]]:
        """The stage's runs: one per pool for a stage on several pools, else its own."""
        rec = self.stages[index]
        if rec.pools is None:
            return [((index, None), rec)]
        return [((index, number), run) for number, run in enumerate(rec.pools)]

    def runs(self) -> Iterator[tuple[StageStatus, Slot, RunSlot]]:
        """Every stage's runs in order, each with its stage's record as it was when reached
        (a caller may update the runs it is given)."""
        for index, rec in enumerate(self.stages):
            for at, run in self.slots(index):
                yield rec, at, run

    def slot(self, at: Slot) -> RunSlot:
        index, number = at
        rec = self.stages[index]
        return rec if number is None or rec.pools is None else rec.pools[number]

    def update_slot(self, at: Slot, **changes: Any) -> None:
        index, number = at
        rec = self.stages[index]
        if number is None or rec.pools is None:
            self.update_stage(index, **changes)
            return
        runs = list(rec.pools)
        runs[number] = runs[number].model_copy(update=changes)
        self.stages[index] = summed(rec, runs)

    def named(self, at: Slot) -> str:
        """How events and messages name a run: `stage bench`, or `stage bench on pool arm`."""
        rec = self.stages[at[0]]
        where = "" if at[1] is None else f" on pool {self.slot(at).pool}"
        return f"stage {rec.name}{where}"

    def pool_for(self, stage: StageSpec) -> str | None:
        return stage.pool_names[0] if stage.pool_names else self.ctx.default_pool
