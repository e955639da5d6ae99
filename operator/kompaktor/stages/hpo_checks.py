"""Pre-flight checks of an hpo stage: what would fail every trial, found before any runs, each
error naming the field."""

from __future__ import annotations

from typing import Any

from kompaktor.api.messages import field_names, unknown_name
from kompaktor.search.grid import MAX_GRID, grid_size
from kompaktor.stages.base import PlanContext, Stage
from kompaktor.stages.hpo_fields import (
    camel,
    canonical_name,
    number_kind,
    param_names,
    params_model,
)
from kompaktor.stages.hpo_params import PRUNER_OPTIONS, HpoParams, distributions
from kompaktor.stages.hpo_pruning import curve_points
from kompaktor.stages.hpo_target import target_stage, trial_points


def check(params: HpoParams, plan: PlanContext | None = None) -> None:
    """ValueError naming the field when the search cannot work: an unknown target param, a
    grid over a continuous range, or base + a point of the space the target would reject."""
    target = target_stage(params)
    names = param_names(target.Params)
    for where, keys in (("space", params.space), ("base", params.base)):
        for key in keys:
            if key not in names:
                known = field_names(target.Params)
                raise ValueError(f"params.{where}.{key}: {unknown_name(key, known, params.target)}")
    _check_kinds(params, target)
    for key in params.base:
        if canonical_name(target.Params, key) in {
            canonical_name(target.Params, k) for k in params.space
        }:
            raise ValueError(f"params.base.{key}: is also searched in params.space; keep one")
    if params.sampler == "grid":
        for key, space in params.space.items():
            if space.kind == "float" and space.step is None:
                raise ValueError(f"params.space.{key}: a grid search needs step or choices")
        if grid_size(distributions(params)) > MAX_GRID:
            raise ValueError(f"params.space: the grid has more than {MAX_GRID} points")
    # every end of a range and every choice must work
    points = [point for _, _, point in trial_points(params)]
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


def _check_kinds(params: HpoParams, target: type[Stage[Any]]) -> None:
    """A range over an int param needs integer ends and step; a float param is no int range."""
    for key, space in params.space.items():
        field_kind = number_kind(params_model(target), key)
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
                f"params.{camel(option)}: only used with pruner: {' or '.join(pruners)} "
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
