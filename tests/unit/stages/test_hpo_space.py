"""A searched range takes its kind of number from the target's param, not from how its ends
are written: an int param is searched on integers, a float param on floats."""

from __future__ import annotations

from typing import Any

import pytest
from optuna.distributions import FloatDistribution, IntDistribution

from kompaktor.api.spec import OptimizationJobSpec
from kompaktor.errors import JobSpecError
from kompaktor.stages.hpo_checks import check
from kompaktor.stages.hpo_params import HpoParams
from kompaktor.stages.hpo_proposals import propose
from kompaktor.stages.validate import validate_job

TEACHER = {"teacher": {"uri": "file:///m/teacher.pt2"}}


def params(target: str, space: dict[str, Any], **more: Any) -> HpoParams:
    spec = {"target": target, "sampler": "random", "trials": 6, "space": space, **more}
    return HpoParams.model_validate(spec)


def job(space: dict[str, Any]) -> OptimizationJobSpec:
    stage = {"target": "train", "sampler": "random", "trials": 3, "space": space}
    return OptimizationJobSpec.model_validate(
        {
            "model": {"uri": "file:///m/model.pt2"},
            "dataset": {"uri": "sklearn:digits"},
            "stages": [{"name": "t", "type": "hpo", "params": stage}],
        }
    )


@pytest.mark.parametrize(
    ("key", "space"),
    [
        ("epochs", {"low": 1, "high": 2.0}),  # every trial failed: epochs 1.37 is no int
        ("batchSize", {"low": 16, "high": 128, "step": 16.0}),  # recorded as 80.0
    ],
)
def test_an_int_param_is_searched_on_integers_however_its_ends_are_written(
    key: str, space: dict[str, Any]
) -> None:
    p = params("train", {key: space})
    check(p)
    assert isinstance(p.space[key].distribution(), IntDistribution)
    points = propose(p, [], 6, seed=0)
    assert points and all(type(point[key]) is int for point in points)


@pytest.mark.parametrize(
    ("space", "where"),
    [
        ({"epochs": {"low": 1, "high": 2.5}}, "params.space.epochs.high"),
        ({"batchSize": {"low": 16, "high": 128, "step": 0.5}}, "params.space.batchSize.step"),
        ({"epochs": {"low": 1, "high": 3, "type": "float"}}, "params.space.epochs"),
    ],
)
def test_a_non_integer_range_over_an_int_param_is_refused(
    space: dict[str, Any], where: str
) -> None:
    with pytest.raises(JobSpecError, match=f"{where}: .*integer"):
        validate_job(job(space))


def test_a_float_param_is_searched_on_floats_even_with_integer_ends() -> None:
    """temperature {low: 1, high: 8} was searched on 1, 2, .. 8 only."""
    p = params("distill", {"temperature": {"low": 1, "high": 8}}, base=TEACHER)
    check(p)
    assert isinstance(p.space["temperature"].distribution(), FloatDistribution)
    points = propose(p, [], 6, seed=0)
    assert any(not float(point["temperature"]).is_integer() for point in points)
    grid = params("distill", {"temperature": {"low": 1, "high": 8}}, base=TEACHER, sampler="grid")
    with pytest.raises(ValueError, match=r"params\.space\.temperature: a grid search needs step"):
        check(grid)


def test_an_explicit_int_type_over_a_float_param_still_searches_integers() -> None:
    p = params("distill", {"temperature": {"low": 1, "high": 8, "type": "int"}}, base=TEACHER)
    check(p)
    assert isinstance(p.space["temperature"].distribution(), IntDistribution)
