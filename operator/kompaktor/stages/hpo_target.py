"""The target stage a search runs, and the points of its space that stand for every trial:
validated as the target would take them, so pre-flight checks and the stage's output format
see what any trial could be."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from optuna.distributions import FloatDistribution, IntDistribution
from pydantic import ValidationError

from kompaktor.stages.base import Stage, StageParams
from kompaktor.stages.hpo_fields import params_model
from kompaktor.stages.hpo_params import HpoParams, trial_params


def target_stage(params: HpoParams) -> type[Stage[Any]]:
    """The stage type `params.target` names (a ValueError naming the field when none is)."""
    from kompaktor.stages.base import registry

    stage = registry().get(params.target)
    if stage is None:
        raise ValueError(f"params.target: stage type {params.target!r} is not available")
    return stage


def trial_points(params: HpoParams) -> list[tuple[str | None, Any, StageParams]]:
    """The target's params at the points `check` validates: the first point, and the first
    point with each end of each range and each choice in turn (key, value; None for the first
    point): the points that stand for every trial's output."""
    target = target_stage(params)
    first = _first_point(params)
    points: list[tuple[str | None, Any, StageParams]] = [
        (None, None, _validated(params, target, first))
    ]
    for key, values in extremes(params).items():
        for value in values:
            points.append((key, value, _validated(params, target, {**first, key: value})))
    return points


def _first_point(params: HpoParams) -> dict[str, Any]:
    """One point of the space: the low end of each range, the first choice."""
    point: dict[str, Any] = {}
    for key, space in params.space.items():
        if space.kind == "categorical":
            point[key] = (space.choices or [None])[0]
        else:
            point[key] = int(space.low or 0) if space.kind == "int" else float(space.low or 0.0)
    return point


def extremes(params: HpoParams) -> dict[str, list[Any]]:
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


def point_params(
    params: HpoParams, target: type[Stage[Any]], point: Mapping[str, Any]
) -> StageParams:
    """The target's params at `point` (base + point), as the target validates them: pydantic's
    ValidationError when it would refuse them."""
    return params_model(target).model_validate(trial_params(params, point))


def _validated(params: HpoParams, target: type[Stage[Any]], point: dict[str, Any]) -> StageParams:
    try:
        return point_params(params, target, point)
    except ValidationError as error:
        raise ValueError("\n".join(_describe(params, target.type, error))) from None


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
