"""What an hpo stage's params say: the target, the search space (each searched param and
the Optuna distribution it describes), sampler, objectives, winner rule and pruner; and the
target params one trial gets."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from pydantic import Field, PrivateAttr, field_validator, model_validator

from kompaktor.evaluate import higher_is_better
from kompaktor.stages.base import StageParams
from kompaktor.stages.hpo_fields import number_kind, params_model

Objective = Literal["metric", "latency", "size"]


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
                space._field_kind = number_kind(params_model(stage), key)
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


def distributions(params: HpoParams) -> dict[str, BaseDistribution]:
    """Each searched param's Optuna distribution, by name: the space samplers draw from."""
    return {name: space.distribution() for name, space in params.space.items()}


def maximize(params: HpoParams, metric_name: str) -> list[bool]:
    """Direction of each objective: the metric up (mse down), latency and size down."""
    return [o == "metric" and higher_is_better(metric_name) for o in params.objectives]


def trial_params(params: HpoParams, suggested: Mapping[str, Any]) -> dict[str, Any]:
    """The target stage's params for one trial: the fixed base plus the suggested point."""
    return {**params.base, **suggested}
