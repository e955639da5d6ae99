"""HPO pruning across processes: a trial rebuilds its pruner from the finished trials' curves,
the plan hands that context to each trial and records pruned runs as Pruned, and status stays
small at 300 trials."""

from __future__ import annotations

import json
from typing import Any

import optuna
import pytest
from optuna.trial import TrialState
from tests.unit.plan.test_hpo_flow import answer_probes, hpo_job
from tests.unit.plan.test_machine import T0, kinds

from kompaktor.api.run import MAX_CURVE, PrunerSpec, RunRecord, TrialContext, TrialPoint
from kompaktor.api.status import OptimizationJobStatus, OutputRef, TrialRecord
from kompaktor.plan import (
    EnsureRun,
    InputsProbed,
    JobContext,
    ProbeCache,
    RunSucceeded,
    StepResult,
    step,
)
from kompaktor.search import Observed, rebuild, sampler_for
from kompaktor.search.pruning import TrialPruner
from kompaktor.stages.hpo_params import HpoParams, distributions
from kompaktor.stages.hpo_proposals import propose
from kompaktor.stages.hpo_pruning import MAX_CONTEXT_BYTES, pruner_spec, trial_context

GOOD = [0.80, 0.88, 0.92, 0.94, 0.95, 0.95]


def run_curve(context: TrialContext, curve: list[float]) -> list[float]:
    """The points a trial reports before its pruner stops it (all of them when never)."""
    pruner = TrialPruner(context)
    reported = []
    for value in curve:
        reported.append(value)
        if pruner.report(value):
            break
    return reported


def history(curves: list[list[float]], state: str = "Complete") -> list[TrialPoint]:
    return [
        TrialPoint(number=n, state=state, value=c[-1], curve=c)  # type: ignore[arg-type]
        for n, c in enumerate(curves)
    ]


def context(points: list[TrialPoint], **pruner: Any) -> TrialContext:
    return TrialContext(
        number=len(points), pruner=PrunerSpec.model_validate(pruner), history=points
    )


def test_median_pruner_stops_a_trial_behind_the_median_after_warmup() -> None:
    done = history([GOOD, [v - 0.02 for v in GOOD], [v + 0.01 for v in GOOD]])
    bad = [0.30, 0.35, 0.40, 0.42, 0.45, 0.50]
    assert run_curve(context(done, name="median", startupTrials=3), bad) == bad[:1]
    warm = context(done, name="median", startupTrials=3, warmupSteps=2)
    assert run_curve(warm, bad) == bad[:3]  # points 0 and 1 are warm-up
    assert run_curve(context(done, name="median", startupTrials=3), GOOD) == GOOD
    # fewer complete trials than startupTrials: nobody is pruned yet
    assert run_curve(context(done, name="median", startupTrials=4), bad) == bad
    # minimize (mse): a high curve is the bad one
    low = context(done, name="median", startupTrials=3).model_copy(update={"maximize": False})
    assert run_curve(low, [1.5] * 6) == [1.5]
    assert run_curve(low, [0.1] * 6) == [0.1] * 6


def test_percentile_pruner_keeps_only_the_best_share() -> None:
    done = history([[0.5 + 0.1 * i] * 4 for i in range(5)])  # 0.5 .. 0.9 at every point
    assert len(run_curve(context(done, name="percentile", percentile=25, startupTrials=1),
                         [0.75] * 4)) == 1  # fmt: skip
    assert len(run_curve(context(done, name="percentile", percentile=90, startupTrials=1),
                         [0.75] * 4)) == 4  # fmt: skip


def test_successive_halving_replays_rung_marks_from_the_curves() -> None:
    """Rung marks are not in the records; without replaying them nobody would compete."""
    pruned = TrialPoint(number=3, state="Pruned", curve=[0.2, 0.25])
    done = [*history([GOOD, GOOD, [0.7] * 6]), pruned]
    sha = context(done, name="successiveHalving", minResource=2, reductionFactor=2)
    # rung 0 judges point 2: 0.3 is not in the top half of (0.88, 0.88, 0.7, 0.25, 0.3)
    assert run_curve(sha, [0.2, 0.3, 0.9, 0.9]) == [0.2, 0.3]
    assert run_curve(sha, GOOD[:4]) == GOOD[:4]
    # the replayed study holds the marks a live study would have left
    study = TrialPruner(sha).study
    marks = [t.system_attrs.get("completed_rung_0") for t in study.trials[:4]]
    assert marks == [0.88, 0.88, 0.7, 0.25]


