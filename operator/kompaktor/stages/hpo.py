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
import hashlib
import math
import random
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Literal

from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from pydantic import Field, PrivateAttr, ValidationError, field_validator, model_validator

from kompaktor.api.run import MAX_CURVE, PrunerSpec, TrialContext, TrialPoint
from kompaktor.api.run import curve_stride as epochs_per_point
from kompaktor.api.status import TrialRecord
from kompaktor.errors import StageError
from kompaktor.evaluate import higher_is_better
from kompaktor.models import ModelFormat
from kompaktor.search import Observed, ask, cma, grid_points, pareto_front, rebuild, sampler_for
from kompaktor.search.grid import MAX_GRID, grid_size
from kompaktor.search.study import canonical
from kompaktor.stages.base import (
    PlanContext,
    Precision,
    SparseLayers,
    Stage,
    StageContext,
    StageParams,
    StageResult,
)

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
        description="Inferred when left out: categorical with choices, else the type of the "
        "target's param (int or float); for a param of neither type, int when low, high (and "
        "step) are integers, float otherwise.",
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

    #: The kind of number the target's param is (set by HpoParams from its field's type).
    _field_kind: Literal["float", "int"] | None = PrivateAttr(None)

    @property
    def kind(self) -> Literal["float", "int", "categorical"]:
        """categorical for choices; else as `type` says, or as the target's param is typed (an
        int param searched on integers, a float one on floats however its ends are written),
        or, for a param of neither type, as the numbers are written."""
        if self.type is not None:
            return self.type
        if self.choices is not None:
            return "categorical"
        if self._field_kind is not None:
            return self._field_kind
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
    pruner: Literal["none", "median", "percentile", "successiveHalving", "hyperband"] = Field(
        "none",
        description="Stop unpromising trials early, judged on their validation curve (one point "
        "per training epoch; targets train, prune and distill), never at a trial's last point: "
        "median (worse than the median of complete trials at the same point), percentile "
        "(outside the best `percentile` %), successiveHalving or hyperband (keep the best "
        "1/reductionFactor at each rung).",
    )
    startup_trials: int | None = Field(
        None,
        ge=0,
        description="median, percentile: trials that complete before any is pruned (default: "
        "a quarter of `trials`, 2 to 5).",
    )
    warmup_steps: int = Field(
        0,
        ge=0,
        description="median, percentile: curve points every trial reports before it can be pruned.",
    )
    percentile: float = Field(
        25.0,
        gt=0,
        lt=100,
        description="percentile: keep trials whose curve is in the best `percentile` % of "
        "complete trials at the same point; prune the rest.",
    )
    min_resource: int = Field(
        1,
        ge=1,
        description="successiveHalving, hyperband: curve points a trial reports before the "
        "first rung judges it (fewer than a trial reports).",
    )
    reduction_factor: int = Field(
        3,
        ge=2,
        description="successiveHalving, hyperband: the best 1/reductionFactor of trials "
        "go on at each rung.",
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
    def _kinds_from_target(self) -> HpoParams:
        """Each range over an int or float param of the target searches that kind of number
        (`check` refuses an int param's range with ends or a step that are not integers)."""
        from kompaktor.stages.base import registry

        stage = registry().get(self.target)
        if stage is not None:
            for key, space in self.space.items():
                space._field_kind = _number_kind(_params_model(stage), key)
        return self

    @model_validator(mode="after")
    def _sampler_fits(self) -> HpoParams:
        if self.sampler == "cmaes" and len(self.objectives) > 1:
            raise ValueError(
                "sampler: cmaes optimizes one objective; use nsga2, tpe, gp or random "
                "for several objectives"
            )
        return self


#: The pruner options and the pruners that use them.
PRUNER_OPTIONS: dict[str, tuple[str, ...]] = {
    "startup_trials": ("median", "percentile"),
    "warmup_steps": ("median", "percentile"),
    "percentile": ("percentile",),
    "min_resource": ("successiveHalving", "hyperband"),
    "reduction_factor": ("successiveHalving", "hyperband"),
}
#: Most bytes of finished trials a trial's context carries (a command-line argument).
MAX_CONTEXT_BYTES = 64 * 1024
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
    _check_kinds(params, target)
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
    # every end of a range and every choice must work
    points = [point for _, _, point in _trial_points(params)]
    _check_pruner(params, target)
    if plan is not None:
        if plan.input_format not in target.accepts:
            accepted = ", ".join(sorted(target.accepts))
            raise ValueError(
                f"params.target: {params.target} cannot take {plan.input_format} models "
                f"(it needs {accepted})"
            )
        for point in points:  # and with this input (qat among the choices for a .pt model)
            try:
                target().check(point, plan)
            except ValueError as error:
                raise ValueError(f"params.target ({params.target}): {error}") from None


def _validated(params: HpoParams, target: type[Stage[Any]], point: dict[str, Any]) -> StageParams:
    try:
        return _params_model(target).model_validate(trial_params(params, point))
    except ValidationError as error:
        raise ValueError("\n".join(_describe(params, target.type, error))) from None


def _extremes(params: HpoParams) -> dict[str, list[Any]]:
    """Each searched param's end points: low and high of a range, or every choice."""
    ends: dict[str, list[Any]] = {}
    for key, space in params.space.items():
        if space.kind == "categorical":
            ends[key] = list(space.choices or [])
        else:
            dist = space.distribution()
            assert isinstance(dist, IntDistribution | FloatDistribution)
            ends[key] = [dist.low, dist.high]  # high as Optuna adjusts it to the step
    return ends


def _number_kind(model: type[StageParams], key: str) -> Literal["float", "int"] | None:
    """int or float when the model's param `key` is of that type (or that type or None)."""
    field = model.model_fields.get(_canonical_name(model, key))
    if field is None:
        return None
    kind = field.annotation
    if typing.get_origin(kind) in (typing.Union, types.UnionType):
        rest = [a for a in typing.get_args(kind) if a is not type(None)]
        kind = rest[0] if len(rest) == 1 else None
    return "int" if kind is int else "float" if kind is float else None


def _check_kinds(params: HpoParams, target: type[Stage[Any]]) -> None:
    """A range over an int param needs integer ends and step; a float param is no int range."""
    for key, space in params.space.items():
        field_kind = _number_kind(_params_model(target), key)
        if space.choices is not None or space.type == "categorical" or field_kind is None:
            continue
        if field_kind == "float" and space.type == "int":
            continue  # integers are floats: a search on whole numbers is the user's choice
        if field_kind == "int" and space.type == "float":
            raise ValueError(
                f"params.space.{key}: {params.target}'s {key} is an integer; drop type: float"
            )
        if field_kind == "int":
            for end in ("low", "high", "step"):
                value = getattr(space, end)
                if value is not None and not float(value).is_integer():
                    raise ValueError(
                        f"params.space.{key}.{end}: {params.target}'s {key} is an integer, "
                        f"so the range needs integer low, high and step (got {value})"
                    )


def _check_pruner(params: HpoParams, target: type[Stage[Any]]) -> None:
    for option, pruners in PRUNER_OPTIONS.items():
        if option in params.model_fields_set and params.pruner not in pruners:
            raise ValueError(
                f"params.{_camel(option)}: only used with pruner: {' or '.join(pruners)} "
                f"(pruner is {params.pruner})"
            )
    if params.pruner == "none":
        return
    if len(params.objectives) > 1:
        raise ValueError(
            f"params.pruner: Optuna prunes single-objective searches only (objectives: "
            f"{', '.join(params.objectives)}); use pruner: none"
        )
    if not target.reports_curve:
        from kompaktor.stages.base import registry

        able = " or ".join(sorted(t for t, s in registry().items() if s.reports_curve))
        raise ValueError(
            f"params.pruner: target {params.target} reports no per-epoch validation curve to "
            f"prune on (pruning works with target {able}); use pruner: none"
        )
    _check_pruner_steps(params)


def _check_pruner_steps(params: HpoParams) -> None:
    """A trial's last curve point is never judged (its training is over), so the pruner must
    get to judge a point before it: otherwise it could never save an epoch."""
    points = curve_points(params)
    if points < 2:
        raise ValueError(
            f"params.pruner: a {params.target} trial reports at most {points} validation point "
            f"(one per training epoch) and the last is never judged, so nothing could be "
            f"stopped early; train for 2 or more epochs or use pruner: none"
        )
    if params.pruner in ("successiveHalving", "hyperband") and params.min_resource >= points:
        raise ValueError(
            f"params.minResource: {params.min_resource} puts the first rung at or after the "
            f"last of the {points} curve points a trial reports, where nothing is left to "
            f"stop; use at most {points - 1}"
        )
    if params.pruner in ("median", "percentile") and params.warmup_steps >= points - 1:
        raise ValueError(
            f"params.warmupSteps: {params.warmup_steps} leaves no curve point to judge before "
            f"the last of the {points} a trial reports; use at most {points - 2}"
        )


def max_epochs(params: HpoParams) -> int:
    """The most training epochs a trial can run: the target at the high end of the space."""
    target = _target_stage(params)
    point: dict[str, Any] = {}
    for key, ends in _extremes(params).items():
        numbers = [v for v in ends if isinstance(v, int | float) and not isinstance(v, bool)]
        point[key] = max(numbers) if numbers else ends[0]
    try:
        return target().epochs(_params_model(target).model_validate(trial_params(params, point)))
    except ValidationError:
        return MAX_CURVE


def curve_stride(params: HpoParams) -> int:
    """Epochs per curve point, the same for every trial, so curves compare point by point."""
    return epochs_per_point(max_epochs(params))


def curve_points(params: HpoParams) -> int:
    """The most curve points a trial reports (Hyperband's maximum resource)."""
    return max(1, max_epochs(params) // curve_stride(params))


def trial_curve_points(params: HpoParams, suggested: Mapping[str, Any]) -> int:
    """The curve points the trial at this point reports: one every `curve_stride` epochs of
    its own (a searched epochs gives trials of different lengths)."""
    target = _target_stage(params)
    try:
        model = _params_model(target).model_validate(trial_params(params, suggested))
    except ValidationError:
        return curve_points(params)
    return max(1, min(MAX_CURVE, target().epochs(model) // curve_stride(params)))


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
    from kompaktor.api.messages import message as describe

    lines = []
    for item in error.errors():
        key = str(item["loc"][0]) if item["loc"] else ""
        rest = "".join(f".{part}" for part in item["loc"][1:])
        where = "space" if key in params.space else "base"
        message = describe(item)
        if item["type"] == "missing":
            message = f"{target} requires it; set it in params.base or params.space"
        lines.append(f"params.{where}.{key}{rest}: {message}")
    return lines


# ---- the search -----------------------------------------------------------------------------


#: Samplers whose next point depends on how earlier trials scored.
LEARNING_SAMPLERS = ("tpe", "gp", "cmaes", "nsga2")


def history_end(params: HpoParams, number: int) -> int:
    """Trial `number` sees the trials numbered below this as finished: number - parallelism + 1.

    What a trial sees must not depend on which runs happened to finish first, so it is fixed by
    the trial's number: the trials at least `parallelism` places before it (which must have
    finished before it starts: `ready`); the ones in between are shown to it as running.
    """
    return number - params.parallelism + 1


def waits(params: HpoParams) -> bool:
    """Whether a trial waits for the trials it sees (`history_end`): it does when its point
    (a learning sampler) or its pruning context (a pruner) depends on how they ended."""
    return params.sampler in LEARNING_SAMPLERS or params.pruner != "none"


def ready(params: HpoParams, records: Sequence[TrialRecord], number: int) -> bool:
    """Trial `number` may be proposed: every trial it sees as finished has finished."""
    if not waits(params):
        return True
    end = history_end(params, number)
    return all(r.state in _FINISHED for r in records if r.number < end)


def trial_seed(seed: int, number: int) -> int:
    """The sampler seed of trial `number`: a function of the search seed and the number only."""
    digest = hashlib.sha256(f"kompaktor-hpo/{seed}/{number}".encode()).digest()
    return int.from_bytes(digest[:4], "big")


def propose_trial(
    params: HpoParams,
    records: Sequence[TrialRecord],
    number: int,
    seed: int,
    *,
    metric_name: str = "accuracy",
) -> dict[str, Any] | None:
    """Trial `number`'s point (None when the budget or the grid is spent).

    Deterministic whatever the timing: the point depends on the seed, the number, the points of
    the trials numbered below it and the outcomes of those below `history_end` only (the caller
    checks `ready` first; the others are shown as running, so parallel trials spread apart).
    """
    if number >= params.trials:
        return None
    earlier = sorted((r for r in records if r.number < number), key=lambda r: r.number)
    spaces = distributions(params)
    taken = [r.params for r in earlier]
    if params.sampler == "grid":
        points = _grid(spaces, taken, 1, seed)
        return points[0] if points else None
    end = history_end(params, number) if params.sampler in LEARNING_SAMPLERS else 0
    observed = [_observed(r) if r.number < end else Observed(r.params, "Running") for r in earlier]
    own = trial_seed(seed, number)
    directions = maximize(params, metric_name)
    if params.sampler == "cmaes":
        return cma.propose(spaces, observed, 1, own, directions[0])[0]
    population = _population(params)
    sampler = sampler_for(params.sampler, own, startup=_startup(params), population=population)
    study = rebuild(spaces, observed, directions, sampler, population=population)
    return ask(study, spaces, 1, taken)[0]


def propose(
    params: HpoParams,
    records: Sequence[TrialRecord],
    count: int,
    seed: int,
    *,
    metric_name: str = "accuracy",
) -> list[dict[str, Any]]:
    """Up to `count` new points, for the trials numbered len(records) on (fewer when the
    budget or the grid runs out): each is `propose_trial`'s, the ones before it in the batch
    shown as running, so a batch gives the points the same trials get one at a time.
    """
    working = list(records)
    points: list[dict[str, Any]] = []
    for _ in range(max(0, min(count, params.trials - len(records)))):
        number = len(working)
        point = propose_trial(params, working, number, seed, metric_name=metric_name)
        if point is None:
            break
        points.append(point)
        working.append(TrialRecord(stage="", number=number, params=point, state="Running"))
    return points


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
    return Observed(record.params, state, record.values, record.curve)  # type: ignore[arg-type]


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


def no_winner(records: Sequence[TrialRecord], metric: str, max_drop: float | None) -> str:
    """Why a finished search has no best trial: every trial failed (say why, once per distinct
    reason: a setup error fails them all alike), or none kept the metric within the bound."""
    failed = [r.message or "no message" for r in records if r.state == "Failed"]
    if records and len(failed) == len(records):
        reasons = list(dict.fromkeys(failed))
        more = f" (and {len(reasons) - 2} other reasons)" if len(reasons) > 2 else ""
        listed = "; ".join(reasons[:2])
        return f"NoTrialSucceeded: all {len(records)} trials failed: {listed}{more}"
    complete = sum(r.state == "Complete" for r in records)
    pruned = sum(r.state == "Pruned" for r in records)
    return (
        f"NoTrialWithinBound: none of {len(records)} trials ({complete} complete, {pruned} "
        f"pruned, {len(failed)} failed) kept {metric} within maxDrop {max_drop} of the input "
        "model"
    )


#: The status figure each `select` rule other than best-metric ranks the eligible trials by.
SELECT_KEYS: dict[str, str] = {
    "fastest-within-drop": "latencyMs",
    "smallest-within-drop": "sizeBytes",
}


def select_best(
    params: HpoParams,
    records: Sequence[TrialRecord],
    *,
    metric_name: str,
    baseline: float | None,
    max_drop: float,
) -> TrialRecord | None:
    """The winner by `select` among complete trials within `max_drop` of the input model; None
    when no trial is. Ties go to the better metric, then to the earlier trial.

    Trials are ranked and bounded on validation rows (`ranked`) when they have them, against
    the input model's figure on the same rows; `baseline` stands in when a record has none.
    A trial's standing depends on its own record only, so a trial that is not the winner now
    never becomes it later (the plan keeps only the leader's output in status).
    """
    sign = 1.0 if higher_is_better(metric_name) else -1.0
    eligible = _eligible(params, records, metric_name, baseline, max_drop)
    if not eligible:
        return None
    key = SELECT_KEYS.get(params.select)
    if key is not None:
        return min(eligible, key=lambda rv: (rv[0].metrics[key], -sign * rv[1], rv[0].number))[0]
    return min(eligible, key=lambda rv: (-sign * rv[1], rv[0].number))[0]


def _eligible(
    params: HpoParams,
    records: Sequence[TrialRecord],
    metric_name: str,
    baseline: float | None,
    max_drop: float,
) -> list[tuple[TrialRecord, float]]:
    """The complete trials `select` chooses among, each with the figure it is ranked by: within
    `max_drop` of the input model, and measured on what the rule ranks by."""
    key = SELECT_KEYS.get(params.select)
    eligible = []
    for r in records:
        figure = ranked(r)
        if r.state != "Complete" or figure is None or (key is not None and key not in r.metrics):
            continue
        value, own = figure
        if within_drop(value, baseline if own is None else own, max_drop, metric_name):
            eligible.append((r, value))
    return eligible


def selection_reason(
    params: HpoParams,
    records: Sequence[TrialRecord],
    best: TrialRecord,
    *,
    metric_name: str,
    baseline: float | None,
    max_drop: float,
) -> str:
    """Why `best` won, in words: the rule, the figure it won by, among which trials, and (for
    several objectives) whether it is on the Pareto set."""
    count = len(_eligible(params, records, metric_name, baseline, max_drop))
    among = (
        f"the {count} complete trials"
        if math.isinf(max_drop)
        else f"the {count} complete trials within maxDrop {max_drop:g} of the input model"
    )
    key = SELECT_KEYS.get(params.select)
    if key is None:
        figure = ranked(best)
        value = "" if figure is None else f" ({figure[0]:.4g})"
        won = f"the best {metric_name} on {metric_rows(best)} rows{value}"
    else:
        won = f"the lowest {key} ({best.metrics[key]:.4g})"
    reason = f"trial {best.number} has {won} of {among} (select: {params.select})"
    if len(params.objectives) < 2:
        return reason
    front = [r.number for r in pareto_set(params, records, metric_name=metric_name)]
    place = "on" if best.number in front else "not on"
    return f"{reason}; it is {place} the Pareto set of {len(front)} trials {front}"


def result_metrics(records: Sequence[TrialRecord], best: TrialRecord) -> dict[str, float]:
    """The search's own figures in the stage's metrics (plan-run and in-process alike)."""
    counts = {s: sum(r.state == s for r in records) for s in _FINISHED}
    return {
        "bestTrial": float(best.number),
        "trials": float(counts["Complete"]),
        "prunedTrials": float(counts["Pruned"]),
        "failedTrials": float(counts["Failed"]),
    }


def result_details(
    params: HpoParams,
    records: Sequence[TrialRecord],
    best: TrialRecord,
    *,
    metric_name: str,
    baseline: float | None,
    max_drop: float,
) -> dict[str, Any]:
    """The stage's result details (plan-run and in-process alike): the winner and why, every
    trial, and for several objectives the Pareto set (number, params, values by objective)
    and the rows its metric values were measured on (`metricRows`)."""
    details: dict[str, Any] = {
        "bestTrial": best.number,
        "bestParams": best.params,
        "selection": selection_reason(
            params, records, best, metric_name=metric_name, baseline=baseline, max_drop=max_drop
        ),
    }
    if len(params.objectives) > 1:
        details["paretoSet"] = [
            {
                "number": r.number,
                "params": r.params,
                "values": dict(zip(params.objectives, r.values or [], strict=True)),
            }
            for r in pareto_set(params, records, metric_name=metric_name)
        ]
        if "metric" in params.objectives:
            details["metricRows"] = metric_rows(best)
    return {**details, "trials": trials_report(records)}


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


# ---- pruning across processes -------------------------------------------------------------


def pruner_spec(params: HpoParams) -> PrunerSpec | None:
    """What a trial needs to rebuild the pruner (None: no pruning)."""
    if params.pruner == "none":
        return None
    options = {option: getattr(params, option) for option in PRUNER_OPTIONS}
    return PrunerSpec(
        name=params.pruner,
        max_resource=curve_points(params),
        **{**options, "startup_trials": startup_trials(params)},
    )


def startup_trials(params: HpoParams) -> int:
    """Complete trials a median or percentile pruner waits for: as set, else a quarter of the
    budget, 2 to 5 (Optuna's 5 would leave a small search nothing to prune)."""
    if params.startup_trials is not None:
        return params.startup_trials
    return min(5, max(2, params.trials // 4))


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


def trial_key_params(params: HpoParams, suggested: Mapping[str, Any]) -> dict[str, Any]:
    """What a trial's cache key covers: its target params, plus the pruner when there is one
    (a pruned result must not stand in for a run that nothing would have stopped)."""
    spec = pruner_spec(params)
    point = trial_params(params, suggested)
    return point if spec is None else {**point, "hpoPruner": spec.model_dump(mode="json")}


def trial_context(
    params: HpoParams,
    records: Sequence[TrialRecord],
    number: int,
    suggested: Mapping[str, Any],
    *,
    metric_name: str,
) -> TrialContext | None:
    """What trial `number` (at point `suggested`) is started with when the search prunes: the
    pruner, the curve stride, its own curve length, and the finished trials it sees (numbered
    below `history_end`: which trials finished first must not change what prunes it), newest
    first up to MAX_CONTEXT_BYTES."""
    spec = pruner_spec(params)
    if spec is None:
        return None
    end = history_end(params, number)
    history: list[TrialPoint] = []
    size = 0
    for record in sorted(records, key=lambda r: -r.number):
        if record.number >= end or record.state not in ("Complete", "Pruned"):
            continue
        if record.state == "Pruned" and not record.curve:
            continue
        value = record.values[0] if record.state == "Complete" and record.values else None
        point = TrialPoint(
            number=record.number,
            state=record.state,  # type: ignore[arg-type]
            value=value,
            curve=list(record.curve or []),
        )
        size += len(point.model_dump_json(by_alias=True)) + 1
        if size > MAX_CONTEXT_BYTES:
            break
        history.append(point)
    return TrialContext(
        number=number,
        maximize=maximize(params, metric_name)[0],
        stride=curve_stride(params),
        points=trial_curve_points(params, suggested),
        pruner=spec,
        history=sorted(history, key=lambda p: p.number),
    )


# ---- the stage ------------------------------------------------------------------------------


def _trial_points(params: HpoParams) -> list[tuple[str | None, Any, StageParams]]:
    """The target's params at the points `check` validates: the first point, and the first
    point with each end of each range and each choice in turn (key, value; None for the first
    point): the points that stand for every trial's output."""
    target = _target_stage(params)
    first = _first_point(params)
    points: list[tuple[str | None, Any, StageParams]] = [
        (None, None, _validated(params, target, first))
    ]
    for key, values in _extremes(params).items():
        for value in values:
            points.append((key, value, _validated(params, target, {**first, key: value})))
    return points


def _least_accepted(formats: set[ModelFormat]) -> ModelFormat:
    """Of several formats the winner may have, the one the fewest stage types take: a later
    stage that takes it takes the others too (pt2 and torchscript go wherever onnx goes), so
    validation refuses a later stage that cannot take every possible winner."""
    from kompaktor.stages.base import registry

    stages = registry().values()
    return min(sorted(formats), key=lambda f: sum(f in s.accepts for s in stages))


class HpoStage(Stage[HpoParams]):
    """In a job, the plan runs an hpo stage's trials (as pods, or local processes) through the
    functions above. `kompaktor stage run --type hpo` runs the same search in-process: trials
    one after another, in batches of `parallelism` proposed together as the plan would."""

    Params: ClassVar[type[StageParams]] = HpoParams
    type: ClassVar[str] = "hpo"
    accepts: ClassVar[frozenset[ModelFormat]] = frozenset({"pt2", "torchscript", "onnx"})
    produces: ClassVar[ModelFormat | None] = None
    sparse_layers: ClassVar[SparseLayers] = "run"  # its trials see them (train fine-tunes them)

    def output_format(self, input_format: ModelFormat, params: HpoParams) -> ModelFormat:
        """The trials' common output format; when the space gives several (quantize's mode:
        bf16 writes pt2, static onnx), the one the fewest stages take, so that a later stage
        that cannot take every possible winner is refused before the search runs."""
        stage = _target_stage(params)()
        formats = {
            stage.output_format(input_format, point) for _, _, point in _trial_points(params)
        }
        return formats.pop() if len(formats) == 1 else _least_accepted(formats)

    def format_cause(
        self, input_format: ModelFormat, params: HpoParams, output: ModelFormat
    ) -> str | None:
        """The searched params whose values decide that the target writes `output` models: the
        search may pick any of them (None when no searched value changes the format)."""
        stage = _target_stage(params)()
        formats: dict[str, list[tuple[Any, ModelFormat]]] = {}
        for key, value, point in _trial_points(params):
            if key is not None:
                formats.setdefault(key, []).append(
                    (value, stage.output_format(input_format, point))
                )
        leads = {
            key: [value for value, made in pairs if made == output]
            for key, pairs in formats.items()
            if len({made for _, made in pairs}) > 1
        }
        leads = {key: values for key, values in leads.items() if values}
        if not leads:
            return None
        return "; ".join(
            f"params.space.{key}: {', '.join(map(str, values))} (of "
            f"{', '.join(map(str, _extremes(params)[key]))}) "
            f"{'makes' if len(values) == 1 else 'make'} {params.target} write {output} models, "
            f"and the search may pick {'it' if len(values) == 1 else 'any of them'}"
            for key, values in leads.items()
        )

    def output_precision(self, input_precision: Precision, params: HpoParams) -> Precision:
        """The trials' common output precision; when they differ, the first that differs from
        the input's (the winner may be quantized: a later stage must allow for it)."""
        stage = _target_stage(params)()
        precisions = [
            stage.output_precision(input_precision, point) for _, _, point in _trial_points(params)
        ]
        if len(set(precisions)) == 1:
            return precisions[0]
        return next(p for p in precisions if p != input_precision)

    def check(self, params: HpoParams, plan: PlanContext) -> None:
        check(params, plan)

    def preflight(self, params: HpoParams) -> None:
        check(params)

    def run(self, ctx: StageContext[HpoParams]) -> StageResult:
        from kompaktor.stages.hpo_inprocess import run_search

        return run_search(ctx)
