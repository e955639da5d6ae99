"""HPO trials inside the plan: each trial is a run of the target stage, recorded in status.

The search itself (Optuna) lives in kompaktor.stages.hpo_* as pure functions; this module only
decides which trials exist, and rebuilds everything from `status.trials` so a restart loses
no finished trial.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kompaktor.api.run import MAX_CURVE, RunRecord, round_point
from kompaktor.api.spec import OptimizationJobSpec, StageSpec
from kompaktor.api.status import METRIC_DIGITS, TrialRecord
from kompaktor.evaluate import AccuracyBound
from kompaktor.models import format_of
from kompaktor.plan.keys import run_key
from kompaktor.stages.hpo_params import HpoParams, trial_params
from kompaktor.stages.hpo_proposals import is_done, propose_trial, ready
from kompaktor.stages.hpo_pruning import trial_context, trial_key_params
from kompaktor.stages.hpo_report import result_details, result_metrics
from kompaktor.stages.hpo_scoring import TRIAL_METRICS, trial_values
from kompaktor.stages.hpo_winner import no_winner, select_best


@dataclass(frozen=True)
class HpoOutcome:
    target: str
    records: list[TrialRecord]
    best: TrialRecord | None = None
    failure: str | None = None


def complete(trial: TrialRecord, record: RunRecord) -> TrialRecord:
    """A trial whose run finished (or was found in the cache): Pruned when the pruner stopped
    it, else Complete; its figures rounded and its curve capped, to keep status small."""
    metrics = {k: _round(record.metrics[k]) for k in TRIAL_METRICS if k in record.metrics}
    return trial.model_copy(
        update={
            "state": "Pruned" if record.pruned else "Complete",
            "output": record.output,
            "metrics": metrics,
            "curve": [round_point(v) for v in record.curve[:MAX_CURVE]] or None,
            "energy_joules": None
            if record.energy_joules is None
            else round(record.energy_joules, 1),
        }
    )


def _round(value: float) -> float:
    return value if float(value).is_integer() else round_point(value, METRIC_DIGITS)


def keep_leader_output(records: list[TrialRecord], leader: TrialRecord | None) -> list[TrialRecord]:
    """Only the leading trial keeps its output in status (a trial that is not the winner now
    never becomes it: `select_best`); every trial's model stays in the store under its key."""
    number = None if leader is None else leader.number
    return [
        r.model_copy(update={"output": None})
        if r.output is not None and r.number != number and r.state in ("Complete", "Pruned")
        else r
        for r in records
    ]


def target_params(params: HpoParams, trial: TrialRecord) -> dict[str, Any]:
    return trial_params(params, trial.params)


def context(
    params: HpoParams, records: list[TrialRecord], trial: TrialRecord, metric: str
) -> dict[str, Any] | None:
    """The `--trial` context a trial starts with when the search prunes (else None)."""
    found = trial_context(params, records, trial.number, trial.params, metric_name=metric)
    return None if found is None else found.model_dump(by_alias=True, mode="json")


def _seed(params: HpoParams, spec: OptimizationJobSpec) -> int:
    return params.seed if params.seed is not None else spec.seed


def advance(
    *,
    params: HpoParams,
    records: list[TrialRecord],
    input_digest: str,
    dataset_digest: str,
    spec: OptimizationJobSpec,
    stage: StageSpec,
) -> HpoOutcome:
    """Score finished trials, propose new ones up to `parallelism`, or pick the best.

    A trial is proposed only once the trials it sees have finished (`ready`), so the same
    job and seed give the same trials and the same winner whatever order the runs finish in.
    """
    metric = spec.objective.metric
    scored = [
        r.model_copy(update={"values": trial_values(params, r.metrics, metric)})
        if r.state == "Complete" and r.values is None
        else r
        for r in records
    ]
    bound = _bound(spec, scored)
    best = select_best(params, scored, bound)
    scored = keep_leader_output(scored, best)
    if is_done(params, scored):
        if best is not None and best.output is None:
            # An edited objective crowned a trial whose output status no longer holds: probe
            # the store for it again (a cache hit), then finish.
            again = best.model_copy(update={"state": "Pending", "attempts": 0})
            return HpoOutcome(params.target, [again if r is best else r for r in scored])
        if best is None:
            failure = no_winner(scored, bound)
            return HpoOutcome(params.target, scored, failure=failure)
        return HpoOutcome(params.target, scored, best=best)
    active = sum(1 for r in scored if r.state in ("Pending", "Running"))
    count = min(params.parallelism - active, params.trials - len(scored))
    for _ in range(max(count, 0)):
        # One trial at a time, in number order: its point depends on its number and on the
        # trials it sees (`history_end`), never on which runs happened to finish first.
        number = len(scored)
        if not ready(params, scored, number):
            break
        suggested = propose_trial(params, scored, number, _seed(params, spec), metric_name=metric)
        if suggested is None:
            break
        key = run_key(
            input_digest=input_digest,
            stage_type=params.target,
            params=trial_key_params(params, suggested),
            dataset_digest=dataset_digest,
            metric=metric,
            seed=spec.seed,
        )
        scored.append(TrialRecord(stage=stage.name, number=number, params=suggested, key=key))
    return HpoOutcome(params.target, scored)


def spent(records: list[TrialRecord]) -> dict[str, float]:
    """What an hpo stage spent: its trials' cost and energy, restored trials' included."""
    return {
        "cost_usd": sum(r.cost_usd or 0.0 for r in records),
        "energy_joules": sum(r.energy_joules or 0.0 for r in records),
    }


def _bound(spec: OptimizationJobSpec, records: list[TrialRecord]) -> AccuracyBound:
    """The job's objective as the trials are bounded by: its maxDrop against the input model's
    test metric as the trials measured it (no baseline before any did)."""
    baseline = next(
        (r.metrics["referenceMetric"] for r in records if "referenceMetric" in r.metrics), None
    )
    return AccuracyBound(spec.objective.metric, baseline, spec.objective.max_drop)


def stage_record(
    params: HpoParams, outcome: HpoOutcome, output_uri: str, spec: OptimizationJobSpec
) -> RunRecord:
    """The HPO stage's own result: the chosen trial's output, stored under the stage's key,
    with the metrics and details the in-process search reports."""
    best = outcome.best
    assert best is not None and best.output is not None
    details = result_details(params, outcome.records, best, _bound(spec, outcome.records))
    return RunRecord(
        type="hpo",
        params={"target": params.target, "bestParams": best.params},
        output=best.output,
        format=format_of(best.output.uri),
        metrics={**best.metrics, **result_metrics(outcome.records, best)},
        details={**details, "outputUri": output_uri},
    )