def test_hyperband_is_deterministic_and_prunes_a_bad_trial() -> None:
    done = history([[g + 0.001 * n for g in GOOD[:4]] for n in range(12)])
    hb = context(done, name="hyperband", minResource=1, reductionFactor=2, maxResource=4)
    bad = [0.1, 0.1, 0.1, 0.1]
    first = run_curve(hb, bad)
    assert len(first) < 4
    assert run_curve(hb, bad) == first  # a restarted trial decides the same
    assert run_curve(hb, [0.99] * 4) == [0.99] * 4


def test_pruned_trials_come_back_as_pruned_in_the_sampler_study() -> None:
    p = HpoParams.model_validate(
        {"target": "train", "trials": 10, "pruner": "median",
         "space": {"lr": {"low": 1e-4, "high": 1e-1, "log": True}}}
    )  # fmt: skip
    records = [
        TrialRecord(stage="t", number=0, params={"lr": 1e-3}, state="Complete", values=[0.9],
                    metrics={"valMetric": 0.9}, curve=[0.8, 0.9]),
        TrialRecord(stage="t", number=1, params={"lr": 5e-2}, state="Pruned", curve=[0.2]),
    ]  # fmt: skip
    study = rebuild(
        distributions(p),
        [Observed(r.params, r.state, r.values, r.curve) for r in records],  # type: ignore[arg-type]
        [True],
        sampler_for("tpe", 0, startup=1, population=1),
    )
    assert [t.state for t in study.trials] == [TrialState.COMPLETE, TrialState.PRUNED]
    assert study.trials[1].intermediate_values == {0: 0.2}
    assert study.trials[1].value == 0.2
    assert study.trials[0].intermediate_values == {0: 0.8, 1: 0.9}
    assert len(propose(p, records, 3, seed=0)) == 3


def test_trial_context_is_bounded_and_keeps_the_newest_trials() -> None:
    p = HpoParams.model_validate(
        {"target": "train", "trials": 1000, "pruner": "median", "base": {"epochs": 100},
         "space": {"lr": {"low": 1e-4, "high": 1e-1, "log": True}}}
    )  # fmt: skip
    curve = [0.123456789 + i / 1000 for i in range(MAX_CURVE)]
    records = [
        TrialRecord(stage="t", number=n, params={"lr": 1e-3}, state="Complete",
                    values=[0.9], curve=[round(v, 4) for v in curve])
        for n in range(999)
    ]  # fmt: skip
    found = trial_context(p, records, 999, {"lr": 1e-3}, metric_name="accuracy")
    assert found is not None
    assert found.stride == 4  # 100 epochs, at most 25 points
    assert found.pruner.max_resource == found.points == 25
    text = json.dumps(found.model_dump(by_alias=True, mode="json"), separators=(",", ":"))
    assert len(text) <= MAX_CONTEXT_BYTES + 512
    numbers = [h.number for h in found.history]
    assert numbers == sorted(numbers) and numbers[-1] == 998 and len(numbers) < 999
    assert trial_context(p.model_copy(update={"pruner": "none"}), records, 999, {"lr": 1e-3},
                         metric_name="accuracy") is None  # fmt: skip


# ---- the plan --------------------------------------------------------------------------------


def job(pruner: str, trials: int = 4, parallelism: int = 2) -> JobContext:
    return hpo_job(trials, parallelism, epochs=3, pruner=pruner, gpu_price=2.4567)


def start(ctx: JobContext) -> StepResult:
    result = step(ctx, OptimizationJobStatus(), [InputsProbed("sha256:m", "sha256:d")], T0)
    return answer_probes(ctx, result)


def finish_runs(ctx: JobContext, result: StepResult, outcome: Any) -> StepResult:
    """Each running trial ends as `outcome(request) -> (curve, pruned)` says."""
    observations = []
    for action in kinds(result, EnsureRun):
        request = action.request
        curve, pruned = outcome(request)
        uri = f"s3://kompaktor-artifacts/ml/some-job/runs/train-{request.key}/model.pt2"
        observations.append(
            RunSucceeded(
                request.run_id,
                RunRecord(
                    type="train",
                    output=OutputRef(uri=uri, digest="sha256:" + request.key),
                    format="pt2",
                    metrics={
                        "metric": 0.9123456789,
                        "valMetric": curve[-1] + 1e-9,
                        "referenceMetric": 0.9345678912,
                        "referenceValMetric": 0.9312345678,
                        "latencyMs": 0.3456789123,
                        "sizeBytes": 2437179.0,
                        "parameters": 601610.0,
                        "finalLoss": 0.123,
                    },
                    curve=curve,
                    pruned=pruned,
                    energy_joules=123.456789,
                    duration_seconds=12.3456789,
                ),
            )
        )
    return answer_probes(ctx, step(ctx, result.status, observations, T0))


