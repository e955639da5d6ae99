"""What one stage run leaves behind: `result.json` beside its model, and its pod's summary.

`result.json` is written last, so its presence under an output prefix means the run finished;
that is what makes a run key reusable (the cache) and what the plan reads back.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import ConfigDict, Field
from pydantic.alias_generators import to_camel

from kompaktor.api.spec import ApiModel
from kompaktor.api.status import EnergyMethod, OutputRef

RESULT_FILE = "result.json"
FAILURE_FILE = "failure.json"
LOG_FILE = "stage.log"
TERMINATION_LIMIT = 4096

#: Exit codes of `kompaktor stage run`: the plan retries only a plain failure.
EXIT_OK, EXIT_FAILED, EXIT_INVALID = 0, 1, 2
#: Most points a validation curve keeps (result.json, trial records, what a pruner sees).
MAX_CURVE = 25
#: Significant digits a curve point keeps: enough to rank trials, small in status.
CURVE_DIGITS = 4


def curve_stride(epochs: int) -> int:
    """Epochs per curve point: one point per epoch, or fewer so `epochs` give at most
    MAX_CURVE points."""
    return max(1, -(-epochs // MAX_CURVE))


def round_point(value: float, digits: int = CURVE_DIGITS) -> float:
    """A float rounded to `digits` significant digits (NaN and inf pass through)."""
    if value != value or value in (float("inf"), float("-inf")):
        return value
    return float(f"{value:.{digits}g}")


class RunRecord(ApiModel):
    """The content of result.json (camelCase on disk)."""

    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="ignore", frozen=True
    )
    type: str
    params: dict[str, Any] = Field(default_factory=dict)
    output: OutputRef
    format: Literal["pt2", "torchscript", "onnx"]
    metrics: dict[str, float] = Field(
        default_factory=dict,
        description=(
            "Always: metric (output, test split), inputMetric, referenceMetric (the job's input "
            "model), sizeBytes, parameters, latencyMs (p50: batch 1, one thread, unless the "
            "stage timed it itself) with latencyBatch and latencyThreads (what it was timed "
            "with; quantize, timing its own at batch 1, one thread, records neither); valMetric "
            "and referenceValMetric (the same on validation rows) when there are any; "
            "latencyLockWaitSeconds (seconds waited for the timing lock, which keeps sibling "
            "runs from timing or training meanwhile) and pausedForTimingSeconds (seconds this "
            "run's training, evaluation or calibration paused for sibling runs' timings) when "
            "a lock was named (kompaktor run; quantize records no wait of its own); plus the "
            "technique's own."
        ),
    )
    details: dict[str, Any] = Field(default_factory=dict)
    curve: list[float] = Field(
        default_factory=list,
        description=(
            f"The objective metric on validation rows during training (train, prune "
            f"fine-tuning): one point per epoch, or per `stride` epochs, at most {MAX_CURVE}."
        ),
    )
    pruned: bool = Field(
        default=False,
        description="An HPO pruner stopped this trial early: the curve ends where it stopped.",
    )
    start_time: str | None = None
    completion_time: str | None = None
    duration_seconds: float = 0.0
    cpu_seconds: float = 0.0
    energy_joules: float | None = None
    energy_method: EnergyMethod | None = None
    node: str | None = None

    def summary(self) -> str:
        """A termination message: the record without details, never over 4 KB."""
        text = json.dumps(self.model_dump(by_alias=True, exclude={"details"}, mode="json"))
        if len(text.encode()) > TERMINATION_LIMIT:
            slim = self.model_dump(by_alias=True, exclude={"details", "params"}, mode="json")
            text = json.dumps(slim)[:TERMINATION_LIMIT]
        return text


class TrialPoint(ApiModel):
    """A finished trial as a pruner sees it: its state, final value and validation curve."""

    number: int = Field(ge=0)
    state: Literal["Complete", "Pruned"]
    value: float | None = None
    curve: list[float] = Field(default_factory=list, max_length=MAX_CURVE)


class PrunerSpec(ApiModel):
    """An Optuna pruner and its options (the hpo stage's params, as the trial needs them).

    Steps count curve points from 1, the resource a trial has used: `warmup_steps` points come
    before the first judged one, a rung at `min_resource` judges a trial after that many points,
    and `max_resource` is the most points any trial of the search reports."""

    name: Literal["median", "percentile", "successiveHalving", "hyperband"]
    startup_trials: int = Field(5, ge=0)
    warmup_steps: int = Field(0, ge=0)
    percentile: float = Field(25.0, ge=0, le=100)
    min_resource: int = Field(1, ge=1)
    reduction_factor: int = Field(3, ge=2)
    max_resource: int = Field(MAX_CURVE, ge=1)


class TrialContext(ApiModel):
    """What an HPO trial run needs to prune itself (`kompaktor stage run --trial JSON`).

    The plan passes it when it starts the trial; the run rebuilds the study from `history`
    (the finished trials numbered below it; other numbers count as unfinished), joins it as
    trial `number`, reports a curve point every `stride` epochs and stops when the pruner says.
    """

    number: int = Field(ge=0)
    maximize: bool = True
    stride: int = Field(1, ge=1)
    points: int | None = Field(
        None,
        ge=1,
        description="The curve points this trial reports (default: the pruner's maxResource). "
        "The last is never judged: training is over there, and a stop would only discard a "
        "finished run.",
    )
    pruner: PrunerSpec
    history: list[TrialPoint] = Field(default_factory=list)


class RunFailure(ApiModel):
    """The content of failure.json: why a run failed, kept with its partial artifacts."""

    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="ignore", frozen=True
    )
    type: str
    reason: str
    message: str
    retryable: bool = True
