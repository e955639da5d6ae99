"""The search's result as the hpo stage reports it, plan-run and in-process alike: its
metrics, and details naming the winner and why, every trial and the Pareto set."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from kompaktor.api.status import TrialRecord
from kompaktor.evaluate import AccuracyBound
from kompaktor.stages.hpo_params import HpoParams
from kompaktor.stages.hpo_proposals import FINISHED
from kompaktor.stages.hpo_scoring import metric_rows
from kompaktor.stages.hpo_winner import pareto_set, selection_reason


def result_metrics(records: Sequence[TrialRecord], best: TrialRecord) -> dict[str, float]:
    """The search's own figures in the stage's metrics (plan-run and in-process alike)."""
    counts = {s: sum(r.state == s for r in records) for s in FINISHED}
    return {
        "bestTrial": float(best.number),
        "trials": float(counts["Complete"]),
        "prunedTrials": float(counts["Pruned"]),
        "failedTrials": float(counts["Failed"]),
    }


def result_details(
    params: HpoParams, records: Sequence[TrialRecord], best: TrialRecord, bound: AccuracyBound
) -> dict[str, Any]:
    """The stage's result details (plan-run and in-process alike): the winner and why, every
    trial, and for several objectives the Pareto set (number, params, values by objective)
    and the rows its metric values were measured on (`metricRows`)."""
    details: dict[str, Any] = {
        "bestTrial": best.number,
        "bestParams": best.params,
        "selection": selection_reason(params, records, best, bound),
    }
    if len(params.objectives) > 1:
        details["paretoSet"] = [
            {
                "number": r.number,
                "params": r.params,
                "values": dict(zip(params.objectives, r.values or [], strict=True)),
            }
            for r in pareto_set(params, records, metric_name=bound.metric)
        ]
        if "metric" in params.objectives:
            details["metricRows"] = metric_rows(best)
    return {**details, "trials": trials_report(records)}


def trials_report(records: Sequence[TrialRecord]) -> list[dict[str, Any]]:
    """Every trial as the hpo stage's result.json lists it (plan-run and in-process alike)."""
    return [
        {
            "number": r.number,
            "params": r.params,
            "state": r.state,
            "values": r.values,
            "curve": r.curve,
            **({"message": r.message} if r.message else {}),
        }
        for r in records
    ]
