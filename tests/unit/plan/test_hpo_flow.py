"""HPO inside the plan: trials as parallel runs, rebuilt from status after a restart."""

from __future__ import annotations

from typing import Any

import pytest

from kompaktor.api.run import RunRecord
from kompaktor.api.spec import OptimizationJobSpec
from kompaktor.api.status import OptimizationJobStatus, OutputRef
from kompaktor.plan import (
    CacheProbed,
    EnsureRun,
    InputsProbed,
    JobContext,
    ProbeCache,
    RunFailed,
    RunSucceeded,
    StepResult,
    WriteRecord,
    step,
)
from tests.unit.plan.test_machine import T0, kinds


def hpo_job(
    trials: int = 4,
    parallelism: int = 2,
    *,
    epochs: int = 1,
    pruner: str | None = None,
    gpu_price: float | None = None,
) -> JobContext:
    """A one-stage job: random search over train's lr; `gpu_price` puts it on a priced pool."""
    params: dict[str, Any] = {
        "target": "train",
        "sampler": "random",
        "trials": trials,
        "parallelism": parallelism,
        "base": {"epochs": epochs},
        "space": {"lr": {"low": 1e-4, "high": 1e-1, "log": True}},
    }
    if pruner is not None:
        params["pruner"] = pruner
    spec = OptimizationJobSpec.model_validate(
        {
            "model": {"uri": "file:///m/model.pt2"},
            "dataset": {"uri": "sklearn:digits"},
            "objective": {"metric": "accuracy", "maxDrop": 0.05},
            "stages": [{"name": "tune", "type": "hpo", "params": params}],
        }
    )
    if gpu_price is None:
        return JobContext(name="h", spec=spec, artifacts_uri="file:///art", generation=1)
    return JobContext(
        name="h", spec=spec, artifacts_uri="file:///art", generation=1,
        default_pool="gpu", pool_prices={"gpu": gpu_price},
    )  # fmt: skip


def answer_probes(job: JobContext, result: StepResult) -> StepResult:
    while probes := kinds(result, ProbeCache):
        result = step(job, result.status, [CacheProbed(p.key, None) for p in probes], T0)
    return result


def succeed(job: JobContext, result: StepResult, metric_of: Any) -> StepResult:
    runs = kinds(result, EnsureRun)
    observations = [finished(e, metric_of(e.request.params["lr"])) for e in runs]
    return answer_probes(job, step(job, result.status, observations, T0))


def finished(run: EnsureRun, metric: float) -> RunSucceeded:
    """The run succeeded with this metric (its output named and digested by its run id)."""
    rid = run.request.run_id
    output = OutputRef(uri=f"file:///art/{rid}/model.pt2", digest=rid)
    return RunSucceeded(
        rid,
        RunRecord(
            type="train",
            output=output,
            format="pt2",
            metrics={"metric": metric, "referenceMetric": 0.9},
        ),
    )


def test_trials_run_in_parallel_and_the_best_wins() -> None:
    job = hpo_job()
    result = step(job, OptimizationJobStatus(), [InputsProbed("sha256:m", "sha256:d")], T0)
    result = answer_probes(job, result)
    first = kinds(result, EnsureRun)
    assert len(first) == 2
    assert {e.request.trial for e in first} == {0, 1}
    assert all(e.request.stage_type == "train" for e in first)
    assert all(e.request.params["epochs"] == 1 for e in first)

    def metric(lr: float) -> float:
        return 0.9 - abs(lr - 0.01)

    result = succeed(job, result, metric)
    second = kinds(result, EnsureRun)
    assert {e.request.trial for e in second} == {2, 3}
    result = succeed(job, result, metric)
    assert result.status.phase == "Succeeded"
    trials = result.status.trials
    assert [t.state for t in trials] == ["Complete"] * 4
    best = max(trials, key=lambda t: t.metrics["metric"])
    stage = result.status.stages[0]
    assert stage.output is not None and best.output is not None
    assert stage.output.uri == best.output.uri


def test_a_restart_mid_study_loses_nothing_and_duplicates_nothing() -> None:
    job = hpo_job(trials=6, parallelism=3)
    result = answer_probes(
        job, step(job, OptimizationJobStatus(), [InputsProbed("sha256:m", "sha256:d")], T0)
    )
    result = succeed(job, result, lambda lr: 0.88)
    running = {e.request.run_id for e in kinds(result, EnsureRun)}
    # A new process knows only the status it reads back from the cluster.
    saved = OptimizationJobStatus.model_validate_json(result.status.model_dump_json(by_alias=True))
    again = step(job, saved, [], T0)
    assert {e.request.run_id for e in kinds(again, EnsureRun)} == running
    assert len(again.status.trials) == len(result.status.trials) == 6
    assert [t.params for t in again.status.trials] == [t.params for t in result.status.trials]


def test_no_trial_within_the_bound_fails_the_stage() -> None:
    job = hpo_job(trials=2, parallelism=2)
    result = answer_probes(
        job, step(job, OptimizationJobStatus(), [InputsProbed("sha256:m", "sha256:d")], T0)
    )
    result = succeed(job, result, lambda lr: 0.5)
    assert result.status.phase == "Failed"
    assert "NoTrialWithinBound" in (result.status.message or "")


