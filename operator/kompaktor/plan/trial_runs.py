"""An hpo stage's trials as runs: the trials `trials.advance` proposes are probed in the cache,
started, observed, stopped, revived and paid for, and the stage ends with the winner's output.
"""

from __future__ import annotations

from typing import Any

from kompaktor.api.run import RunRecord
from kompaktor.api.spec import StageSpec
from kompaktor.api.status import TrialRecord
from kompaktor.plan import spending
from kompaktor.plan import trials as trial_flow
from kompaktor.plan.clock import seconds_since
from kompaktor.plan.keys import output_uri, run_id
from kompaktor.plan.run_requests import run_request
from kompaktor.plan.stage_runs import learnt, stage_done
from kompaktor.plan.state import StepState
from kompaktor.plan.types import (
    CancelRun,
    EnsureRun,
    ProbeCache,
    RunFailed,
    RunStarted,
    WriteRecord,
)

#: The message of a trial the job's failure stopped: it ended Failed, but did not fail.
CANCELLED = "cancelled"
_IN_FLIGHT = ("Running", "Pending")


def cancelled(trial: TrialRecord) -> bool:
    """Whether the job's failure stopped `trial` (it is Failed, but its run did not fail)."""
    return trial.state == "Failed" and trial.message == CANCELLED


def awaiting_cache(work: StepState, key: str) -> int | None:
    """The trial whose cache probe for `key` is out (it is Pending), if any."""
    return next(
        (n for n, t in enumerate(work.trials) if t.state == "Pending" and t.key == key), None
    )


def running(work: StepState, rid: str) -> int | None:
    """The running trial whose current attempt is `rid`, if any (else the news is stale)."""
    for index, trial in enumerate(work.trials):
        if (
            trial.state == "Running"
            and trial.key
            and rid == run_id(trial.stage, trial.key, trial.attempts, trial.number)
        ):
            return index
    return None


def on_cache_probed(work: StepState, index: int, record: RunRecord | None) -> None:
    trial = work.trials[index]
    if record is not None:
        # A cache hit costs nothing now, as a cached stage: its record's energy was the
        # original run's, and counted then.
        done = trial_flow.complete(trial, record)
        work.trials[index] = trial_ended(work, done, None, energy_joules=0.0)
        return
    # Its Job and placement are learnt anew (a resumed local run's too).
    work.trials[index] = trial.model_copy(
        update={
            "state": "Running",
            "attempts": trial.attempts + 1,  # after a suspension: a new Job
            "attempt_start_time": None,
            "job_uid": None,
        }
    )


def on_started(work: StepState, index: int, obs: RunStarted) -> None:
    trial = work.trials[index]
    changes = learnt(work, obs, trial.job_uid, trial.attempt_start_time)
    work.trials[index] = trial.model_copy(update=changes)


def on_succeeded(work: StepState, index: int, record: RunRecord) -> None:
    trial = work.trials[index]
    done = trial_flow.complete(trial, record)
    # compact: hundreds of trials in status
    cost = round(spending.run_cost(work.ctx, record, trial_pool(work, trial)), 6)
    work.trials[index] = trial_ended(work, done, None, cost_usd=cost)


def on_failed(work: StepState, index: int, obs: RunFailed) -> None:
    message = f"{obs.reason}: {obs.message}"
    trial = work.trials[index]
    work.trials[index] = trial_ended(
        work, trial, obs.duration_seconds, state="Failed", message=message
    )


def trial_pool(work: StepState, trial: TrialRecord) -> str | None:
    """The pool a trial runs on: its hpo stage's."""
    return work.pool_for(work.spec.stages[work.spec.stage_index(trial.stage)])


def trial_ended(
    work: StepState, trial: TrialRecord, seconds: float | None, **update: Any
) -> TrialRecord:
    """`trial` done running: what only a running trial keeps goes (records stay compact),
    and an attempt that left no record and ran `seconds` is paid for (None: it left one)."""
    if seconds is not None:
        cost, joules = spending.attempt_price(work.ctx, trial_pool(work, trial), seconds)
        update = {"cost_usd": round(cost, 6), "energy_joules": round(joules, 1), **update}
    return trial.model_copy(update={"attempt_start_time": None, "job_uid": None, **update})


def stop_trial(work: StepState, trial: TrialRecord) -> TrialRecord:
    """A trial in flight, ended Failed `cancelled`: a running one's run is stopped and paid
    for the time since it was placed (as a stopped stage run is)."""
    ran = None
    if trial.key and trial.state == "Running":
        rid = run_id(trial.stage, trial.key, trial.attempts, trial.number)
        work.actions.append(CancelRun(rid))
        since = trial.attempt_start_time
        ran = seconds_since(since, work.now) if since else None
    return trial_ended(work, trial, ran, state="Failed", message=CANCELLED)


