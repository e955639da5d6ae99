"""The hpo stage's pure search functions: valid, deterministic, restart-safe proposals, Pareto
selection, and pre-flight errors that name the field."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from kompaktor.api.status import TrialRecord
from kompaktor.errors import JobSpecError
from kompaktor.evaluate import AccuracyBound
from kompaktor.stages.base import PlanContext
from kompaktor.stages.hpo_checks import check
from kompaktor.stages.hpo_params import HpoParams, trial_params
from kompaktor.stages.hpo_proposals import is_done, propose
from kompaktor.stages.hpo_report import result_details
from kompaktor.stages.hpo_scoring import trial_values
from kompaktor.stages.hpo_winner import pareto_set, select_best
from kompaktor.stages.validate import parse_params

SPACE = {
    "lr": {"low": 1e-4, "high": 1e-1, "log": True},
    "sparsity": {"low": 0.1, "high": 0.9},
    "steps": {"low": 1, "high": 4},
    "schedule": {"choices": ["cubic", "linear"]},
}
PLAN = PlanContext("tune", "pt2", (), "classification")


def params(**overrides: Any) -> HpoParams:
    spec: dict[str, Any] = {"target": "prune", "trials": 20, "space": SPACE}
    return HpoParams.model_validate(spec | overrides)


def finish(
    p: HpoParams, points: list[dict[str, Any]], score: Any, start: int = 0
) -> list[TrialRecord]:
    """Trial records as the plan keeps them, scored by `score(point) -> metrics`."""
    records = []
    for number, point in enumerate(points, start):
        metrics = score(point)
        values = trial_values(p, metrics, "accuracy")
        records.append(
            TrialRecord(
                stage="tune",
                number=number,
                params=point,
                state="Complete",
                values=values,
                metrics=metrics,
            )
        )
    return records


def in_space(point: dict[str, Any]) -> bool:
    return (
        1e-4 <= point["lr"] <= 1e-1
        and 0.1 <= point["sparsity"] <= 0.9
        and isinstance(point["steps"], int)
        and 1 <= point["steps"] <= 4
        and point["schedule"] in ("cubic", "linear")
    )


def quadratic(point: dict[str, Any]) -> dict[str, float]:
    """A cheap objective peaking at lr=3e-3, sparsity=0.6."""
    lr = point.get("lr", 3e-3)
    error = (math.log10(lr) - math.log10(3e-3)) ** 2 + (point["sparsity"] - 0.6) ** 2
    return {"metric": 1.0 - error, "latencyMs": 1.0, "sizeBytes": 1.0}


@pytest.mark.parametrize("sampler", ["random", "tpe", "gp", "cmaes", "nsga2"])
def test_every_sampler_proposes_valid_points_deterministically(sampler: str) -> None:
    p = params(sampler=sampler, trials=30)
    records = finish(p, propose(p, [], 12, seed=3), quadratic)
    first = propose(p, records, 4, seed=3)
    assert len(first) == 4
    assert all(in_space(point) for point in first)
    assert all(set(point) == set(SPACE) for point in first)
    assert propose(p, records, 4, seed=3) == first  # a restart proposes the same
    assert propose(p, records, 4, seed=4) != first


def test_running_trials_count_against_the_budget_and_steer_proposals() -> None:
    p = params(sampler="tpe", trials=5)
    done = finish(p, propose(p, [], 3, seed=0), quadratic)
    running = [TrialRecord(stage="tune", number=3, params=propose(p, done, 1, seed=0)[0])]
    assert len(propose(p, done + running, 10, seed=0)) == 1  # 5 - 4 records
    assert propose(p, done + running, 1, seed=0)[0] != running[0].params
    assert not is_done(p, done + running)


def test_grid_covers_every_point_once_across_restarts() -> None:
    grid = {
        "sparsity": {"low": 0.2, "high": 0.8, "step": 0.2},
        "schedule": {"choices": ["cubic", "linear"]},
    }
    p = params(sampler="grid", trials=50, space=grid)
    records: list[TrialRecord] = []
    while not is_done(p, records):
        batch = propose(p, records, 3, seed=7)  # each call is a fresh rebuild
        assert batch, "the grid ran dry before is_done"
        records += finish(p, batch, quadratic, start=len(records))
    seen = [(r.params["sparsity"], r.params["schedule"]) for r in records]
    assert len(seen) == len(set(seen)) == 8
    assert {s for s, _ in seen} == {0.2, 0.4, 0.6, 0.8}
    assert propose(p, records, 3, seed=7) == []


def test_tpe_matches_or_beats_random_search_on_the_same_budget() -> None:
    """Best value after 30 trials, averaged over 5 seeds, on a noisy quadratic."""

    def best(sampler: str, seed: int) -> float:
        p = params(sampler=sampler, trials=30, space={k: SPACE[k] for k in ("lr", "sparsity")})
        noise = np.random.default_rng(seed)
        records: list[TrialRecord] = []
        while len(records) < 30:
            batch = propose(p, records, 2, seed=seed)
            noisy = lambda point: {"metric": quadratic(point)["metric"] + noise.normal(0, 0.01)}  # noqa: E731
            records += finish(p, batch, noisy, start=len(records))
        return max(quadratic(r.params)["metric"] for r in records)

    tpe = np.mean([best("tpe", seed) for seed in range(5)])
    random = np.mean([best("random", seed) for seed in range(5)])
    assert tpe >= random - 1e-3, (tpe, random)


def test_nsga2_pareto_set_and_selection_rules() -> None:
    p = params(sampler="nsga2", trials=16, objectives=["metric", "latency"])
    assert len(propose(p, [], 8, seed=0)) == 8
    table = [  # (metric, latencyMs, sizeBytes)
        (0.95, 9.0, 900.0),  # best metric
        (0.94, 4.0, 500.0),  # fastest within 0.02 of 0.955
        (0.90, 1.0, 100.0),  # fastest and smallest, but drops too far
        (0.93, 8.0, 800.0),  # dominated by the second
    ]
    records = [
        TrialRecord(
            stage="tune",
            number=i,
            params={"sparsity": 0.5},
            state="Complete",
            values=[m, lat],
            metrics={"metric": m, "latencyMs": lat, "sizeBytes": size},
        )
        for i, (m, lat, size) in enumerate(table)
    ]
    assert [r.number for r in pareto_set(p, records, metric_name="accuracy")] == [0, 1, 2]

    def pick(select: str) -> int | None:
        best = select_best(
            p.model_copy(update={"select": select}), records, AccuracyBound("accuracy", 0.955, 0.02)
        )
        return None if best is None else best.number

    assert pick("best-metric") == 0
    assert pick("fastest-within-drop") == 1
    assert pick("smallest-within-drop") == 1
    assert select_best(p, records, AccuracyBound("accuracy", 0.99, 0.01)) is None
    # mse: lower is better, and the drop bound flips
    assert select_best(p, records, AccuracyBound("mse", 0.9, 0.04)).number == 2  # type: ignore[union-attr]

    # the result names the Pareto set (values by objective) and says why the winner won
    details = result_details(p, records, records[0], AccuracyBound("accuracy", 0.955, 0.02))
    assert [(t["number"], t["values"]) for t in details["paretoSet"]] == [
        (0, {"metric": 0.95, "latency": 9.0}),
        (1, {"metric": 0.94, "latency": 4.0}),
        (2, {"metric": 0.90, "latency": 1.0}),
    ]
    assert details["metricRows"] == "test"  # the records have no valMetric
    assert details["selection"] == (
        "trial 0 has the best accuracy on test rows (0.95) of the 2 complete trials within "
        "maxDrop 0.02 of the input model (select: best-metric); it is on the Pareto set of 3 "
        "trials [0, 1, 2]"
    )
    single = result_details(params(), records, records[0], AccuracyBound.of("accuracy", None, None))
    assert "paretoSet" not in single
    assert single["selection"].startswith("trial 0 has the best accuracy on test rows (0.95) "
                                          "of the 4 complete trials (select")  # fmt: skip


def test_trial_params_and_values() -> None:
    p = params(base={"method": "magnitude", "fineTuneEpochs": 0}, objectives=["metric", "size"])
    assert trial_params(p, {"sparsity": 0.5}) == {
        "method": "magnitude",
        "fineTuneEpochs": 0,
        "sparsity": 0.5,
    }
    assert trial_values(p, {"metric": 0.9, "latencyMs": 2.0, "sizeBytes": 10.0}, "accuracy") == [
        0.9,
        10.0,
    ]


def test_check_accepts_a_valid_search() -> None:
    check(params(base={"method": "magnitude"}), PLAN)


@pytest.mark.parametrize(
    ("space", "message"),
    [
        ({"lr": {"low": 0.1, "high": 0.01}}, "params.space.lr: low (0.1) is greater than high"),
        ({"lr": {"low": 0, "high": 0.1, "log": True}}, "params.space.lr: log needs low > 0"),
        ({"schedule": {"choices": []}}, "params.space.schedule: choices must not be empty"),
        ({"lr": {"high": 0.1}}, "params.space.lr: needs low and high"),
        ({}, "params.space: must name at least one"),
        ({"steps": {"low": True, "high": 4}}, "params.space.steps.low: must be a number, not a"),
    ],
)
def test_a_space_with_no_valid_point_names_the_field(space: dict[str, Any], message: str) -> None:
    with pytest.raises(JobSpecError) as error:
        parse_params("hpo", {"target": "prune", "trials": 4, "space": space}, "stages[0] (hpo)")
    assert f"stages[0] (hpo): {message}" in str(error.value)


def test_a_boolean_for_a_number_of_the_target_is_named() -> None:
    with pytest.raises(ValueError, match=r"params\.base\.fineTuneEpochs: must be a number"):
        check(params(base={"fineTuneEpochs": True}), PLAN)
    with pytest.raises(ValueError, match=r"params\.space\.steps: must be a number"):
        check(params(space=SPACE | {"steps": {"choices": [2, True]}}), PLAN)


def test_unknown_target_param_is_named() -> None:
    with pytest.raises(ValueError, match=r"params\.space\.learningRate: prune has no param"):
        check(params(space={"learningRate": {"low": 1e-4, "high": 1e-2}}), PLAN)
    with pytest.raises(ValueError, match=r"params\.base\.bogus: prune has no param"):
        check(params(base={"bogus": 1}), PLAN)


def test_points_the_target_would_reject_are_named() -> None:
    bad = params(space={"sparsity": {"low": 0.0, "high": 0.5}})  # prune needs (0, 1)
    with pytest.raises(ValueError, match=r"params\.space\.sparsity: must be in \(0, 1\)"):
        check(bad, PLAN)
    grid = params(sampler="grid", space={"lr": {"low": 1e-4, "high": 1e-2}})
    with pytest.raises(ValueError, match=r"params\.space\.lr: a grid search needs step or choices"):
        check(grid, PLAN)
    with pytest.raises(JobSpecError, match=r"params: .*cmaes optimizes one objective"):
        parse_params(
            "hpo",
            {
                "target": "prune",
                "trials": 4,
                "sampler": "cmaes",
                "objectives": ["metric", "size"],
                "space": {"sparsity": {"low": 0.1, "high": 0.5}},
            },
            "stages[0] (hpo)",
        )


# ---- ranking on validation rows ----------------------------------------------------------------


def test_trials_are_valued_and_ranked_by_the_validation_metric_not_the_test_split() -> None:
    p = params(objectives=["metric", "size"])
    metrics = {"metric": 0.99, "valMetric": 0.91, "sizeBytes": 10.0}
    assert trial_values(p, metrics, "accuracy") == [0.91, 10.0]
    assert trial_values(p, {"metric": 0.99, "sizeBytes": 10.0}, "accuracy") == [0.99, 10.0]
    records = [  # test favours 0, validation favours 1
        TrialRecord(stage="tune", number=0, params={}, state="Complete",
                    metrics={"metric": 0.99, "valMetric": 0.90, "referenceValMetric": 0.92}),
        TrialRecord(stage="tune", number=1, params={}, state="Complete",
                    metrics={"metric": 0.95, "valMetric": 0.93, "referenceValMetric": 0.92}),
    ]  # fmt: skip
    best = select_best(params(), records, AccuracyBound("accuracy", 0.99, 0.01))
    assert best is not None and best.number == 1
    # the bound is on validation rows too: 0.90 is 0.02 below the input model's 0.92 there
    fastest = params(select="fastest-within-drop")
    timed = [r.model_copy(update={"metrics": {**r.metrics, "latencyMs": 2.0 - r.number}})
             for r in records]  # fmt: skip
    assert select_best(fastest, timed, AccuracyBound("accuracy", 0.0, 0.01)) == (timed[1])
    assert select_best(params(), records[:1], AccuracyBound("accuracy", 0.0, 0.01)) is None


# ---- bad input: every message names the stage and the field, before any work ------------------


@pytest.mark.parametrize(
    ("hpo", "message"),
    [
        ({"space": {"epochs": {"low": 5, "high": 2}}}, "params.space.epochs: low (5) is greater"),
        ({"space": {"optimizer": {"choices": []}}}, "params.space.optimizer: choices must not"),
        (
            {"sampler": "grid", "space": {"lr": {"low": 1e-4, "high": 1e-2}}},
            "params.space.lr: a grid search needs step or choices",
        ),
        ({"space": {"epochs": {"low": 0, "high": 3}}}, "params.space.epochs: Input should be"),
        (  # the low end is fine, the high end is not
            {"space": {"momentum": {"low": 0.5, "high": 1.0}}},
            "params.space.momentum: Input should be less than 1",
        ),
        (  # one choice the target rejects
            {"space": {"optimizer": {"choices": ["adam", "rmsprop"]}}},
            "params.space.optimizer: must be one of",
        ),
        ({"pruner": "median", "objectives": ["metric", "size"]}, "params.pruner: Optuna prunes"),
        (
            {
                "pruner": "median",
                "target": "quantize",
                "space": {"calibrationSamples": {"low": 16, "high": 64}},
            },
            "params.pruner: target quantize reports no",
        ),
        ({"pruner": "median", "percentile": 10}, "params.percentile: only used with pruner"),
        ({"reductionFactor": 2}, "params.reductionFactor: only used with pruner"),
        (  # a rung at the last point could only discard a finished run
            {"pruner": "hyperband", "minResource": 3, "base": {"epochs": 3}},
            "params.minResource: 3 puts the first rung at or after the last of the 3 curve "
            "points a trial reports, where nothing is left to stop; use at most 2",
        ),
        (
            {"pruner": "median", "warmupSteps": 2, "base": {"epochs": 3}},
            "params.warmupSteps: 2 leaves no curve point to judge before the last of the 3",
        ),
        (
            {"pruner": "successiveHalving", "base": {"epochs": 1}},
            "params.pruner: a train trial reports at most 1 validation point",
        ),
    ],
)
def test_a_search_that_cannot_work_is_refused_with_stage_and_field(
    hpo: dict[str, Any], message: str
) -> None:
    from kompaktor.api.spec import OptimizationJobSpec
    from kompaktor.stages.validate import validate_job

    stage = {"target": "train", "trials": 4, "space": {"lr": {"low": 1e-4, "high": 1e-2}}} | hpo
    spec = OptimizationJobSpec.model_validate(
        {
            "model": {"uri": "file:///m/model.pt2"},
            "dataset": {"uri": "sklearn:digits"},
            "stages": [{"name": "tune", "type": "hpo", "params": stage}],
        }
    )
    with pytest.raises(JobSpecError) as error:
        validate_job(spec)
    assert f"stage 'tune' (spec.stages[0], hpo): {message}" in str(error.value)


def test_every_choice_is_checked_against_the_input_model() -> None:
    """Only the first point met the target's plan-time check: `choices: [static, qat]` on a
    TorchScript model passed validation and every qat trial failed at run time."""
    from kompaktor.api.spec import OptimizationJobSpec
    from kompaktor.stages.validate import validate_job

    search = {"target": "quantize", "trials": 2, "space": {"mode": {"choices": ["static", "qat"]}}}
    spec = OptimizationJobSpec.model_validate(
        {
            "model": {"uri": "file:///m/model.pt"},
            "dataset": {"uri": "sklearn:digits"},
            "stages": [{"name": "tune", "type": "hpo", "params": search}],
        }
    )
    with pytest.raises(JobSpecError, match=r"params\.target \(quantize\): params\.mode: qat .*pt2"):
        validate_job(spec)
