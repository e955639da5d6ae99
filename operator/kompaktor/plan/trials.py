"""HPO trials inside the plan: each trial is a run of the target stage, recorded in status.

The search itself (Optuna) lives in kompaktor.stages.hpo as pure functions; this module only
decides which trials exist, and rebuilds everything from `status.trials` so a restart loses
no finished trial.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kompaktor.api.run import RunRecord
from kompaktor.api.spec import OptimizationJobSpec, StageSpec
from kompaktor.api.status import TrialRecord
from kompaktor.models import format_of
from kompaktor.plan.keys import run_key
from kompaktor.stages import hpo

#: The only metrics a trial keeps: enough to rank, gate and report it, small enough for 300 trials.
TRIAL_METRICS = ("metric", "referenceMetric", "latencyMs", "sizeBytes", "parameters")


@dataclass(frozen=True)
class HpoOutcome:
    target: str
    records: list[TrialRecord]
    best: TrialRecord | None = None
    failure: str | None = None


def complete(trial: TrialRecord, record: RunRecord, spec: OptimizationJobSpec) -> TrialRecord:
    """A trial whose run finished (or was found in the cache)."""
    return trial.model_copy(
        update={
            "state": "Complete",
            "output": record.output,
            "metrics": {k: record.metrics[k] for k in TRIAL_METRICS if k in record.metrics},
            "energy_joules": record.energy_joules,
        }
    )


def target_params(params: hpo.HpoParams, trial: TrialRecord) -> dict[str, Any]:
    return hpo.trial_params(params, trial.params)


def _seed(params: hpo.HpoParams, spec: OptimizationJobSpec) -> int:
    return params.seed if params.seed is not None else spec.seed


def advance(
    *,
    params: hpo.HpoParams,
    records: list[TrialRecord],
    input_digest: str,
    dataset_digest: str,
    spec: OptimizationJobSpec,
    stage: StageSpec,
) -> HpoOutcome:
    """Score finished trials, propose new ones up to `parallelism`, or pick the best."""
    metric = spec.objective.metric
    scored = [
        r.model_copy(update={"values": hpo.trial_values(params, r.metrics, metric)})
        if r.state == "Complete" and r.values is None
        else r
        for r in records
    ]
    if hpo.is_done(params, scored):
        baseline = next(
            (r.metrics["referenceMetric"] for r in scored if "referenceMetric" in r.metrics), None
        )
        best = hpo.select_best(
            params, scored, metric_name=metric, baseline=baseline, max_drop=spec.objective.max_drop
        )
        if best is None:
            failure = (
                f"NoTrialWithinBound: none of {len(scored)} trials kept {metric} within "
                f"maxDrop {spec.objective.max_drop} of the input model"
            )
            return HpoOutcome(params.target, scored, failure=failure)
        return HpoOutcome(params.target, scored, best=best)
    active = sum(1 for r in scored if r.state in ("Pending", "Running"))
    count = min(params.parallelism - active, params.trials - len(scored))
    if count > 0:
        for suggested in hpo.propose(
            params, scored, count, _seed(params, spec), metric_name=metric
        ):
            key = run_key(
                input_digest=input_digest,
                stage_type=params.target,
                params=hpo.trial_params(params, suggested),
                dataset_digest=dataset_digest,
                metric=metric,
                seed=spec.seed,
            )
            number = len(scored)
            scored.append(TrialRecord(stage=stage.name, number=number, params=suggested, key=key))
    return HpoOutcome(params.target, scored)


def stage_record(
    params: hpo.HpoParams, outcome: HpoOutcome, output_uri: str, spec: OptimizationJobSpec
) -> RunRecord:
    """The HPO stage's own result: the chosen trial's output, stored under the stage's key."""
    best = outcome.best
    assert best is not None and best.output is not None
    finished = [r for r in outcome.records if r.state == "Complete"]
    return RunRecord(
        type="hpo",
        params={"target": params.target, "bestParams": best.params},
        output=best.output,
        format=format_of(best.output.uri),
        metrics={**best.metrics, "bestTrial": float(best.number), "trials": float(len(finished))},
        details={
            "bestTrial": best.number,
            "bestParams": best.params,
            "trials": [
                {"number": r.number, "params": r.params, "values": r.values, "state": r.state}
                for r in outcome.records
            ],
            "outputUri": output_uri,
        },
    )