def trial_arg(request: Any) -> dict[str, Any] | None:
    command = request.command()
    if "--trial" not in command:
        return None
    parsed: dict[str, Any] = json.loads(command[command.index("--trial") + 1])
    return parsed


def test_the_plan_hands_trials_their_pruning_context_and_records_pruned_runs() -> None:
    ctx = job("median", trials=4, parallelism=2)
    result = start(ctx)
    first = [trial_arg(a.request) for a in kinds(result, EnsureRun)]
    assert [c["number"] for c in first if c] == [0, 1]
    assert all(c and c["pruner"]["name"] == "median" and c["history"] == [] for c in first)
    assert all(c and c["pruner"]["maxResource"] == 3 and c["stride"] == 1 for c in first)

    def by_lr(request: Any) -> tuple[list[float], bool]:
        if request.params["lr"] > 3e-3:
            return [0.2], True
        return [0.9, 0.93, 0.95], False

    result = finish_runs(ctx, result, by_lr)
    trials = result.status.trials
    assert {t.state for t in trials[:2]} <= {"Complete", "Pruned"}
    second = [trial_arg(a.request) for a in kinds(result, EnsureRun)]
    # Trial n sees the trials numbered up to n - parallelism, whichever finished first.
    assert [(c["number"], [h["number"] for h in c["history"]]) for c in second if c] == [
        (2, [0]),
        (3, [0, 1]),
    ]
    result = finish_runs(ctx, result, by_lr)
    trials = result.status.trials
    assert result.status.phase == "Succeeded", result.status.message
    pruned = [t for t in trials if t.state == "Pruned"]
    complete = [t for t in trials if t.state == "Complete"]
    assert pruned and complete  # the random draws cover both sides of lr 3e-3
    assert all(t.curve == [0.2] and t.values is None for t in pruned)
    assert all(t.curve == [0.9, 0.93, 0.95] and t.values == [0.95] for t in complete)
    # the sampler's study, rebuilt from status alone, knows the pruned trials
    saved = OptimizationJobStatus.model_validate_json(result.status.model_dump_json(by_alias=True))
    p = HpoParams.model_validate(ctx.spec.stages[0].params)
    study = rebuild(
        distributions(p),
        [Observed(t.params, t.state, t.values, t.curve) for t in saved.trials],  # type: ignore[arg-type]
        [True],
        sampler_for("random", 0, startup=1, population=1),
    )
    assert sum(t.state == TrialState.PRUNED for t in study.trials) == len(pruned)


def test_without_a_pruner_no_context_is_passed_and_keys_differ() -> None:
    plain, pruning = start(job("none")), start(job("median"))
    assert all(trial_arg(a.request) is None for a in kinds(plain, EnsureRun))
    keys = {t.key for t in plain.status.trials}
    assert keys and keys.isdisjoint({t.key for t in pruning.status.trials})
    assert [t.params for t in plain.status.trials] == [t.params for t in pruning.status.trials]


def test_status_stays_small_at_300_trials_with_full_curves() -> None:
    ctx = job("median", trials=300, parallelism=300)
    result = start(ctx)
    assert len(kinds(result, EnsureRun)) == 300
    long_curve = [0.9876543210 - i * 1e-3 for i in range(MAX_CURVE + 10)]  # more than kept
    result = finish_runs(ctx, result, lambda request: (long_curve, False))
    status = result.status
    assert status.phase == "Succeeded", status.message
    size = len(status.model_dump_json(by_alias=True, exclude_none=True))
    assert size < 0.75 * 256 * 1024, size
    assert all(t.curve is not None and len(t.curve) == MAX_CURVE for t in status.trials)
    assert all(t.curve and t.curve[0] == 0.9877 for t in status.trials)  # rounded
    assert sum(t.output is not None for t in status.trials) == 1  # only the winner's
    stage = status.stages[0]
    winner = next(t for t in status.trials if t.output is not None)
    assert stage.output == winner.output


