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
            "model), sizeBytes, parameters, latencyMs (batch 1 p50); plus the technique's own."
        ),
    )
    details: dict[str, Any] = Field(default_factory=dict)
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


class RunFailure(ApiModel):
    """The content of failure.json: why a run failed, kept with its partial artifacts."""

    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="ignore", frozen=True
    )
    type: str
    reason: str
    message: str
    retryable: bool = True
