"""hpo: search another stage's params with Optuna; each trial is one run of that stage.

The plan runs the trials (as pods, in parallel) and keeps them in `status.trials`; this module
gives it pure functions over those records: what to try next (`propose`), how a finished run
scores (`trial_values`), when the search is over (`is_done`) and which trial wins
(`select_best`). Nothing is kept between calls, so a controller restart loses nothing, and the
same records and seed always give the same proposals. `HpoStage.run` drives the same functions
in-process for `kompaktor stage run --type hpo`.
"""

from __future__ import annotations

import builtins
import math
import random
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Literal

from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from pydantic import Field, ValidationError, field_validator, model_validator

from kompaktor.api.status import TrialRecord
from kompaktor.errors import StageError
from kompaktor.evaluate import higher_is_better
from kompaktor.models import ModelFormat
from kompaktor.search import Observed, ask, cma, grid_points, pareto_front, rebuild, sampler_for
from kompaktor.search.grid import MAX_GRID, grid_size
from kompaktor.search.study import canonical
from kompaktor.stages.base import PlanContext, Stage, StageContext, StageParams, StageResult

Objective = Literal["metric", "latency", "size"]
#: Where each objective's figure is in a run's metrics (result.json / TrialRecord.metrics).
OBJECTIVE_METRICS: dict[str, str] = {
    "metric": "metric",
    "latency": "latencyMs",
    "size": "sizeBytes",
}
_FINISHED = ("Complete", "Failed", "Pruned")


class SpaceParam(StageParams):
    """One searched param: a range (low..high, optionally log-scaled or stepped) or choices."""

    low: int | float | None = Field(None, description="Smallest value (ranges).")
    high: int | float | None = Field(None, description="Largest value (ranges), inclusive.")
    log: bool = Field(False, description="Sample on a log scale (low must be > 0).")
    step: int | float | None = Field(
        None, description="Spacing between values; needed for float ranges in a grid search."
    )
    choices: list[Any] | None = Field(
        None, description="The values to choose from (strings, numbers, booleans, null)."
    )
    type: Literal["float", "int", "categorical"] | None = Field(
        None,
        description="Inferred when left out: categorical with choices, int when low, high "
        "(and step) are integers, float otherwise.",
    )

    @model_validator(mode="after")
    def _one_valid_point(self) -> SpaceParam:
        if self.choices is not None or self.type == "categorical":
            return self._check_choices()
        if self.low is None or self.high is None:
            raise ValueError("needs low and high (a range) or choices")
        if self.low > self.high:
            raise ValueError(f"low ({self.low}) is greater than high ({self.high})")
        if self.log and self.low <= 0:
            raise ValueError(f"log needs low > 0 (got {self.low})")
        if self.step is not None and self.step <= 0:
            raise ValueError(f"step must be > 0 (got {self.step})")
        if self.log and self.step is not None:
            raise ValueError("log and step cannot be combined")
        if self.type == "int" and not all(
            float(v).is_integer() for v in (self.low, self.high, self.step or 1)
        ):
            raise ValueError("an int range needs integer low, high and step")
        return self

    def _check_choices(self) -> SpaceParam:
        if not self.choices:
            raise ValueError("choices must not be empty")
        if any(v is not None for v in (self.low, self.high, self.step)) or self.log:
            raise ValueError("give either choices or a range (low/high/step/log), not both")
        bad = [c for c in self.choices if not isinstance(c, str | int | float | bool | None)]
        if bad:
            raise ValueError(f"choices must be strings, numbers, booleans or null (got {bad[0]!r})")
        return self

    @property
    def kind(self) -> Literal["float", "int", "categorical"]:
        if self.type is not None:
            return self.type
        if self.choices is not None:
            return "categorical"
        ints = all(isinstance(v, int) for v in (self.low, self.high, self.step) if v is not None)
        return "int" if ints else "float"

    def distribution(self) -> BaseDistribution:
        """The Optuna distribution this param describes."""
        if self.kind == "categorical":
            return CategoricalDistribution(list(self.choices or []))
        assert self.low is not None and self.high is not None
        if self.kind == "int":
            return IntDistribution(
                int(self.low), int(self.high), log=self.log, step=int(self.step or 1)
            )
        step = None if self.step is None else float(self.step)
        return FloatDistribution(float(self.low), float(self.high), log=self.log, step=step)


