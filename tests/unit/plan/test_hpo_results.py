"""What a plan-run hpo stage reports: the same metrics and details as the in-process search
(counts of pruned and failed trials, why the winner won, the Pareto set) and, as for cost, the
energy of every trial, restored ones included."""

from __future__ import annotations

from typing import Any

import pytest

from kompaktor.api.run import RunRecord
from kompaktor.api.spec import OptimizationJobSpec
from kompaktor.api.status import OptimizationJobStatus
from kompaktor.plan import (
    EnsureRun,
    InputsProbed,
    JobContext,
    RunFailed,
    RunSucceeded,
    WriteRecord,
    step,
)
from tests.unit.plan.test_hpo_flow import answer_probes, hpo_job
from tests.unit.plan.test_machine import T0, kinds
from tests.unit.stages.test_hpo_pruning import finish_runs, start


def hpo_record(result: Any) -> RunRecord:
    """The hpo stage's result.json, as the plan writes it."""
    (write,) = [a for a in result.actions if isinstance(a, WriteRecord)]
    record: RunRecord = write.record
    return record


def test_a_resumed_search_counts_its_restored_trials_energy_as_it_counts_their_cost() -> None:
    ctx = hpo_job(4, 2, epochs=3, gpu_price=2.4567)
    result = finish_runs(ctx, start(ctx), lambda request: ([0.9, 0.91, 0.92], False))
    # the controller restarts: the search goes on from the status it saved
    saved = OptimizationJobStatus.model_validate_json(result.status.model_dump_json(by_alias=True))
    assert [t.state for t in saved.trials] == ["Complete", "Complete", "Running", "Running"]
    resumed = answer_probes(ctx, step(ctx, saved, [], T0))
    result = finish_runs(ctx, resumed, lambda request: ([0.9, 0.91, 0.93], False))
    status = result.status
    assert status.phase == "Succeeded", status.message
    trials, stage = status.trials, status.stages[0]
    assert all(t.energy_joules == pytest.approx(123.5) for t in trials)
    assert stage.cost_usd == pytest.approx(sum(t.cost_usd or 0.0 for t in trials))
    assert stage.energy_joules == pytest.approx(4 * 123.5)
    assert status.energy_joules == pytest.approx(4 * 123.5)  # the job's total: no double count


def test_the_plan_run_reports_pruned_and_failed_trials_as_the_in_process_search_does() -> None:
    ctx = hpo_job(4, 2, epochs=3, pruner="median")
    result = start(ctx)
    first = kinds(result, EnsureRun)[0]
    failed = RunFailed(first.request.run_id, "StageFailed", "diverged", retryable=False)
    result = step(ctx, result.status, [failed], T0)

    def outcome(request: Any) -> tuple[list[float], bool]:
        return ([0.2], True) if request.trial == 2 else ([0.9, 0.95, 0.96], False)

    result = finish_runs(ctx, answer_probes(ctx, result), outcome)
    while kinds(result, EnsureRun):
        result = finish_runs(ctx, result, outcome)
    assert result.status.phase == "Succeeded", result.status.message
    assert [t.state for t in result.status.trials] == ["Failed", "Complete", "Pruned", "Complete"]
    record = hpo_record(result)
    counts = {"trials": 2.0, "prunedTrials": 1.0, "failedTrials": 1.0, "bestTrial": 1.0}
    assert {k: record.metrics[k] for k in counts} == counts
    assert {k: result.status.stages[0].metrics[k] for k in counts} == counts


def pareto_job() -> JobContext:
    """Four trials at once, searched on metric and latency, the fastest within maxDrop wins."""
    params = {
        "target": "train",
        "sampler": "random",
        "trials": 4,
        "parallelism": 4,
        "objectives": ["metric", "latency"],
        "select": "fastest-within-drop",
        "space": {"lr": {"low": 1e-4, "high": 1e-1, "log": True}},
    }
    spec = OptimizationJobSpec.model_validate(
        {
            "model": {"uri": "file:///m/model.pt2"},
            "dataset": {"uri": "sklearn:digits"},
            "objective": {"metric": "accuracy", "maxDrop": 0.02},
            "stages": [{"name": "tune", "type": "hpo", "params": params}],
        }
    )
    return JobContext(name="p", spec=spec, artifacts_uri="file:///art", generation=1)


def test_a_multi_objective_search_reports_its_pareto_set_and_why_the_winner_won() -> None:
    ctx = pareto_job()
    result = step(ctx, OptimizationJobStatus(), [InputsProbed("sha256:m", "sha256:d")], T0)
    result = answer_probes(ctx, result)
    requests = [a.request for a in kinds(result, EnsureRun)]
    # by trial number: (valMetric, latencyMs); the input model has 0.955 on validation rows
    table = {0: (0.95, 9.0), 1: (0.94, 4.0), 2: (0.90, 1.0), 3: (0.93, 8.0)}
    by_run = {r.run_id: table[r.trial or 0] for r in requests}

    def measured(request: Any) -> RunRecord:
        metric, latency = by_run[request.run_id]
        return RunRecord.model_validate(
            {
                "type": "train",
                "output": {"uri": f"file:///art/{request.run_id}/model.pt2", "digest": "d"},
                "format": "pt2",
                "metrics": {"metric": metric, "valMetric": metric, "latencyMs": latency,
                            "referenceMetric": 0.955, "referenceValMetric": 0.955},
            }
        )  # fmt: skip

    done = [RunSucceeded(r.run_id, measured(r)) for r in requests]
    result = answer_probes(ctx, step(ctx, result.status, done, T0))
    assert result.status.phase == "Succeeded", result.status.message
    details = hpo_record(result).details
    params = {t.number: t.params for t in result.status.trials}
    assert details["paretoSet"] == [
        {
            "number": n,
            "params": params[n],
            "values": {"metric": table[n][0], "latency": table[n][1]},
        }
        for n in (0, 1, 2)  # 3 is slower and worse than 1
    ]
    assert details["bestTrial"] == 1  # 2 is faster but drops 0.055
    selection = (
        "trial 1 has the lowest latencyMs (4) of the 2 complete trials within maxDrop 0.02 of "
        "the input model (select: fastest-within-drop); it is on the Pareto set of 3 trials "
        "[0, 1, 2]"
    )
    assert details["selection"] == selection
    assert result.status.stages[0].message == selection  # status, and `kompaktor run --json`
