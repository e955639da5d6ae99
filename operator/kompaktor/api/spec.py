"""The OptimizationJob spec: the one source of truth for the CRD, the docs and validation.

Field descriptions are written for users: they become `kubectl explain` text.
"""

from __future__ import annotations

import re
from types import UnionType
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

from kompaktor.api.duration import parse_duration

GROUP = "kompaktor.io"
VERSION = "v1alpha1"
KIND = "OptimizationJob"
PLURAL = "optimizationjobs"
API_VERSION = f"{GROUP}/{VERSION}"

DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DURATION = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h|d))+$"

StageName = Annotated[
    str,
    Field(
        min_length=1,
        max_length=40,
        pattern=DNS_LABEL,
        description="Unique stage name (a DNS label); it names the stage's pods and artifacts.",
    ),
]


class ApiModel(BaseModel):
    """camelCase on the wire, snake_case in Python, unknown fields rejected."""

    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True
    )

    def dump(self) -> dict[str, Any]:
        """The wire form: camelCase keys, no unset optional fields."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


def bool_for_number(value: Any, annotation: Any) -> bool:
    """Whether `value` holds a boolean where `annotation` wants a number (also inside lists,
    tuples and dict values). pydantic's lax mode reads true as 1, so `epochs: true` or a YAML
    `maxDrop: yes` would quietly mean 1; strings like "2" stay accepted."""
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Annotated:
        return bool_for_number(value, args[0])
    if origin is Union or origin is UnionType:
        options = [arg for arg in args if arg is not type(None)]
        return bool(options) and all(bool_for_number(value, arg) for arg in options)
    if isinstance(value, bool):
        return annotation is int or annotation is float
    if isinstance(value, list | tuple) and origin in (list, tuple, set, frozenset) and args:
        if origin is tuple and Ellipsis not in args:
            return any(bool_for_number(v, a) for v, a in zip(value, args, strict=False))
        return any(bool_for_number(v, args[0]) for v in value)
    if isinstance(value, dict) and origin is dict and len(args) == 2:
        return any(bool_for_number(v, args[1]) for v in value.values())
    return False


def refuse_bool_for_number(model: type[BaseModel], value: Any, info: ValidationInfo) -> Any:
    """`value` for field `info.field_name` of `model`; ValueError when it is a boolean where a
    number belongs (what a `field_validator("*", mode="before")` calls)."""
    if info.field_name is not None and bool_for_number(
        value, model.model_fields[info.field_name].annotation
    ):
        raise ValueError("must be a number, not a boolean")
    return value


class SpecModel(ApiModel):
    """A part of the job spec a user writes: a boolean is no number here, nor is infinity or
    NaN (`maxDrop: .inf` would disable the gate; no limit is written by leaving a field out)."""

    model_config = ConfigDict(allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_for_number(cls, value: Any, info: ValidationInfo) -> Any:
        return refuse_bool_for_number(cls, value, info)


class ModelRef(SpecModel):
    uri: str = Field(
        min_length=1,
        description=(
            "Where the input model lives: s3://, file:// or a local path. Formats: torch.export "
            "(.pt2), TorchScript (.pt) or ONNX (.onnx), chosen by the file extension."
        ),
    )


class DatasetRef(SpecModel):
    uri: str = Field(
        min_length=1,
        description=(
            "The data: an .npz file (s3://, file:// or a path) with arrays x_train, y_train, "
            "x_val, y_val, x_test, y_test, or a built-in: sklearn:digits, "
            "sklearn:breast_cancer, sklearn:wine."
        ),
    )
    task: Literal["classification", "regression"] = Field(
        default="classification", description="What the model predicts; decides the loss."
    )


class ArtifactsSpec(SpecModel):
    uri: str | None = Field(
        default=None,
        description=(
            "Root for every model and report this job writes (s3://bucket/prefix or file://). "
            "Defaults to the operator's configured store, or a folder beside the job file "
            "when run locally."
        ),
    )
    delete_on_job_deletion: bool = Field(
        default=False,
        description="Delete this job's artifacts when the OptimizationJob is deleted: its whole "
        "root when that is the operator's per-job default; under an explicit uri, which other "
        "jobs may share, only the runs its status names that no other OptimizationJob uses.",
    )


#: Metrics whose values lie between 0 and 1: a drop of 1 or more lets any result pass.
FRACTION_METRICS = ("accuracy", "fidelity")


def max_drop_problem(metric: str, max_drop: float) -> str | None:
    """Why `max_drop` sets no bound on `metric` (None: it does). Users write a percentage
    (`maxDrop: 1` for one point), which for a fraction metric turned the gate off."""
    if metric not in FRACTION_METRICS or max_drop < 1:
        return None
    points = "point" if max_drop == 1 else "points"
    return (
        f"must be below 1 for {metric}, a fraction from 0 to 1, or any result passes; maxDrop "
        f"is a fraction too (0.01 = one point of {metric}): for {max_drop:g} {points} write "
        f"{max_drop / 100:g}"
    )


class Objective(SpecModel):
    metric: Literal["accuracy", "fidelity", "mse"] = Field(
        default="accuracy",
        description=(
            "How quality is measured on the test split: accuracy, fidelity (agreement with the "
            "input model's predictions) or mse (lower is better)."
        ),
    )
    max_drop: float = Field(
        default=0.01,
        ge=0,
        description=(
            "Largest absolute loss of the metric, against the job's input model, that a stage's "
            "output may show; a stage that loses more fails the job (its artifacts are kept)."
        ),
    )

    @field_validator("max_drop")
    @classmethod
    def _a_bound(cls, value: float, info: ValidationInfo) -> float:
        problem = max_drop_problem(info.data.get("metric", ""), value)
        if problem is not None:
            raise ValueError(problem)
        return value


class Budget(SpecModel):
    max_duration: str | None = Field(
        default=None,
        pattern=DURATION,
        description="Wall-clock limit for the whole job, e.g. 2h or 90m.",
    )
    max_cost_usd: float | None = Field(
        default=None,
        alias="maxCostUSD",
        ge=0,
        description="Stop the job once its recorded cost (USD) exceeds this.",
    )

    @property
    def max_duration_seconds(self) -> float | None:
        return None if self.max_duration is None else parse_duration(self.max_duration)


def stage_label(name: str, index: int, stage_type: str) -> str:
    """How errors name a stage: by its name, its place in the list and its type."""
    return f"stage {name!r} (spec.stages[{index}], {stage_type})"


class StageSpec(SpecModel):
    name: StageName
    type: str = Field(
        min_length=1,
        description=("The technique: train, hpo, prune, distill, compress, quantize or benchmark."),
    )
    pool: str | None = Field(
        default=None,
        min_length=1,
        description="Node pool to run on (from the operator's configuration); unset: the default.",
    )
    pools: list[str] | None = Field(
        default=None,
        min_length=1,
        description="Several pools (benchmark only): the stage runs once on each.",
    )
    params: dict[str, Any] = Field(
        default_factory=dict,
        description="The technique's parameters, validated against the stage type's own model.",
        json_schema_extra={"x-kubernetes-preserve-unknown-fields": True},
    )
    retries: int = Field(
        default=0, ge=0, le=10, description="How many times a failed run is retried (with backoff)."
    )
    timeout: str | None = Field(
        default=None,
        pattern=DURATION,
        description="Limit for one run of this stage, e.g. 30m.",
    )
    gate: bool = Field(
        default=True,
        description="Fail the job when this stage's output drops more than objective.maxDrop. "
        "false lets a later stage win the accuracy back (prune before distill); the last "
        "stage is always gated, since its output is the job's result.",
    )

    @model_validator(mode="after")
    def _one_pool_field(self) -> StageSpec:
        if self.pool is not None and self.pools is not None:
            raise ValueError("set either pool or pools, not both")
        return self

    @property
    def timeout_seconds(self) -> float | None:
        return None if self.timeout is None else parse_duration(self.timeout)

    def where(self, index: int) -> str:
        return stage_label(self.name, index, self.type)

    @property
    def pool_names(self) -> list[str]:
        """Pools named by this stage; empty means the default pool."""
        if self.pools:
            return list(self.pools)
        return [self.pool] if self.pool else []


class OptimizationJobSpec(SpecModel):
    model: ModelRef = Field(description="The trained model to optimize.")
    dataset: DatasetRef = Field(description="Data for training, calibration and evaluation.")
    artifacts: ArtifactsSpec = Field(
        default_factory=ArtifactsSpec, description="Where models and reports are kept."
    )
    objective: Objective = Field(
        default_factory=Objective, description="The quality bound every stage must respect."
    )
    budget: Budget = Field(default_factory=Budget, description="Limits on time and money.")
    stages: list[StageSpec] = Field(
        min_length=1,
        max_length=32,
        description="The pipeline, run in order; each stage takes the previous stage's output.",
    )
    suspend: bool = Field(
        default=False,
        description="Pause the job: running stage pods are stopped, results are kept.",
    )
    seed: int = Field(default=0, ge=0, description="Seed for every random choice of the job.")

    @field_validator("stages")
    @classmethod
    def _unique_names(cls, stages: list[StageSpec]) -> list[StageSpec]:
        seen: set[str] = set()
        for index, stage in enumerate(stages):
            if stage.name in seen:
                raise ValueError(f"stages[{index}]: duplicate stage name {stage.name!r}")
            seen.add(stage.name)
        return stages

    def stage_index(self, name: str) -> int:
        for index, stage in enumerate(self.stages):
            if stage.name == name:
                return index
        raise KeyError(name)


class ObjectMeta(ApiModel):
    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="allow", frozen=True
    )
    name: str = Field(pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$", max_length=63)
    namespace: str | None = None
    generation: int | None = None


class OptimizationJob(ApiModel):
    """A whole job document as written in a YAML file or stored in the cluster."""

    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="ignore", frozen=True
    )
    api_version: Literal["kompaktor.io/v1alpha1"]
    kind: Literal["OptimizationJob"]
    metadata: ObjectMeta
    spec: OptimizationJobSpec


def is_dns_label(value: str) -> bool:
    return re.fullmatch(DNS_LABEL, value) is not None