def test_a_winner_without_output_in_status_is_read_back_from_the_store() -> None:
    ctx = job("none", trials=2, parallelism=2)
    result = finish_runs(ctx, start(ctx), lambda request: ([0.9], False))
    assert result.status.phase == "Succeeded"
    # an objective edit crowns a trial whose output status dropped
    trials = [t.model_copy(update={"output": None}) for t in result.status.trials]
    stages = [s.model_copy(update={"phase": "Running", "output": None})
              for s in result.status.stages]  # fmt: skip
    status = result.status.model_copy(
        update={"trials": trials, "stages": stages, "phase": "Running"}
    )
    again = step(ctx, status, [], T0)
    probes = kinds(again, ProbeCache)
    assert len(probes) == 1 and probes[0].key in {t.key for t in trials}
    assert again.status.phase == "Running"


@pytest.mark.parametrize("pruner", ["median", "percentile", "successiveHalving", "hyperband"])
def test_every_pruner_name_builds(pruner: str) -> None:
    spec = PrunerSpec(name=pruner)  # type: ignore[arg-type]
    found = TrialPruner(TrialContext(number=0, pruner=spec))
    assert isinstance(found.study.pruner, optuna.pruners.BasePruner)
    assert found.report(0.5) is False  # nothing to compare against yet


# ---- every pruner stops a bad trial before its last point ------------------------------------


def spec_for(pruner: str, epochs: int = 4, **options: Any) -> PrunerSpec:
    """The pruner an hpo stage with these params hands its trials (its defaults filled in)."""
    p = HpoParams.model_validate(
        {"target": "train", "trials": 20, "pruner": pruner, "base": {"epochs": epochs},
         "space": {"lr": {"low": 1e-4, "high": 1e-1, "log": True}}, **options}
    )  # fmt: skip
    found = pruner_spec(p)
    assert found is not None
    return found


@pytest.mark.parametrize(
    ("pruner", "options"),
    [
        ("median", {}),
        ("percentile", {}),
        ("successiveHalving", {}),
        ("hyperband", {}),
        ("median", {"startupTrials": 4, "warmupSteps": 2}),
        ("percentile", {"percentile": 50.0, "warmupSteps": 1}),
        ("successiveHalving", {"minResource": 3, "reductionFactor": 2}),
        ("hyperband", {"minResource": 2, "reductionFactor": 2}),
    ],
)
def test_every_pruner_stops_a_bad_trial_before_its_last_point(
    pruner: str, options: dict[str, Any]
) -> None:
    """Steps counted from 0 put Hyperband's patient bracket, and successive halving's rung at
    minResource 3 of 4 points, on the last point: a bad trial ran to its end, then was
    thrown away as pruned."""
    spec = spec_for(pruner, **options)
    good = history([[0.80 + 0.002 * n, 0.88, 0.92, 0.94 + 0.001 * n] for n in range(12)])
    bad = [0.1, 0.1, 0.1, 0.1]
    for number in range(12, 20):  # trials in every Hyperband bracket
        ctx = TrialContext(number=number, points=4, pruner=spec, history=good)
        assert len(run_curve(ctx, bad)) < len(bad), (number, spec)
        best = [0.9, 0.95, 0.97, 0.99]
        assert run_curve(ctx, best) == best  # the best trial runs to its end


def test_no_trial_is_judged_at_its_last_point() -> None:
    """There training is over: a stop saves nothing and would discard a finished run."""
    done = history([GOOD[:2]] * 4)
    sha = TrialContext(
        number=4, points=2, history=done,
        pruner=PrunerSpec(name="successiveHalving", minResource=2, reductionFactor=2),
    )  # fmt: skip
    assert run_curve(sha, [0.1, 0.1]) == [0.1, 0.1]  # its rung is its last point
    longer = sha.model_copy(update={"points": 3})  # a searched epochs: this trial runs longer
    assert run_curve(longer, [0.1, 0.1, 0.1]) == [0.1, 0.1]


def test_default_startup_trials_follow_the_budget() -> None:
    def startup(trials: int, **options: Any) -> int:
        return spec_for("median", **options, trials=trials).startup_trials

    assert [startup(n) for n in (4, 8, 12, 20, 300)] == [2, 2, 3, 5, 5]
    assert startup(300, startupTrials=1) == 1
