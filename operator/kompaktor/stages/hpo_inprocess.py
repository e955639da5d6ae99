"""`kompaktor stage run --type hpo`: the search in one process, without a plan.

The same pure functions the plan uses (propose, trial_values, trial_context, select_best) drive
trials that run one after another in this process: each trial is the target stage's `run` on a
fresh copy of the input model, written and measured exactly as `kompaktor stage run` would
(test and validation metric, size, latency), with the pruner rebuilt from the trials before its
batch. The winner's model is this run's output; the trial records go into result.json.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kompaktor.api.status import TrialRecord
from kompaktor.errors import JobSpecError, StageError
from kompaktor.evaluate import AccuracyBound
from kompaktor.stages.base import PlanContext, Stage, StageContext, StageResult
from kompaktor.stages.hpo_checks import check
from kompaktor.stages.hpo_params import HpoParams, trial_params
from kompaktor.stages.hpo_proposals import is_done, propose
from kompaktor.stages.hpo_pruning import trial_context
from kompaktor.stages.hpo_report import result_details, result_metrics
from kompaktor.stages.hpo_scoring import TRIAL_METRICS, trial_values
from kompaktor.stages.hpo_winner import no_winner, select_best


def run_search(ctx: StageContext[HpoParams]) -> StageResult:
    from kompaktor.models import format_of
    from kompaktor.stages.base import registry

    p = ctx.params
    try:
        check(p, PlanContext("hpo", ctx.model.format, (), ctx.dataset.task))
    except ValueError as error:
        raise JobSpecError(f"stage (hpo): {error}") from None
    target = registry()[p.target]
    seed = p.seed if p.seed is not None else ctx.seed
    reference = _reference_figures(ctx)
    records: list[TrialRecord] = []
    paths: dict[int, Path] = {}
    while not is_done(p, records):
        batch = propose(p, records, p.parallelism, seed, metric_name=ctx.metric)
        if not batch:
            break
        before = list(records)  # a batch starts together: none sees the others' curves
        for point in batch:
            record, path = _trial(ctx, target, len(records), point, before, reference)
            records.append(record)
            if path is not None:
                paths[record.number] = path
    bound = AccuracyBound.of(ctx.metric, reference.get("referenceMetric"), ctx.max_drop)
    best = select_best(p, records, bound)
    if best is None:
        raise StageError(f"hpo: {no_winner(records, bound)}")
    details = result_details(p, records, best, bound)
    ctx.log(f"hpo: {details['selection']}, params {best.params}")
    for trial in details.get("paretoSet", []):
        ctx.log(f"hpo: Pareto set: trial {trial['number']} {trial['values']} {trial['params']}")
    path = paths[best.number]
    return StageResult(
        path=path,
        output_format=format_of(path),
        metrics=result_metrics(records, best),
        details=details,
    )


def _reference_figures(ctx: StageContext[HpoParams]) -> dict[str, float]:
    """The input model's figures every trial is bounded against (as the runner measures)."""
    from kompaktor.evaluate import has_rows, metric
    from kompaktor.models import predictor_for

    ref = predictor_for(ctx.reference)
    against = ref if ctx.metric == "fidelity" else None
    figures = {"referenceMetric": metric(ctx.metric, ref, ctx.dataset, "test", reference=against)}
    if has_rows(ctx.dataset, "val"):
        figures["referenceValMetric"] = metric(
            ctx.metric, ref, ctx.dataset, "val", reference=against
        )
    return figures


def _trial(
    ctx: StageContext[HpoParams],
    target: type[Stage[Any]],
    number: int,
    point: dict[str, Any],
    before: list[TrialRecord],
    reference: dict[str, float],
) -> tuple[TrialRecord, Path | None]:
    from kompaktor.models import load_model
    from kompaktor.stages.curves import trial_curve
    from kompaktor.stages.runner import output_metrics, write_model
    from kompaktor.stages.sparse_layers import run_with_sparse_layers
    from kompaktor.stages.validate import parse_params
    from kompaktor.training import seed_everything

    p = ctx.params

    def log(text: str) -> None:
        ctx.log(f"trial {number}: {text}")

    record = TrialRecord(stage="hpo", number=number, params=point, state="Running")
    work = ctx.work_dir / f"trial-{number}"
    work.mkdir(parents=True, exist_ok=True)
    try:
        params = parse_params(
            target.type, trial_params(p, point), where=f"stage (hpo): trial {number}"
        )
        context = trial_context(p, before, number, point, metric_name=ctx.metric)
        curve = trial_curve(context if target.reports_curve else None, ctx.metric, log)
        log(f"{target.type} with {point}")
        seed_everything(ctx.seed)
        result = run_with_sparse_layers(
            target(),
            StageContext(
                params=params,
                model=load_model(ctx.model.path),
                dataset=ctx.dataset,
                work_dir=work,
                seed=ctx.seed,
                metric=ctx.metric,
                reference=ctx.reference,
                resolve=ctx.resolve,
                log=log,
                curve=curve,
            ),
        )
        path, _ = write_model(result, ctx.dataset, work, target.type)
        metrics = output_metrics(ctx.metric, path, ctx.reference, ctx.dataset, result.metrics)
    except Exception as error:  # one failed trial does not end the search
        log(f"failed: {error}")
        failed = record.model_copy(update={"state": "Failed", "message": str(error)[:500]})
        return failed, None
    metrics = {**{k: v for k, v in metrics.items() if k in TRIAL_METRICS}, **reference}
    state = "Pruned" if curve.pruned else "Complete"
    values = trial_values(p, metrics, ctx.metric) if state == "Complete" else None
    log(f"{state.lower()}: {', '.join(f'{k} {v:.4g}' for k, v in sorted(metrics.items()))}")
    done = record.model_copy(
        update={"state": state, "metrics": metrics, "values": values, "curve": curve.points}
    )
    return done, path