def revived(work: StepState, trial: TrialRecord) -> TrialRecord:
    """A stopped trial to run again as a new attempt: Pending with its number and params,
    what it ran kept in `replaced_*` (its next attempt's figures are its own)."""
    spending.replaced(work, trial.cost_usd, trial.energy_joules)
    update = {"state": "Pending", "message": None, "cost_usd": None, "energy_joules": None}
    return trial.model_copy(update=update)


def paused_trial(work: StepState, trial: TrialRecord) -> TrialRecord:
    """A trial in flight that a suspension stops: Pending again with its number and params,
    so the search goes on as it would have (dropped, its number went to the next trial
    proposed, twice over when a later one had finished, and it never ran)."""
    return revived(work, stop_trial(work, trial))


def stop_in_flight(work: StepState, *, pause: bool) -> None:
    """Stop the trials in flight: ended Failed `cancelled` (they run again if the job does:
    `drive_hpo`), or with `pause` (a suspension), Pending again to go on where they were."""
    stop = paused_trial if pause else stop_trial
    work.trials = [stop(work, t) if t.state in _IN_FLIGHT else t for t in work.trials]


def drop_trials(work: StepState, stage: str) -> None:
    """Drop the trials of a re-keyed stage: those in flight stopped, all still paid for."""
    for trial in work.trials:
        if trial.stage == stage:
            if trial.state in _IN_FLIGHT:
                trial = stop_trial(work, trial)
            spending.replaced(work, trial.cost_usd, trial.energy_joules)
    work.trials = [t for t in work.trials if t.stage != stage]


def drive_hpo(
    work: StepState, index: int, stage: StageSpec, params: Any, key: str, input_uri: str
) -> None:
    """Probe the cache for the stage's own key first; else score and propose trials, ask
    for their runs, and end the stage with the winner, or failed when there is none."""
    rec = work.stages[index]
    out = output_uri(work.ctx.artifacts_uri, stage.type, key)
    if rec.phase == "Pending" and rec.attempts == 0:
        work.actions.append(ProbeCache(key, out))
        return
    if rec.phase == "Failed":
        work.fail(f"stage {stage.name} failed: {rec.message}")
        return
    # Trials the job's failure cancelled run again now it runs again (a finished local
    # run's rerun keeps them): as failures they would count in failedTrials, in "all N
    # trials failed" and in the sampler's history, though they never ran to an end.
    work.trials = [
        revived(work, t) if t.stage == stage.name and cancelled(t) else t for t in work.trials
    ]
    outcome = trial_flow.advance(
        params=params,
        records=[t for t in work.trials if t.stage == stage.name],
        input_digest=rec.input_digest or "",
        dataset_digest=work.status.dataset_digest or "",
        spec=work.spec,
        stage=stage,
    )
    work.trials = [t for t in work.trials if t.stage != stage.name] + outcome.records
    _ask_for_runs(work, index, stage, params, outcome, input_uri)
    if outcome.best is not None:
        record = trial_flow.stage_record(params, outcome, out, work.spec)
        work.actions.append(WriteRecord(out, record))
        stage_done(work, (index, None), record, cached=False)
        # The stage spent what its trials did; its message says why the winner won.
        why = work.stages[index].message or record.details["selection"]
        work.update_stage(index, message=why, **trial_flow.spent(outcome.records))
    elif outcome.failure is not None:
        work.update_stage(
            index, phase="Failed", message=outcome.failure, completion_time=work.stamp
        )
        work.fail(f"stage {stage.name} failed: {outcome.failure}")


def _ask_for_runs(
    work: StepState,
    index: int,
    stage: StageSpec,
    params: Any,
    outcome: trial_flow.HpoOutcome,
    input_uri: str,
) -> None:
    """A cache probe for each pending trial, the run of each running one."""
    for trial in outcome.records:
        if trial.key is None or trial.state not in _IN_FLIGHT:
            continue
        context = None
        if trial.state == "Running":
            metric = work.spec.objective.metric
            context = trial_flow.context(params, outcome.records, trial, metric)
        request = run_request(
            work, index, outcome.target, trial_flow.target_params(params, trial), trial.key,
            input_uri, max(trial.attempts, 1), work.pool_for(stage), trial.number, context,
        )  # fmt: skip
        if trial.state == "Pending":
            work.actions.append(ProbeCache(trial.key, request.output_uri))
        else:
            work.actions.append(EnsureRun(request))
