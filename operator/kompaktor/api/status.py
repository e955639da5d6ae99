"""The OptimizationJob status: what the plan records and `kubectl get oj` shows."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import ConfigDict, Field
from pydantic.alias_generators import to_camel

from kompaktor.api.spec import ApiModel

JobPhase = Literal["Pending", "Running", "Succeeded", "Failed", "Cancelled", "Suspended"]
StagePhase = Literal["Pending", "Running", "Retrying", "Succeeded", "Failed", "Cancelled"]
TrialState = Literal["Pending", "Running", "Complete", "Failed", "Pruned"]
#: Kubebuilder's Ready/Progressing/Degraded, and kstatus's abnormal-true Reconciling/Stalled
#: (what Flux's health checks read: without Stalled a failed job is "in progress" to them).
ConditionType = Literal["Ready", "Progressing", "Degraded", "Reconciling", "Stalled"]
EnergyMethod = Literal["nvml", "rapl", "estimate"]

#: Significant digits of a trial's metrics in status.
METRIC_DIGITS = 5


class StatusModel(ApiModel):
    """Status records are rewritten by the plan, so they are plain mutable-free values too."""

    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="ignore", frozen=True
    )


class OutputRef(StatusModel):
    uri: str = Field(description="Where the stage's output model is stored.")
    digest: str = Field(description="sha256 of the output model file.")


class RunSlot(StatusModel):
    """Where one run of a stage stands: the stage's own, or one pool's of a stage that runs on
    several pools (a benchmark's `pools`)."""

    phase: StagePhase = "Pending"
    key: str | None = Field(
        default=None,
        description="Digest of (input digest, stage type, params, dataset): the cache key.",
    )
    attempts: int = Field(default=0, description="Runs started for the current key.")
    interrupted: int | None = Field(
        default=None,
        description="Of attempts, those a suspension (spec.suspend) stopped: they do not "
        "count against retries.",
    )
    cached: bool = Field(default=False, description="The output was reused from an earlier run.")
    pool: str | None = None
    node: str | None = None
    start_time: str | None = None
    attempt_start_time: str | None = Field(
        default=None,
        description="When the current attempt was seen placed on a node: a run whose Job was "
        "deleted, or that a suspension stopped, is paid for from then when no pod is left to "
        "say how long it ran.",
    )
    job_uid: str | None = Field(
        default=None,
        description="The uid of the current attempt's Job once the operator saw it: a Job "
        "missing after that was deleted under the run (before, it may not exist yet).",
    )
    completion_time: str | None = None
    next_retry_time: str | None = None
    output: OutputRef | None = None
    metrics: dict[str, float] = Field(default_factory=dict)
    cost_usd: float | None = Field(default=None, alias="costUSD")
    energy_joules: float | None = None
    energy_method: EnergyMethod | None = None
    message: str | None = None


class PoolRun(RunSlot):
    """One pool's run of a stage that runs on several pools."""


class StageStatus(RunSlot):
    """A stage. One that runs on several pools keeps each pool's run in `pools`; its own
    fields sum them up: the first pool's metrics and output, every pool's cost and energy."""

    name: str
    type: str
    input_digest: str | None = None
    pools: list[PoolRun] | None = Field(
        default=None,
        description="Each pool's run, in the order spec.stages[].pools names them (benchmark "
        "on several pools only).",
    )

    def runs(self) -> list[RunSlot]:
        """Its runs: each pool's, or its own."""
        return list(self.pools) if self.pools is not None else [self]


class TrialRecord(StatusModel):
    """One HPO trial, compact enough that hundreds fit in a status."""

    stage: str
    number: int
    params: dict[str, Any]
    state: TrialState = "Pending"
    values: list[float] | None = Field(
        default=None, description="The objective values the search ranks it by (complete)."
    )
    metrics: dict[str, float] = Field(
        default_factory=dict,
        description="metric, valMetric, their reference figures, latencyMs, sizeBytes and "
        f"parameters only ({METRIC_DIGITS} significant digits).",
    )
    curve: list[float] | None = Field(
        default=None,
        description="Validation metric during training (at most 25 points): what HPO pruners "
        "compare trials by.",
    )
    key: str | None = Field(
        default=None, description="The run's cache key: its output is stored under it."
    )
    attempts: int = 0
    output: OutputRef | None = Field(
        default=None,
        description="Kept for the leading trial only (every trial's model stays under its key).",
    )
    cost_usd: float | None = Field(default=None, alias="costUSD")
    energy_joules: float | None = None
    message: str | None = None
    attempt_start_time: str | None = Field(
        default=None,
        description="While it runs: when its pod was seen placed on a node (what a deleted Job "
        "or a suspension pays for).",
    )
    job_uid: str | None = Field(
        default=None,
        description="While it runs: the uid of its Job once seen (a Job missing after that "
        "was deleted).",
    )


class JobResult(StatusModel):
    """The job's headline: its last output, and the figures of the benchmark that timed it."""

    uri: str | None = Field(default=None, description="The last stage's output model.")
    metric: float | None = Field(default=None, description="Its objective metric (test rows).")
    baseline_metric: float | None = Field(
        default=None, description="The input model's objective metric on the same rows."
    )
    speedup: float | None = Field(
        default=None,
        description="Over the input model, at the benchmark's smallest batch size. Unset when "
        "no benchmark timed this output (none ran, or a later stage changed the model).",
    )
    size_ratio: float | None = Field(
        default=None, description="Its file size over the input model's."
    )
    latency_ms: float | None = Field(
        default=None,
        description="Per call at the benchmark's smallest batch size, else at batch 1 as every "
        "stage run measures it.",
    )


class Condition(StatusModel):
    type: ConditionType
    status: Literal["True", "False", "Unknown"]
    reason: str
    message: str = ""
    last_transition_time: str | None = None


class OptimizationJobStatus(StatusModel):
    phase: JobPhase = "Pending"
    observed_generation: int | None = None
    stage: str | None = Field(default=None, description="The stage running now (or last run).")
    input_digest: str | None = Field(default=None, description="sha256 of the input model.")
    dataset_digest: str | None = Field(default=None, description="Digest of the dataset.")
    model_file_digests: dict[str, str] | None = Field(
        default=None,
        description="URI -> sha256 of each model file that stage params name (a distill "
        "teacher's uri): the cache keys of the stages that read it follow it.",
    )
    start_time: str | None = Field(
        default=None,
        description="When the job started; moved on by the time it spent suspended, so "
        "budget.maxDuration counts the time it could run.",
    )
    completion_time: str | None = None
    suspend_time: str | None = Field(default=None, description="When it was suspended.")
    stages: list[StageStatus] = Field(default_factory=list)
    trials: list[TrialRecord] = Field(default_factory=list)
    result: JobResult | None = None
    cost_usd: float | None = Field(
        default=None,
        alias="costUSD",
        description="What the job's runs have cost: the stages' and trials' below, and the "
        "replaced ones'. It never goes down.",
    )
    energy_joules: float | None = None
    replaced_cost_usd: float | None = Field(
        default=None,
        alias="replacedCostUSD",
        description="Of costUSD, what runs cost that are no longer in stages and trials: "
        "an edit replaced them or dropped their pool, a suspension stopped them, or an "
        "interrupted `kompaktor run` ran them before it was resumed.",
    )
    replaced_energy_joules: float | None = None
    cost_before_rerun_usd: float | None = Field(
        default=None,
        alias="costBeforeRerunUSD",
        description="Of costUSD, what the job had spent when an edit last ran it again after it "
        "finished: maxCostUSD counts the rest, as maxDuration counts from the new startTime.",
    )
    message: str | None = None
    conditions: list[Condition] = Field(default_factory=list)

    def stage_status(self, name: str) -> StageStatus | None:
        return next((s for s in self.stages if s.name == name), None)