def test_trials_that_all_fail_say_why() -> None:
    """A setup error (a missing teacher, say) fails every trial alike: the job says that, once,
    rather than that no trial kept the metric within the bound."""
    job = hpo_job(trials=2, parallelism=2)
    result = answer_probes(
        job, step(job, OptimizationJobStatus(), [InputsProbed("sha256:m", "sha256:d")], T0)
    )
    failed = [
        RunFailed(e.request.run_id, "ArtifactError", "no artifact at teacher.pt2", False)
        for e in kinds(result, EnsureRun)
    ]
    result = answer_probes(job, step(job, result.status, failed, T0))
    assert result.status.phase == "Failed"
    assert result.status.message is not None
    assert "NoTrialSucceeded: all 2 trials failed: ArtifactError: no artifact at teacher.pt2" in (
        result.status.message
    )
    assert result.status.message.count("teacher.pt2") == 1


def test_trials_found_in_the_cache_use_no_energy() -> None:
    """A cached rerun showed 0 J for every stage and the cached trials' original energy in the
    job's total: a cache hit costs nothing now, as a cached stage does."""
    job = hpo_job(trials=2, parallelism=2)
    result = step(job, OptimizationJobStatus(), [InputsProbed("sha256:m", "sha256:d")], T0)
    record = RunRecord(
        type="train", format="pt2", energy_joules=250.0,
        output=OutputRef(uri="file:///art/t/model.pt2", digest="t"),
        metrics={"metric": 0.9, "referenceMetric": 0.9},
    )  # fmt: skip
    stage_key = kinds(result, ProbeCache)[0].key  # the hpo stage's own result: not cached
    result = step(job, result.status, [CacheProbed(stage_key, None)], T0)
    while probes := kinds(result, ProbeCache):
        result = step(job, result.status, [CacheProbed(p.key, record) for p in probes], T0)
    assert [t.state for t in result.status.trials] == ["Complete", "Complete"]
    assert result.status.energy_joules == 0


def test_the_stage_result_is_recorded_for_the_cache() -> None:
    job = hpo_job(trials=2, parallelism=2)
    result = answer_probes(
        job, step(job, OptimizationJobStatus(), [InputsProbed("sha256:m", "sha256:d")], T0)
    )
    penultimate = result
    result = step(
        job,
        penultimate.status,
        [
            RunSucceeded(
                e.request.run_id,
                RunRecord(
                    type="train",
                    output=OutputRef(uri=f"file:///x/{i}/model.pt2", digest=str(i)),
                    format="pt2",
                    metrics={"metric": 0.9, "referenceMetric": 0.9},
                ),
            )
            for i, e in enumerate(kinds(penultimate, EnsureRun))
        ],
        T0,
    )
    (write,) = kinds(result, WriteRecord)
    assert write.record.type == "hpo"
    assert write.record.metrics["trials"] == 2


def search_job(sampler: str, trials: int, parallelism: int) -> JobContext:
    """A one-stage search over train's lr and batch size with `sampler`."""
    params: dict[str, Any] = {
        "target": "train",
        "sampler": sampler,
        "trials": trials,
        "parallelism": parallelism,
        "base": {"epochs": 1},
        "space": {
            "lr": {"low": 1e-4, "high": 1e-1, "log": True},
            "batchSize": {"low": 16, "high": 128, "step": 16},
        },
    }
    spec = OptimizationJobSpec.model_validate(
        {
            "model": {"uri": "file:///m/model.pt2"},
            "dataset": {"uri": "sklearn:digits"},
            "objective": {"metric": "accuracy", "maxDrop": 0.5},
            "seed": 11,
            "stages": [{"name": "tune", "type": "hpo", "params": params}],
        }
    )
    return JobContext(name="h", spec=spec, artifacts_uri="file:///art", generation=1)


def drive(job: JobContext, order: str) -> OptimizationJobStatus:
    """Run the search to the end, finishing the running trials in `order`: all at once, or one
    at a time, the lowest or the highest trial number first."""

    def metric(params: dict[str, Any]) -> float:
        return 0.9 - abs(float(params["lr"]) - 0.01) - int(params["batchSize"]) / 10_000

    result = answer_probes(
        job, step(job, OptimizationJobStatus(), [InputsProbed("sha256:m", "sha256:d")], T0)
    )
    for _ in range(100):
        if result.status.phase in ("Succeeded", "Failed"):
            return result.status
        runs = sorted(kinds(result, EnsureRun), key=lambda e: e.request.trial or 0)
        assert runs, "the search stalled"
        if order == "lowest":
            runs = runs[:1]
        elif order == "highest":
            runs = runs[-1:]
        observations = [finished(e, metric(e.request.params)) for e in runs]
        result = answer_probes(job, step(job, result.status, observations, T0))
    raise AssertionError("the search did not finish")


@pytest.mark.parametrize(
    ("sampler", "trials", "parallelism"), [("random", 4, 2), ("tpe", 8, 3), ("cmaes", 8, 2)]
)
def test_the_same_search_gives_the_same_trials_whatever_order_runs_finish_in(
    sampler: str, trials: int, parallelism: int
) -> None:
    """Parallel trials finish in whatever order they do: the trial points and the winner depend
    on the job and its seed only (they once depended on which runs were drawn together)."""
    job = search_job(sampler, trials, parallelism)
    outcomes = []
    for order in ("all", "lowest", "highest"):
        status = drive(job, order)
        assert status.phase == "Succeeded", status.message
        assert [t.number for t in status.trials] == list(range(trials))
        stage = status.stages[0]
        assert stage.output is not None
        outcomes.append(([t.params for t in status.trials], stage.output.uri))
    assert outcomes[0] == outcomes[1] == outcomes[2]
