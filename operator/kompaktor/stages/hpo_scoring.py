"""What a finished trial's metrics count for: the figures it keeps, its objective values and
the figure it is ranked by (validation rows when it has them: the test split never steers the
search)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

from kompaktor.api.status import TrialRecord
from kompaktor.errors import StageError
from kompaktor.stages.hpo_params import HpoParams

#: Where each objective's figure is in a run's metrics (result.json / TrialRecord.metrics).
OBJECTIVE_METRICS: dict[str, str] = {
    "metric": "metric",
    "latency": "latencyMs",
    "size": "sizeBytes",
}


#: The only metrics a trial keeps: enough to rank, gate and report it, small enough for 300 trials.
#: latencyLockWaitSeconds, where present, says its latency was timed with no sibling timing.
TRIAL_METRICS = (
    "metric",
    "valMetric",
    "referenceMetric",
    "referenceValMetric",
    "latencyMs",
    "latencyLockWaitSeconds",
    "sizeBytes",
    "parameters",
)


def trial_values(params: HpoParams, metrics: Mapping[str, float], metric_name: str) -> list[float]:
    """A finished run's objective values, in `objectives` order, from its metrics. The metric
    objective is the validation metric when the run has one: the test split never steers the
    search."""
    values = []
    for objective in params.objectives:
        key = OBJECTIVE_METRICS[objective]
        if objective == "metric" and "valMetric" in metrics:
            key = "valMetric"
        if key not in metrics and objective == "metric" and metric_name in metrics:
            key = metric_name
        if key not in metrics:
            raise StageError(f"hpo: the trial's result has no {key} to score objective {objective}")
        values.append(float(metrics[key]))
    return values


def metric_rows(record: TrialRecord) -> Literal["validation", "test"]:
    """The rows a trial's metric objective was valued on (`ranked`, `trial_values`)."""
    return "validation" if "valMetric" in record.metrics else "test"


def ranked(record: TrialRecord) -> tuple[float, float | None] | None:
    """The figure a trial is ranked by, and the input model's figure on the same rows: the
    validation metric when the run measured one, else the test metric."""
    if "valMetric" in record.metrics:
        return record.metrics["valMetric"], record.metrics.get("referenceValMetric")
    if "metric" in record.metrics:
        return record.metrics["metric"], record.metrics.get("referenceMetric")
    return None
