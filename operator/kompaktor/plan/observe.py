"""What the driver saw since the last step, applied to status: the inputs' digests, cache
answers, and runs started, succeeded or failed, each handed to the stage run or the hpo trial
it is about."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

from kompaktor.plan import stage_runs, trial_runs
from kompaktor.plan.pool_runs import Slot
from kompaktor.plan.state import StepState
from kompaktor.plan.types import (
    CacheProbed,
    InputsProbed,
    Observation,
    ProbeFailed,
    RunFailed,
    RunStarted,
    RunSucceeded,
)

_News = TypeVar("_News")


def observe(work: StepState, observations: Sequence[Observation]) -> None:
    for obs in observations:
        match obs:
            case InputsProbed():
                work.status = work.status.model_copy(
                    update={
                        "input_digest": obs.model_digest,
                        "dataset_digest": obs.dataset_digest,
                        "model_file_digests": dict(obs.model_files) or None,
                    }
                )
            case ProbeFailed():
                work.fail(f"{obs.reason}: {obs.message}")
            case CacheProbed():
                found = (
                    stage_runs.awaiting_cache(work, obs.key),
                    trial_runs.awaiting_cache(work, obs.key),
                )
                on_stage, on_trial = stage_runs.on_cache_probed, trial_runs.on_cache_probed
                _hand_over(work, found, obs.record, on_stage, on_trial)
            case RunStarted():
                found = _running(work, obs.run_id)
                _hand_over(work, found, obs, stage_runs.on_started, trial_runs.on_started)
            case RunSucceeded():
                found = _running(work, obs.run_id)
                _hand_over(
                    work, found, obs.record, stage_runs.on_succeeded, trial_runs.on_succeeded
                )
            case RunFailed():
                found = _running(work, obs.run_id)
                _hand_over(work, found, obs, stage_runs.on_failed, trial_runs.on_failed)


def _running(work: StepState, rid: str) -> tuple[Slot | None, int | None]:
    """The stage run and the trial whose current attempt is `rid` (the stage run goes first)."""
    return stage_runs.running(work, rid), trial_runs.running(work, rid)


def _hand_over(
    work: StepState,
    found: tuple[Slot | None, int | None],
    news: _News,
    on_stage: Callable[[StepState, Slot, _News], None],
    on_trial: Callable[[StepState, int, _News], None],
) -> None:
    """Hand `news` to the stage run it is about, else to the trial; to neither when status
    no longer waits for it (a run stopped or replaced since: the news is stale)."""
    stage_at, trial_at = found
    if stage_at is not None:
        on_stage(work, stage_at, news)
    elif trial_at is not None:
        on_trial(work, trial_at, news)