class HpoParams(StageParams):
    target: Literal["train", "prune", "distill", "quantize", "compress"] = Field(
        description="The stage whose params are searched; each trial is one run of it."
    )
    sampler: Literal["grid", "random", "tpe", "gp", "cmaes", "nsga2"] = Field(
        "tpe",
        description="grid (every point, needs steps or choices), random, tpe, gp (Gaussian "
        "process), cmaes (one objective), nsga2 (multi-objective genetic search).",
    )
    trials: int = Field(ge=1, le=1000, description="How many trials to run in all.")
    parallelism: int = Field(1, ge=1, le=1000, description="Trials running at the same time.")
    space: dict[str, SpaceParam] = Field(
        description="The target's params to search (its param names, as in a job file)."
    )
    base: dict[str, Any] = Field(
        default_factory=dict, description="Fixed target params every trial gets."
    )
    objectives: list[Objective] = Field(
        default_factory=lambda: ["metric"],  # type: ignore[arg-type]
        description="What to optimize: metric (the job's objective metric), latency, size. "
        "More than one makes the search multi-objective (a Pareto set).",
    )
    select: Literal["best-metric", "fastest-within-drop", "smallest-within-drop"] = Field(
        "best-metric",
        description="How the winner is picked among trials whose metric is within the job's "
        "maxDrop of the input model: best metric, lowest latency, or smallest size.",
    )
    pruner: Literal["none", "median"] = Field(
        "none",
        description="median: stop a trial early when its reported progress is worse than the "
        "median of earlier trials at the same step.",
    )
    seed: int | None = Field(None, description="Sampler seed (default: the job's seed).")

    @field_validator("space")
    @classmethod
    def _not_empty(cls, value: dict[str, SpaceParam]) -> dict[str, SpaceParam]:
        if not value:
            raise ValueError("must name at least one of the target's params to search")
        return value

    @field_validator("objectives")
    @classmethod
    def _objectives(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("must name at least one objective (metric, latency, size)")
        if len(set(value)) != len(value):
            raise ValueError(f"names an objective twice ({', '.join(value)})")
        return value

    @model_validator(mode="after")
    def _sampler_fits(self) -> HpoParams:
        if self.sampler == "cmaes" and len(self.objectives) > 1:
            raise ValueError(
                "sampler: cmaes optimizes one objective; use nsga2, tpe, gp or random "
                "for several objectives"
            )
        return self


def distributions(params: HpoParams) -> dict[str, BaseDistribution]:
    return {name: space.distribution() for name, space in params.space.items()}


def maximize(params: HpoParams, metric_name: str) -> list[bool]:
    """Direction of each objective: the metric up (mse down), latency and size down."""
    return [o == "metric" and higher_is_better(metric_name) for o in params.objectives]


# ---- pre-flight checks ----------------------------------------------------------------------


def check(params: HpoParams, plan: PlanContext | None = None) -> None:
    """ValueError naming the field when the search cannot work: an unknown target param, a
    grid over a continuous range, or base + a point of the space the target would reject."""
    target = _target_stage(params)
    names = _param_names(target.Params)
    for where, keys in (("space", params.space), ("base", params.base)):
        for key in keys:
            if key not in names:
                known = ", ".join(sorted(n for n in names if n == _camel(n)))
                raise ValueError(
                    f"params.{where}.{key}: {params.target} has no param {key!r} "
                    f"(its params: {known})"
                )
    for key in params.base:
        if _canonical_name(target.Params, key) in {
            _canonical_name(target.Params, k) for k in params.space
        }:
            raise ValueError(f"params.base.{key}: is also searched in params.space; keep one")
    if params.sampler == "grid":
        for key, space in params.space.items():
            if space.kind == "float" and space.step is None:
                raise ValueError(f"params.space.{key}: a grid search needs step or choices")
        if grid_size(distributions(params)) > MAX_GRID:
            raise ValueError(f"params.space: the grid has more than {MAX_GRID} points")
    point = trial_params(params, _first_point(params))
    try:
        target_params = _params_model(target).model_validate(point)
    except ValidationError as error:
        raise ValueError("\n".join(_describe(params, target.type, error))) from None
    if plan is not None:
        if plan.input_format not in target.accepts:
            accepted = ", ".join(sorted(target.accepts))
            raise ValueError(
                f"params.target: {params.target} cannot take a {plan.input_format} model "
                f"(it needs {accepted})"
            )
        try:
            target().check(target_params, plan)
        except ValueError as error:
            raise ValueError(f"params.target ({params.target}): {error}") from None


def _target_stage(params: HpoParams) -> type[Stage[Any]]:
    from kompaktor.stages.base import registry

    stage = registry().get(params.target)
    if stage is None:
        raise ValueError(f"params.target: stage type {params.target!r} is not available")
    return stage


def _params_model(stage: builtins.type[Stage[Any]]) -> builtins.type[StageParams]:
    """The target's params model (typed here: `Stage.type` shadows `type` in Stage's body)."""
    model: builtins.type[StageParams] = stage.Params
    return model


def _param_names(model: type[StageParams]) -> set[str]:
    names = set()
    for name, info in model.model_fields.items():
        names |= {name, info.alias or _camel(name)}
    return names


def _canonical_name(model: type[StageParams], key: str) -> str:
    for name, info in model.model_fields.items():
        if key in (name, info.alias, _camel(name)):
            return name
    return key


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


def _first_point(params: HpoParams) -> dict[str, Any]:
    """One point of the space: the low end of each range, the first choice."""
    point: dict[str, Any] = {}
    for key, space in params.space.items():
        if space.kind == "categorical":
            point[key] = (space.choices or [None])[0]
        else:
            point[key] = int(space.low or 0) if space.kind == "int" else float(space.low or 0.0)
    return point


def _describe(params: HpoParams, target: str, error: ValidationError) -> list[str]:
    lines = []
    for item in error.errors():
        key = str(item["loc"][0]) if item["loc"] else ""
        rest = "".join(f".{part}" for part in item["loc"][1:])
        where = "space" if key in params.space else "base"
        message = str(item["msg"]).removeprefix("Value error, ")
        if item["type"] == "missing":
            message = f"{target} requires it; set it in params.base or params.space"
        lines.append(f"params.{where}.{key}{rest}: {message}")
    return lines


# ---- the search -----------------------------------------------------------------------------


def propose(
    params: HpoParams,
    records: Sequence[TrialRecord],
    count: int,
    seed: int,
    *,
    metric_name: str = "accuracy",
) -> list[dict[str, Any]]:
    """Up to `count` new points (fewer when the budget or the grid runs out).

    Deterministic: the study is rebuilt from `records` alone and its sampler seeded with
    seed + len(records). Pending/Running records count against the budget and are shown to the
    sampler as running, so parallel proposals do not pile onto one point.
    """
    count = min(count, params.trials - len(records))
    if count <= 0:
        return []
    spaces = distributions(params)
    taken = [r.params for r in records]
    if params.sampler == "grid":
        return _grid(spaces, taken, count, seed)
    observed = [_observed(r) for r in records]
    directions = maximize(params, metric_name)
    if params.sampler == "cmaes":
        return cma.propose(spaces, observed, count, seed + len(records), directions[0])
    population = _population(params)
    sampler = sampler_for(
        params.sampler, seed + len(records), startup=_startup(params), population=population
    )
    study = rebuild(spaces, observed, directions, sampler, population=population)
    return ask(study, spaces, count, taken)


def _grid(
    spaces: Mapping[str, BaseDistribution],
    taken: Sequence[Mapping[str, Any]],
    count: int,
    seed: int,
) -> list[dict[str, Any]]:
    """The first untried points of one seeded shuffle of the whole grid: no point twice."""
    points = grid_points(spaces)
    random.Random(seed).shuffle(points)
    used = {canonical(p) for p in taken}
    return [p for p in points if canonical(p) not in used][:count]


def _observed(record: TrialRecord) -> Observed:
    state = record.state if record.state in _FINISHED else "Running"
    return Observed(record.params, state, record.values)  # type: ignore[arg-type]


def _startup(params: HpoParams) -> int:
    """Random trials before a model-based sampler takes over: a third of the budget, 3..10."""
    return min(10, max(3, params.trials // 3))


def _population(params: HpoParams) -> int:
    """NSGA-II generation size: enough to cover the parallelism, small enough to evolve."""
    return max(params.parallelism, min(50, max(4, params.trials // 5)))


def budget(params: HpoParams) -> int:
    """Trials that will run: `trials`, or the grid's size when that is smaller."""
    if params.sampler == "grid":
        return min(params.trials, grid_size(distributions(params)))
    return params.trials


def is_done(params: HpoParams, records: Sequence[TrialRecord]) -> bool:
    """Every trial of the budget finished (complete, failed or pruned)."""
    return sum(r.state in _FINISHED for r in records) >= budget(params)


def trial_params(params: HpoParams, suggested: Mapping[str, Any]) -> dict[str, Any]:
    """The target stage's params for one trial: the fixed base plus the suggested point."""
    return {**params.base, **suggested}


def trial_values(params: HpoParams, metrics: Mapping[str, float], metric_name: str) -> list[float]:
    """A finished run's objective values, in `objectives` order, from its metrics."""
    values = []
    for objective in params.objectives:
        key = OBJECTIVE_METRICS[objective]
        if key not in metrics and objective == "metric" and metric_name in metrics:
            key = metric_name
        if key not in metrics:
            raise StageError(f"hpo: the trial's result has no {key} to score objective {objective}")
        values.append(float(metrics[key]))
    return values


# ---- choosing the winner --------------------------------------------------------------------


def within_drop(value: float, baseline: float | None, max_drop: float, metric_name: str) -> bool:
    """The metric is no more than `max_drop` worse than the baseline (always, with none)."""
    if baseline is None or math.isnan(baseline):
        return True
    if higher_is_better(metric_name):
        return value >= baseline - max_drop - 1e-12
    return value <= baseline + max_drop + 1e-12


def pareto_set(
    params: HpoParams, records: Sequence[TrialRecord], *, metric_name: str
) -> list[TrialRecord]:
    """The complete trials no other complete trial beats on every objective."""
    scored = [r for r in records if r.state == "Complete" and r.values is not None]
    front = pareto_front([list(r.values or []) for r in scored], maximize(params, metric_name))
    return [scored[i] for i in front]


def select_best(
    params: HpoParams,
    records: Sequence[TrialRecord],
    *,
    metric_name: str,
    baseline: float | None,
    max_drop: float,
) -> TrialRecord | None:
    """The winner by `select` among complete trials within `max_drop` of `baseline`; None when
    no trial is. Ties go to the better metric, then to the earlier trial."""
    sign = 1.0 if higher_is_better(metric_name) else -1.0
    eligible = [
        r
        for r in records
        if r.state == "Complete"
        and "metric" in r.metrics
        and within_drop(r.metrics["metric"], baseline, max_drop, metric_name)
    ]
    if params.select != "best-metric":
        key = "latencyMs" if params.select == "fastest-within-drop" else "sizeBytes"
        eligible = [r for r in eligible if key in r.metrics]
        if not eligible:
            return None
        return min(eligible, key=lambda r: (r.metrics[key], -sign * r.metrics["metric"], r.number))
    if not eligible:
        return None
    return min(eligible, key=lambda r: (-sign * r.metrics["metric"], r.number))


# ---- the stage ------------------------------------------------------------------------------


class HpoStage(Stage[HpoParams]):
    """The plan runs an hpo stage's trials (as pods, or local processes) through the functions
    above; a single `kompaktor stage run --type hpo` has no trials to run and says so."""

    Params: ClassVar[type[StageParams]] = HpoParams
    type: ClassVar[str] = "hpo"
    accepts: ClassVar[frozenset[ModelFormat]] = frozenset({"pt2", "torchscript", "onnx"})
    produces: ClassVar[ModelFormat | None] = None

    def output_format(self, input_format: ModelFormat, params: HpoParams) -> ModelFormat:
        target = _target_stage(params)
        point = _params_model(target).model_validate(trial_params(params, _first_point(params)))
        return target().output_format(input_format, point)

    def check(self, params: HpoParams, plan: PlanContext) -> None:
        check(params, plan)

    def run(self, ctx: StageContext[HpoParams]) -> StageResult:
        raise StageError(
            "hpo: trials run as separate stage runs driven by the job's plan; run the job "
            "(`kompaktor run job.yaml`) rather than a single hpo stage"
        )
