"""The plan as a state machine, driven step by step with no cluster and no processes."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kompaktor.api.run import RunRecord
from kompaktor.api.spec import OptimizationJob, OptimizationJobSpec
from kompaktor.api.status import OptimizationJobStatus, OutputRef
from kompaktor.engine import reconcile
from kompaktor.local import localize
from kompaktor.plan import (
    CacheProbed,
    CancelRun,
    EmitEvent,
    EnsureRun,
    InputsProbed,
    JobContext,
    ModelFile,
    Observation,
    ProbeCache,
    ProbeInputs,
    Requeue,
    RunFailed,
    RunRequest,
    RunStarted,
    RunSucceeded,
    StepResult,
    step,
)

T0 = datetime(2026, 11, 23, 12, 0, 0, tzinfo=UTC)


def spec(**overrides: Any) -> OptimizationJobSpec:
    doc: dict[str, Any] = {
        "model": {"uri": "file:///m/model.pt2"},
        "dataset": {"uri": "sklearn:digits"},
        "objective": {"metric": "accuracy", "maxDrop": 0.02},
        "stages": [
            {"name": "train", "type": "train", "params": {"epochs": 1, "lr": 0.01}, "retries": 1},
            {"name": "bench", "type": "benchmark", "params": {"batchSizes": [1]}},
        ],
    }
    doc.update(overrides)
    return OptimizationJobSpec.model_validate(doc)


def ctx(job_spec: OptimizationJobSpec | None = None, generation: int = 1) -> JobContext:
    return JobContext(
        name="demo",
        spec=job_spec or spec(),
        artifacts_uri="file:///art",
        generation=generation,
        default_pool="cpu",
        pool_prices={"cpu": 3.6},
        retry_base_seconds=10,
    )


def record(stage_type: str, digest: str, metric: float = 0.95, **metrics: float) -> RunRecord:
    return RunRecord(
        type=stage_type,
        output=OutputRef(uri=f"file:///art/{digest}/model.pt2", digest=digest),
        format="pt2",
        metrics={"metric": metric, "referenceMetric": 0.95, **metrics},
        duration_seconds=10.0,
        energy_joules=5.0,
        energy_method="estimate",
    )


def kinds(result: StepResult, kind: type) -> list[Any]:
    return [a for a in result.actions if isinstance(a, kind)]


def started(job: JobContext) -> StepResult:
    """From nothing to the first stage running (inputs probed, cache missed)."""
    first = step(job, OptimizationJobStatus(), [], T0)
    assert kinds(first, ProbeInputs)
    second = step(job, first.status, [InputsProbed("sha256:in", "sha256:data")], T0)
    (probe,) = kinds(second, ProbeCache)
    return step(job, second.status, [CacheProbed(probe.key, None)], T0)


def only_run(result: StepResult) -> EnsureRun:
    (ensure,) = kinds(result, EnsureRun)
    return ensure  # type: ignore[no-any-return]


def reprobed(
    job: JobContext, status: OptimizationJobStatus, model_digest: str = "sha256:in"
) -> StepResult:
    """The steps after a spec edit: the inputs are digested again before anything is keyed."""
    asked = step(job, status, [], T0)
    assert kinds(asked, ProbeInputs) and not kinds(asked, ProbeCache)
    assert asked.status.input_digest is None
    return step(job, asked.status, [InputsProbed(model_digest, "sha256:data")], T0)


class TestHappyPath:
    def test_probes_inputs_then_cache_then_runs(self) -> None:
        result = started(ctx())
        run = only_run(result).request
        assert result.status.phase == "Running"
        assert run.stage == "train" and run.attempt == 1
        assert run.input_uri == "file:///m/model.pt2"
        assert run.output_uri.startswith("file:///art/runs/train-")
        assert result.status.stages[0].phase == "Running"
        assert result.status.stages[1].phase == "Pending"

    def test_a_finished_stage_feeds_the_next_one(self) -> None:
        job = ctx()
        result = started(job)
        run = only_run(result).request
        after = step(job, result.status, [RunSucceeded(run.run_id, record("train", "d1"))], T0)
        (probe,) = kinds(after, ProbeCache)
        hit = step(job, after.status, [CacheProbed(probe.key, None)], T0)
        bench = only_run(hit).request
        assert bench.stage == "bench" and bench.input_uri == "file:///art/d1/model.pt2"
        done = step(
            job,
            hit.status,
            [
                RunSucceeded(
                    bench.run_id,
                    record("benchmark", "d1", speedup=3.5, sizeRatio=0.2, latencyMs=0.1),
                )
            ],
            T0,
        )
        assert done.status.phase == "Succeeded"
        assert done.status.result is not None and done.status.result.speedup == 3.5
        assert done.status.result.size_ratio == 0.2
        assert not kinds(done, EnsureRun)
        ready = next(c for c in done.status.conditions if c.type == "Ready")
        assert ready.status == "True"
        # 10 s at 3.6 USD/h per run, two runs
        assert done.status.cost_usd == pytest.approx(0.02)
        assert done.status.energy_joules == pytest.approx(10.0)

    def test_a_cache_hit_runs_nothing(self) -> None:
        job = ctx()
        first = step(job, OptimizationJobStatus(), [InputsProbed("sha256:in", "sha256:data")], T0)
        (probe,) = kinds(first, ProbeCache)
        hit = step(job, first.status, [CacheProbed(probe.key, record("train", "d1"))], T0)
        assert hit.status.stages[0].cached and hit.status.stages[0].phase == "Succeeded"
        assert not kinds(hit, EnsureRun)
        assert kinds(hit, ProbeCache)[0].key != probe.key

    def test_steps_are_idempotent(self) -> None:
        job = ctx()
        result = started(job)
        again = step(job, result.status, [], T0)
        assert only_run(again) == only_run(result)
        assert again.status.stages == result.status.stages

    def test_keys_change_with_params_input_and_dataset(self) -> None:
        def first_key(job_spec: OptimizationJobSpec, model: str, data: str) -> str:
            result = step(ctx(job_spec), OptimizationJobStatus(), [InputsProbed(model, data)], T0)
            return str(kinds(result, ProbeCache)[0].key)

        base = first_key(spec(), "sha256:a", "sha256:d")
        assert base == first_key(spec(), "sha256:a", "sha256:d")
        changed = spec(stages=[{"name": "train", "type": "train", "params": {"epochs": 2}}])
        assert base != first_key(changed, "sha256:a", "sha256:d")
        assert base != first_key(spec(), "sha256:b", "sha256:d")
        assert base != first_key(spec(), "sha256:a", "sha256:e")


class TestFailures:
    def test_retry_with_backoff_then_fail_with_reason(self) -> None:
        job = ctx()
        result = started(job)
        run = only_run(result).request
        failed = step(job, result.status, [RunFailed(run.run_id, "OOMKilled", "out of memory")], T0)
        assert failed.status.stages[0].phase == "Retrying"
        assert not kinds(failed, EnsureRun)
        (wake,) = kinds(failed, Requeue)
        assert wake.after_seconds == pytest.approx(10)
        later = step(job, failed.status, [], T0 + timedelta(seconds=11))
        retry = only_run(later).request
        assert retry.attempt == 2 and retry.run_id != run.run_id
        final = step(job, later.status, [RunFailed(retry.run_id, "OOMKilled", "again")], T0)
        assert final.status.phase == "Failed"
        assert "OOMKilled" in (final.status.message or "")
        degraded = next(c for c in final.status.conditions if c.type == "Degraded")
        assert degraded.status == "True" and degraded.reason == "OOMKilled"

    def test_not_retryable_fails_at_once(self) -> None:
        job = ctx()
        result = started(job)
        run = only_run(result).request
        bad = RunFailed(run.run_id, "InvalidInput", "corrupt model", retryable=False)
        final = step(job, result.status, [bad], T0)
        assert final.status.phase == "Failed"
        assert final.status.stages[0].attempts == 1

    def test_stale_observations_are_ignored(self) -> None:
        job = ctx()
        result = started(job)
        stale = RunSucceeded("train-0000000000-a7", record("train", "x"))
        again = step(job, result.status, [stale], T0)
        assert again.status.stages[0].phase == "Running"

    def test_gate_fails_the_job_and_keeps_the_output(self) -> None:
        job = ctx()
        result = started(job)
        run = only_run(result).request
        worse = record("train", "d1", metric=0.90)
        final = step(job, result.status, [RunSucceeded(run.run_id, worse)], T0)
        assert final.status.phase == "Failed"
        assert "GateFailed" in (final.status.message or "")
        assert final.status.stages[0].output is not None
        assert final.status.stages[0].output.digest == "d1"
        # before the last stage, the message names the way out
        assert (final.status.message or "").endswith(
            "(maxDrop 0.02); if a later stage wins it back (distill after prune), set gate: "
            "false here"
        )

    def test_an_ungated_stage_over_the_bound_hands_its_model_on(self) -> None:
        """prune dropped 0.0056 with maxDrop 0.005, and distill after it would have won it
        back, but the job failed at prune."""
        stages = [
            {"name": "prune", "type": "train", "params": {"epochs": 1}, "gate": False},
            {"name": "recover", "type": "train", "params": {"epochs": 2}},
        ]
        job = ctx(spec(stages=stages))
        result = started(job)
        first = only_run(result).request
        worse = record("train", "d1", metric=0.90)
        after = step(job, result.status, [RunSucceeded(first.run_id, worse)], T0)
        pruned = after.status.stages[0]
        assert after.status.phase == "Running" and pruned.phase == "Succeeded"
        assert pruned.message == (
            "not gated: accuracy 0.9000 is 0.0500 below the input model's 0.9500 (maxDrop 0.02)"
        )
        (probe,) = kinds(after, ProbeCache)
        missed = step(job, after.status, [CacheProbed(probe.key, None)], T0)
        second = only_run(missed).request
        assert second.input_uri == worse.output.uri
        won_back = record("train", "d2", metric=0.95)
        done = step(job, missed.status, [RunSucceeded(second.run_id, won_back)], T0)
        assert done.status.phase == "Succeeded"
        assert done.status.result is not None and done.status.result.metric == 0.95

    def test_the_last_stage_is_always_gated(self) -> None:
        stages = [{"name": "train", "type": "train", "gate": False}]
        result = step(ctx(spec(stages=stages)), OptimizationJobStatus(), [], T0)
        assert result.status.phase == "Failed"
        assert (
            "stage 'train' (spec.stages[0], train): gate: the last stage's output is the job's "
            "result and must keep objective.maxDrop; remove gate: false"
        ) in (result.status.message or "")

    def test_mse_gate_is_upwards(self) -> None:
        regression = {"uri": "file:///d/data.npz", "task": "regression"}
        job = ctx(spec(dataset=regression, objective={"metric": "mse", "maxDrop": 0.1}))
        result = started(job)
        run = only_run(result).request
        fine = record("train", "d1", metric=0.5)
        fine = fine.model_copy(update={"metrics": {"metric": 0.5, "referenceMetric": 0.45}})
        ok = step(job, result.status, [RunSucceeded(run.run_id, fine)], T0)
        assert ok.status.stages[0].phase == "Succeeded"

    def test_invalid_params_fail_naming_stage_and_field(self) -> None:
        bad = spec(stages=[{"name": "t", "type": "train", "params": {"lr": -1}}])
        result = step(ctx(bad), OptimizationJobStatus(), [], T0)
        assert result.status.phase == "Failed"
        assert "stage 't' (spec.stages[0], train): params.lr" in (result.status.message or "")


class TestEventsAndConditions:
    """What `kubectl describe oj` shows: a JobFailed event, why a run was stopped, and a
    Degraded condition that names the reason (there was no JobFailed event, a cancelled run
    showed only as a second StageStarted, and Degraded read "Failed" on a budget failure and
    had no message while a stage retried)."""

    def test_a_failed_job_says_so_once_and_names_its_reason(self) -> None:
        job = ctx(spec(budget={"maxDuration": "1m"}))
        result = started(job)
        run = only_run(result).request
        late = step(job, result.status, [], T0 + timedelta(minutes=2))
        reasons = [e.reason for e in kinds(late, EmitEvent)]
        assert reasons.count("JobFailed") == 1 and "StageCancelled" in reasons
        stopped = next(e for e in kinds(late, EmitEvent) if e.reason == "StageCancelled")
        assert run.run_id in stopped.message and "BudgetExceeded" in stopped.message
        degraded = next(c for c in late.status.conditions if c.type == "Degraded")
        assert degraded.reason == "BudgetExceeded"
        assert kinds(step(job, late.status, [], T0 + timedelta(minutes=3)), EmitEvent) == []

    def test_a_retrying_stage_says_why_in_degraded(self) -> None:
        job = ctx()
        result = started(job)
        run = only_run(result).request
        failed = step(job, result.status, [RunFailed(run.run_id, "OOMKilled", "137")], T0)
        degraded = next(c for c in failed.status.conditions if c.type == "Degraded")
        assert degraded.status == "True" and degraded.reason == "OOMKilled"
        assert degraded.message == "stage train is retrying: OOMKilled: 137"

    def test_an_edit_that_stops_a_run_says_so(self) -> None:
        job = ctx()
        result = started(job)
        run = only_run(result).request
        edited = spec(stages=[
            {"name": "train", "type": "train", "params": {"epochs": 2, "lr": 0.01}},
            {"name": "bench", "type": "benchmark", "params": {"batchSizes": [1]}},
        ])  # fmt: skip
        again = reprobed(ctx(edited, generation=2), result.status)
        assert CancelRun(run.run_id) in again.actions
        stopped = [e for e in kinds(again, EmitEvent) if e.reason == "StageCancelled"]
        assert len(stopped) == 1 and "the spec or its inputs changed" in stopped[0].message


class TestBudgetAndControl:
    def test_duration_budget_cancels_running_work(self) -> None:
        job = ctx(spec(budget={"maxDuration": "1m"}))
        result = started(job)
        run = only_run(result).request
        late = step(job, result.status, [], T0 + timedelta(minutes=2))
        assert late.status.phase == "Failed"
        assert "BudgetExceeded" in (late.status.message or "")
        assert CancelRun(run.run_id) in late.actions

    def test_cost_budget(self) -> None:
        job = ctx(spec(budget={"maxCostUSD": 0.001}))
        result = started(job)
        run = only_run(result).request
        after = step(job, result.status, [RunSucceeded(run.run_id, record("train", "d1"))], T0)
        assert after.status.phase == "Failed"
        assert "maxCostUSD" in (after.status.message or "")

    def test_suspend_stops_runs_and_resume_restarts_them(self) -> None:
        job = ctx()
        result = started(job)
        run = only_run(result).request
        paused_job = ctx(spec(suspend=True), generation=2)
        paused = step(paused_job, result.status, [], T0)
        assert paused.status.phase == "Suspended"
        assert CancelRun(run.run_id) in paused.actions
        resumed = reprobed(ctx(generation=3), paused.status)
        (probe,) = kinds(resumed, ProbeCache)
        running = step(ctx(generation=3), resumed.status, [CacheProbed(probe.key, None)], T0)
        again = only_run(running).request
        # The next attempt, under a run id (Job, process) of its own: the stopped one's is gone.
        assert again.attempt == 2 and again.run_id != run.run_id
        assert running.status.stages[0].interrupted == 1

    def test_suspend_and_resume_keep_the_attempts_a_stage_has_used(self) -> None:
        """Attempts went back to 0 on suspend/resume: suspending gave a stage its retries back."""
        job = ctx()  # train: retries 1
        first = only_run(result := started(job)).request
        failed = step(job, result.status, [RunFailed(first.run_id, "OOMKilled", "137")], T0)
        later = T0 + timedelta(minutes=1)
        second = only_run(retrying := step(job, failed.status, [], later)).request
        assert second.attempt == 2
        paused = step(ctx(spec(suspend=True), generation=2), retrying.status, [], later)
        assert CancelRun(second.run_id) in paused.actions
        assert paused.status.stages[0].attempts == 2
        resumed = reprobed(ctx(generation=3), paused.status)
        (probe,) = kinds(resumed, ProbeCache)
        running = step(ctx(generation=3), resumed.status, [CacheProbed(probe.key, None)], later)
        third = only_run(running).request
        assert third.attempt == 3
        crash = RunFailed(third.run_id, "OOMKilled", "137")
        final = step(ctx(generation=3), running.status, [crash], later)
        assert final.status.stages[0].phase == "Failed"  # its one retry was spent before
        assert final.status.phase == "Failed" and not kinds(final, EnsureRun)

    def test_an_attempt_a_suspension_stopped_spends_no_retry(self) -> None:
        job = ctx()  # train: retries 1
        first = only_run(result := started(job)).request
        paused = step(ctx(spec(suspend=True), generation=2), result.status, [], T0)
        assert CancelRun(first.run_id) in paused.actions
        resumed = reprobed(ctx(generation=3), paused.status)
        (probe,) = kinds(resumed, ProbeCache)
        running = step(ctx(generation=3), resumed.status, [CacheProbed(probe.key, None)], T0)
        second = only_run(running).request
        crash = RunFailed(second.run_id, "OOMKilled", "137")
        failed = step(ctx(generation=3), running.status, [crash], T0)
        assert failed.status.stages[0].phase == "Retrying"
        assert failed.status.stages[0].next_retry_time == "2026-11-23T12:00:10Z"  # 1st backoff

    def test_a_stage_waiting_to_retry_waits_through_a_suspension(self) -> None:
        job = ctx()
        first = only_run(result := started(job)).request
        failed = step(job, result.status, [RunFailed(first.run_id, "OOMKilled", "137")], T0)
        paused = step(ctx(spec(suspend=True), generation=2), failed.status, [], T0)
        assert not kinds(paused, CancelRun)
        assert paused.status.stages[0].phase == "Retrying"
        later = T0 + timedelta(minutes=5)
        asked = step(ctx(generation=3), paused.status, [], later)
        resumed = step(
            ctx(generation=3), asked.status, [InputsProbed("sha256:in", "sha256:data")], later
        )
        assert only_run(resumed).request.attempt == 2

    def test_time_suspended_does_not_count_against_max_duration(self) -> None:
        """A job suspended past its budget failed with BudgetExceeded the moment it resumed."""
        budget = {"maxDuration": "1h"}
        job = ctx(spec(budget=budget))
        result = started(job)
        paused = step(ctx(spec(budget=budget, suspend=True), generation=2), result.status, [], T0)
        assert paused.status.phase == "Suspended"
        later = T0 + timedelta(hours=3)
        still = step(ctx(spec(budget=budget, suspend=True), generation=2), paused.status, [], later)
        assert still.status.phase == "Suspended"
        resumed_job = ctx(spec(budget=budget), generation=3)
        asked = step(resumed_job, still.status, [], later)
        resumed = step(resumed_job, asked.status, [InputsProbed("sha256:in", "sha256:data")], later)
        assert resumed.status.phase == "Running", resumed.status.message
        assert resumed.status.start_time == later.strftime("%Y-%m-%dT%H:%M:%SZ")
        (probe,) = kinds(resumed, ProbeCache)
        running = step(resumed_job, resumed.status, [CacheProbed(probe.key, None)], later)
        over = step(resumed_job, running.status, [], later + timedelta(minutes=61))
        assert over.status.phase == "Failed" and "maxDuration" in (over.status.message or "")

    def test_a_stage_a_suspension_stopped_is_timed_without_it(self) -> None:
        """A stage resumed after a 65 s interrupt of `kompaktor run` read `succeeded in 79s`
        for about 8 s of running: its time spanned the suspension."""
        job = ctx()
        result = started(job)
        train = result.status.stages[0]
        assert train.start_time == T0.strftime("%Y-%m-%dT%H:%M:%SZ")
        later = T0 + timedelta(seconds=65)
        paused = step(suspended(job), result.status, [], T0 + timedelta(seconds=5))
        again = step(ctx(generation=3), paused.status, [], later)
        assert again.status.stages[0].start_time == (later - timedelta(seconds=5)).strftime(
            "%Y-%m-%dT%H:%M:%SZ"
        )

    def test_spec_edit_reruns_from_the_changed_stage_only(self) -> None:
        job = ctx()
        result = started(job)
        run = only_run(result).request
        after = step(job, result.status, [RunSucceeded(run.run_id, record("train", "d1"))], T0)
        edited = spec(
            stages=[
                {
                    "name": "train",
                    "type": "train",
                    "params": {"epochs": 1, "lr": 0.01},
                    "retries": 1,
                },
                {"name": "bench", "type": "benchmark", "params": {"batchSizes": [1, 8]}},
            ]
        )
        again = reprobed(ctx(edited, generation=2), after.status)
        assert again.status.stages[0].phase == "Succeeded"
        assert not again.status.stages[0].cached
        (probe,) = kinds(again, ProbeCache)
        assert probe.output_uri.startswith("file:///art/runs/benchmark-")
        assert again.status.observed_generation == 2

    def test_editing_a_finished_job_runs_again(self) -> None:
        job = ctx(spec(stages=[{"name": "train", "type": "train", "params": {"epochs": 1}}]))
        result = started(job)
        run = only_run(result).request
        done = step(job, result.status, [RunSucceeded(run.run_id, record("train", "d1"))], T0)
        assert done.status.phase == "Succeeded"
        assert step(job, done.status, [], T0).actions == []
        edited = spec(stages=[{"name": "train", "type": "train", "params": {"epochs": 3}}])
        again = reprobed(ctx(edited, generation=2), done.status)
        assert again.status.phase == "Running"
        assert kinds(again, ProbeCache)

    def test_an_edit_long_after_the_job_finished_gets_a_fresh_time_budget(self) -> None:
        """maxDuration counted from the first start: every edit made later than that (two
        hours, with the README's 2h) failed at once with BudgetExceeded, running nothing."""
        budget = {"maxDuration": "1h"}
        one = [{"name": "train", "type": "train", "params": {"epochs": 1}}]
        job = ctx(spec(budget=budget, stages=one))
        result = started(job)
        run = only_run(result).request
        done = step(job, result.status, [RunSucceeded(run.run_id, record("train", "d1"))], T0)
        assert done.status.phase == "Succeeded"
        later = T0 + timedelta(hours=3)
        edited = ctx(spec(budget=budget, stages=one, seed=1), generation=2)
        asked = step(edited, done.status, [], later)
        again = step(edited, asked.status, [InputsProbed("sha256:in", "sha256:data")], later)
        assert again.status.phase == "Running", again.status.message
        assert again.status.start_time == later.strftime("%Y-%m-%dT%H:%M:%SZ")
        assert kinds(again, ProbeCache)

    def test_a_failed_stage_runs_again_after_an_edit(self) -> None:
        """Raising retries after a failure re-ran nothing: the job went straight back to
        Failed. Stages the failure left unreached read Cancelled, not Pending."""
        job = ctx(spec(stages=[
            {"name": "train", "type": "train", "params": {"epochs": 1}},
            {"name": "bench", "type": "benchmark"},
        ]))  # fmt: skip
        result = started(job)
        run = only_run(result).request
        crashed = RunFailed(run.run_id, "StageCrashed", "exit code 1")
        failed = step(job, result.status, [crashed], T0)
        assert failed.status.phase == "Failed"
        assert [s.phase for s in failed.status.stages] == ["Failed", "Cancelled"]
        edited = ctx(spec(stages=[
            {"name": "train", "type": "train", "params": {"epochs": 1}, "retries": 2},
            {"name": "bench", "type": "benchmark"},
        ]), generation=2)  # fmt: skip
        again = reprobed(edited, failed.status)
        assert again.status.phase == "Running"
        (probe,) = kinds(again, ProbeCache)
        rerun = step(edited, again.status, [CacheProbed(probe.key, None)], T0)
        assert only_run(rerun).request.stage == "train"
        assert [s.phase for s in rerun.status.stages] == ["Running", "Pending"]

    def test_a_gate_failure_is_judged_again_after_the_bound_is_edited(self) -> None:
        job = ctx()
        result = started(job)
        run = only_run(result).request
        worse = record("train", "d1", metric=0.90)
        failed = step(job, result.status, [RunSucceeded(run.run_id, worse)], T0)
        assert failed.status.phase == "Failed"
        looser = ctx(spec(objective={"metric": "accuracy", "maxDrop": 0.1}), generation=2)
        again = reprobed(looser, failed.status)
        (probe,) = kinds(again, ProbeCache)
        judged = step(looser, again.status, [CacheProbed(probe.key, worse)], T0)
        assert judged.status.stages[0].phase == "Succeeded" and judged.status.stages[0].cached
        assert not kinds(judged, EnsureRun) or only_run(judged).request.stage == "bench"

    def test_failed_attempts_are_paid_for_and_count_against_the_budget(self) -> None:
        """A failed attempt cost nothing, so maxCostUSD never stopped a crash-looping stage."""
        looping = [{"name": "train", "type": "train", "params": {"epochs": 1}, "retries": 5}]
        job = ctx(spec(stages=looping, budget={"maxCostUSD": 0.15}))  # cpu: 0.001 USD/s
        status = started(job).status
        for attempt in (1, 2):
            now = T0 + timedelta(minutes=attempt)
            running = step(job, status, [], now)
            run = next(e.request for e in kinds(running, EnsureRun) if e.request.attempt == attempt)
            crash = RunFailed(run.run_id, "StageCrashed", "exit code 1", duration_seconds=100.0)
            status = step(job, running.status, [crash], now).status
            assert status.cost_usd == pytest.approx(0.1 * attempt)
        stopped = step(job, status, [], T0 + timedelta(minutes=3))
        assert stopped.status.phase == "Failed"
        assert "maxCostUSD" in (stopped.status.message or "")
        assert not kinds(stopped, EnsureRun)

    def test_a_retried_stage_costs_its_failed_attempts_and_its_run(self) -> None:
        job = ctx()
        result = started(job)
        run = only_run(result).request
        crash = RunFailed(run.run_id, "Evicted", "node drained", duration_seconds=50.0)
        failed = step(job, result.status, [crash], T0)
        later = step(job, failed.status, [], T0 + timedelta(seconds=11))
        retry = only_run(later).request
        done = step(job, later.status, [RunSucceeded(retry.run_id, record("train", "d1"))], T0)
        assert done.status.stages[0].cost_usd == pytest.approx(0.05 + 0.01)

    def test_a_failed_attempt_uses_energy_for_the_time_it_ran(self) -> None:
        """Failed attempts were paid for in cost but counted no energy."""
        job = replace(ctx(), pool_watts={"cpu": 100.0})
        run = only_run(result := started(job)).request
        crash = RunFailed(run.run_id, "Evicted", "node drained", duration_seconds=50.0)
        failed = step(job, result.status, [crash], T0)
        stage = failed.status.stages[0]
        assert stage.energy_joules == pytest.approx(5000.0)  # 100 W for 50 s
        assert stage.energy_method == "estimate"
        assert failed.status.energy_joules == pytest.approx(5000.0)
        later = step(job, failed.status, [], T0 + timedelta(seconds=11))
        retry = only_run(later).request
        measured = record("train", "d1").model_copy(update={"energy_method": "nvml"})
        done = step(job, later.status, [RunSucceeded(retry.run_id, measured)], T0)
        stage = done.status.stages[0]
        assert stage.energy_joules == pytest.approx(5005.0)  # the attempt's and the run's
        assert stage.energy_method == "estimate"  # part of it is estimated
        assert done.status.energy_joules == pytest.approx(5005.0)

    def test_a_failed_hpo_trial_uses_energy_for_the_time_it_ran(self) -> None:
        search = {
            "name": "h",
            "type": "hpo",
            "params": {"target": "train", "sampler": "random", "trials": 1,
                       "space": {"lr": {"low": 1e-4, "high": 1e-2}}},
        }  # fmt: skip
        job = replace(ctx(spec(stages=[search])), pool_watts={"cpu": 100.0})
        result = started(job)
        while probes := kinds(result, ProbeCache):
            result = step(job, result.status, [CacheProbed(p.key, None) for p in probes], T0)
        trial = only_run(result).request
        crash = RunFailed(trial.run_id, "OOMKilled", "137", duration_seconds=50.0)
        failed = step(job, result.status, [crash], T0)
        (record,) = failed.status.trials
        assert record.state == "Failed" and record.energy_joules == pytest.approx(5000.0)
        assert failed.status.energy_joules == pytest.approx(5000.0)

    def test_a_pool_without_watts_estimates_one_core(self) -> None:
        job = ctx()  # no watts configured
        run = only_run(result := started(job)).request
        crash = RunFailed(run.run_id, "Evicted", "node drained", duration_seconds=50.0)
        stage = step(job, result.status, [crash], T0).status.stages[0]
        assert stage.energy_joules == pytest.approx(500.0)  # DEFAULT_WATTS_PER_CORE for 50 s

    def test_runs_an_edit_replaces_stay_paid_for(self) -> None:
        """costUSD summed the stages in status only: an edit that re-keyed a stage dropped
        what its runs had cost, and maxCostUSD could be evaded by editing."""
        job = ctx()
        result = started(job)
        run = only_run(result).request
        done = step(job, result.status, [RunSucceeded(run.run_id, record("train", "d1"))], T0)
        assert done.status.cost_usd == pytest.approx(0.01)
        edited = spec(stages=[
            {"name": "train", "type": "train", "params": {"epochs": 2, "lr": 0.01}},
            {"name": "bench", "type": "benchmark", "params": {"batchSizes": [1]}},
        ])  # fmt: skip
        again = reprobed(ctx(edited, generation=2), done.status)
        assert again.status.stages[0].cost_usd is None  # the new key's record
        assert again.status.replaced_cost_usd == pytest.approx(0.01)
        assert again.status.cost_usd == pytest.approx(0.01)
        assert again.status.energy_joules == pytest.approx(5.0)

    def test_an_edit_keys_the_model_as_it_is_now(self) -> None:
        """A model replaced under the same URI is seen at the next edit (it used to be keyed by
        the digest probed when the job was first seen, for good)."""
        job = ctx()
        result = started(job)
        run = only_run(result).request
        again = reprobed(ctx(generation=2), result.status, model_digest="sha256:replaced")
        assert again.status.input_digest == "sha256:replaced"
        (probe,) = kinds(again, ProbeCache)
        assert probe.key != run.key
        assert CancelRun(run.run_id) in again.actions


TEACHER = "s3://models/teacher.pt2"


def distill_job(
    teacher: dict[str, Any], *, hpo: bool = False, dataset: str = "sklearn:digits"
) -> OptimizationJob:
    """A job file's content: one distill stage (or an hpo stage over distill) and its teacher."""
    stage: dict[str, Any] = {"name": "d", "type": "distill", "params": {"teacher": teacher}}
    if hpo:
        params = {
            "target": "distill",
            "sampler": "random",
            "trials": 2,
            "base": {"teacher": teacher},
            "space": {"lr": {"low": 1e-4, "high": 1e-2}},
        }
        stage = {"name": "h", "type": "hpo", "params": params}
    return OptimizationJob.model_validate(
        {
            "apiVersion": "kompaktor.io/v1alpha1",
            "kind": "OptimizationJob",
            "metadata": {"name": "demo"},
            "spec": {
                "model": {"uri": "model.pt2"},
                "dataset": {"uri": dataset},
                "stages": [stage],
            },
        }
    )


def first_run(job: JobContext, status: OptimizationJobStatus) -> EnsureRun:
    """Past every cache probe (all misses) to the first run: a stage's, or an hpo trial's."""
    result = step(job, status, [], T0)
    while probes := kinds(result, ProbeCache):
        result = step(job, result.status, [CacheProbed(p.key, None) for p in probes], T0)
    return kinds(result, EnsureRun)[0]  # type: ignore[no-any-return]


def pools_job(pools: list[str] | None = None, generation: int = 1, **bench: Any) -> JobContext:
    """train, then a benchmark on several pools (cpu at 3.6 USD/h, arm at 1.8)."""
    stages = [
        {"name": "train", "type": "train", "params": {"epochs": 1}},
        {"name": "bench", "type": "benchmark", "pools": pools or ["cpu", "arm"], **bench},
    ]
    return JobContext(
        name="demo",
        spec=spec(stages=stages),
        artifacts_uri="file:///art",
        generation=generation,
        default_pool="cpu",
        pool_prices={"cpu": 3.6, "arm": 1.8},
        retry_base_seconds=10,
    )


def at_benchmark(job: JobContext) -> StepResult:
    """train run and succeeded: the benchmark's runs are probed in the cache."""
    result = started(job)
    run = only_run(result).request
    return step(job, result.status, [RunSucceeded(run.run_id, record("train", "d1"))], T0)


def bench_record(latency: float) -> RunRecord:
    return record("benchmark", "d1", latencyMs=latency, speedup=2.0 / latency)


class TestBenchmarkOnSeveralPools:
    """DESIGN: a benchmark runs "on each pool named". It ran on the first pool only, and its
    key left the pool out, so moving it to another pool reused the first pool's figures."""

    def test_one_run_per_pool_each_keyed_and_priced_by_its_pool(self) -> None:
        job = pools_job()
        probed = at_benchmark(job)
        probes = kinds(probed, ProbeCache)
        assert len(probes) == 2 and probes[0].key != probes[1].key
        missed = step(job, probed.status, [CacheProbed(p.key, None) for p in probes], T0)
        runs = [ensure.request for ensure in kinds(missed, EnsureRun)]
        assert [r.pool for r in runs] == ["cpu", "arm"]
        assert len({r.run_id for r in runs}) == 2
        bench = missed.status.stages[1]
        assert bench.phase == "Running" and bench.pools is not None
        assert [(p.pool, p.phase) for p in bench.pools] == [("cpu", "Running"), ("arm", "Running")]
        first = step(job, missed.status, [RunSucceeded(runs[1].run_id, bench_record(4.0))], T0)
        assert first.status.phase == "Running"
        assert first.status.stages[1].phase == "Running"
        done = step(job, first.status, [RunSucceeded(runs[0].run_id, bench_record(1.0))], T0)
        assert done.status.phase == "Succeeded"
        bench = done.status.stages[1]
        assert bench.phase == "Succeeded" and bench.pools is not None
        assert {p.pool: p.metrics["latencyMs"] for p in bench.pools} == {"cpu": 1.0, "arm": 4.0}
        assert bench.metrics["latencyMs"] == 1.0  # the first pool named heads the result
        assert done.status.result is not None and done.status.result.latency_ms == 1.0
        # 10 s each: cpu at 3.6 USD/h, arm at 1.8
        assert bench.cost_usd == pytest.approx(0.01 + 0.005)
        assert bench.energy_joules == pytest.approx(10.0)

    def test_a_pool_that_fails_fails_the_stage_by_name_and_cancels_the_other(self) -> None:
        job = pools_job()
        probed = at_benchmark(job)
        probes = kinds(probed, ProbeCache)
        missed = step(job, probed.status, [CacheProbed(p.key, None) for p in probes], T0)
        cpu, arm = (ensure.request for ensure in kinds(missed, EnsureRun))
        bad = RunFailed(arm.run_id, "InvalidInput", "no arm64 wheel", retryable=False)
        failed = step(job, missed.status, [bad], T0)
        assert failed.status.phase == "Failed"
        assert "pool arm: InvalidInput: no arm64 wheel" in (failed.status.message or "")
        assert CancelRun(cpu.run_id) in failed.actions
        assert [p.phase for p in failed.status.stages[1].pools or []] == ["Cancelled", "Failed"]

    def test_retries_are_per_pool(self) -> None:
        job = pools_job(retries=1)
        probed = at_benchmark(job)
        probes = kinds(probed, ProbeCache)
        missed = step(job, probed.status, [CacheProbed(p.key, None) for p in probes], T0)
        _, arm = (ensure.request for ensure in kinds(missed, EnsureRun))
        flaky = step(job, missed.status, [RunFailed(arm.run_id, "Evicted", "node drained")], T0)
        assert flaky.status.stages[1].phase == "Running"  # cpu still runs
        later = step(job, flaky.status, [], T0 + timedelta(seconds=11))
        (retry,) = (e.request for e in kinds(later, EnsureRun) if e.request.attempt == 2)
        assert retry.pool == "arm"

    def test_a_pool_kept_after_an_edit_is_reused_and_a_new_pool_runs(self) -> None:
        job = pools_job(["cpu", "arm"])
        probed = at_benchmark(job)
        probes = {p.key for p in kinds(probed, ProbeCache)}
        moved = pools_job(["arm", "gpu"], generation=2)
        again = reprobed(moved, probed.status)
        # The train stage is done; arm keeps its key, gpu gets a key of its own.
        keys = {p.key for p in kinds(again, ProbeCache)}
        assert len(keys) == 2 and len(keys & probes) == 1

    def test_one_pool_named_by_pool_or_pools_is_the_same_run(self) -> None:
        plural = pools_job(["arm"])
        singular = JobContext(
            name="demo",
            spec=spec(stages=[
                {"name": "train", "type": "train", "params": {"epochs": 1}},
                {"name": "bench", "type": "benchmark", "pool": "arm"},
            ]),
            artifacts_uri="file:///art",
            default_pool="cpu",
        )  # fmt: skip
        (a,) = kinds(at_benchmark(plural), ProbeCache)
        (b,) = kinds(at_benchmark(singular), ProbeCache)
        assert a.key == b.key
        (c,) = kinds(at_benchmark(pools_job(["cpu"])), ProbeCache)
        assert c.key != a.key

    def test_the_local_runner_benchmarks_once_on_this_machine(self, tmp_path: Path) -> None:
        job = OptimizationJob.model_validate({
            "apiVersion": "kompaktor.io/v1alpha1",
            "kind": "OptimizationJob",
            "metadata": {"name": "demo"},
            "spec": pools_job().spec.model_dump(by_alias=True, exclude_none=True),
        })  # fmt: skip
        local = localize(job, tmp_path, None)
        assert [s.pool_names for s in local.spec.stages] == [[], []]
        (probe,) = kinds(at_benchmark(local), ProbeCache)
        assert probe.output_uri.split("/runs/")[1].startswith("benchmark-")


class TestModelFilesInParams:
    """A model a stage reads besides its input (a distill teacher) is keyed by its content."""

    @pytest.mark.parametrize(
        ("hpo", "where"),
        [(False, "stage 'd' (spec.stages[0], distill): params.teacher.uri"),
         (True, "stage 'h' (spec.stages[0], hpo): params.base.teacher.uri")],
        ids=["distill", "hpo-base"],
    )  # fmt: skip
    def test_the_key_follows_the_teacher_files_digest(self, hpo: bool, where: str) -> None:
        """What the operator does: the input probe digests the teacher, and a file replaced
        under the same URI is a cache miss (it used to be keyed by its URI alone)."""
        job = ctx(distill_job({"uri": TEACHER}, hpo=hpo).spec)
        (probe,) = kinds(step(job, OptimizationJobStatus(), [], T0), ProbeInputs)
        assert probe.model_files == (ModelFile(where, TEACHER),)

        def probed(teacher_digest: str) -> StepResult:
            found = InputsProbed("sha256:in", "sha256:data", {TEACHER: teacher_digest})
            return step(job, OptimizationJobStatus(), [found], T0)

        first = probed("sha256:t1")
        (key,) = [p.key for p in kinds(first, ProbeCache)]
        assert [p.key for p in kinds(probed("sha256:t1"), ProbeCache)] == [key]
        assert [p.key for p in kinds(probed("sha256:t2"), ProbeCache)] != [key]
        run = first_run(job, first.status).request
        assert run.params["teacher"] == {"uri": TEACHER, "digest": "sha256:t1"}
        assert first.status.model_file_digests == {TEACHER: "sha256:t1"}
        assert not kinds(step(job, first.status, [], T0), ProbeInputs)  # a restart keeps them

    def test_a_relative_teacher_is_relative_to_the_job_file(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """What `kompaktor run` does: the same probe, with the teacher beside the job file."""
        (tmp_path / "jobs").mkdir()
        for name in ("teacher.pt2", "model.pt2", "data.npz"):
            (tmp_path / name).write_bytes(name.encode())
        monkeypatch.chdir(tmp_path / "jobs")  # the job's folder is tmp_path, not the cwd
        job = localize(distill_job({"uri": "teacher.pt2"}, dataset="data.npz"), tmp_path, None)
        status = reconcile(job, OptimizationJobStatus(), [], T0).status
        assert first_run(job, status).request.params["teacher"] == {
            "uri": (tmp_path / "teacher.pt2").as_uri(),
            "digest": "sha256:" + hashlib.sha256(b"teacher.pt2").hexdigest(),
        }

    def test_a_missing_teacher_fails_the_job_naming_stage_and_field(self, tmp_path: Path) -> None:
        (tmp_path / "model.pt2").write_bytes(b"model")
        (tmp_path / "data.npz").write_bytes(b"data")
        missing = (tmp_path / "missing.pt2").as_uri()
        job = distill_job({"uri": missing}, hpo=True, dataset=(tmp_path / "data.npz").as_uri())
        job_spec = job.spec.model_copy(
            update={"model": job.spec.model.model_copy(update={"uri": str(tmp_path / "model.pt2")})}
        )
        result = reconcile(ctx(job_spec), OptimizationJobStatus(), [], T0)
        assert result.status.phase == "Failed"
        assert (result.status.message or "").startswith(
            f"ModelUnreadable: stage 'h' (spec.stages[0], hpo): params.base.teacher.uri {missing}: "
        )
        assert not kinds(result, EnsureRun)

    def test_a_teacher_from_an_earlier_stage_reaches_hpo_trials(self) -> None:
        stages = [
            {"name": "t", "type": "train", "params": {"epochs": 1}},
            {
                "name": "h",
                "type": "hpo",
                "params": {
                    "target": "distill",
                    "sampler": "random",
                    "trials": 1,
                    "base": {"teacher": {"fromStage": "t"}},
                    "space": {"lr": {"low": 1e-4, "high": 1e-2}},
                },
            },
        ]

        def trial_run(teacher_digest: str) -> EnsureRun:
            job = ctx(spec(stages=stages))
            result = started(job)
            train = only_run(result).request
            done = record("train", teacher_digest)
            result = step(job, result.status, [RunSucceeded(train.run_id, done)], T0)
            while probes := kinds(result, ProbeCache):
                result = step(job, result.status, [CacheProbed(p.key, None) for p in probes], T0)
            return only_run(result)

        trial = trial_run("sha256:t1").request
        assert trial.trial == 0
        assert trial.params["teacher"]["uri"] == "file:///art/sha256:t1/model.pt2"
        assert trial.params["teacher"]["digest"] == "sha256:t1"
        assert trial_run("sha256:t2").request.key != trial.key


outcomes = st.lists(st.sampled_from(["ok", "fail", "fatal", "tick", "stale"]), max_size=12)


@settings(max_examples=60, deadline=None)
@given(outcomes)
def test_attempts_never_exceed_retries_and_terminal_is_final(script: list[str]) -> None:
    job = ctx()
    result = started(job)
    now = T0
    seen_terminal = False
    for move in script:
        running = kinds(result, EnsureRun)
        obs: list[Observation] = []
        if running and move in ("ok", "fail", "fatal"):
            rid = running[0].request.run_id
            digest = f"d{len(result.status.stages)}"
            obs = [
                {
                    "ok": RunSucceeded(rid, record(running[0].request.stage_type, digest)),
                    "fail": RunFailed(rid, "Boom", "x"),
                    "fatal": RunFailed(rid, "Boom", "x", retryable=False),
                }[move]
            ]
        elif move == "stale":
            obs = [RunFailed("train-ffffffffff-a1", "Boom", "stale")]
        now += timedelta(seconds=30)
        result = step(job, result.status, obs, now)
        for probe in kinds(result, ProbeCache):
            result = step(job, result.status, [CacheProbed(probe.key, None)], now)
        for stage, stage_spec in zip(result.status.stages, job.spec.stages, strict=False):
            assert stage.attempts <= stage_spec.retries + 1
        assert len(kinds(result, EnsureRun)) <= 1
        if seen_terminal:
            assert result.status.phase in ("Succeeded", "Failed")
            assert not kinds(result, EnsureRun)
        seen_terminal = result.status.phase in ("Succeeded", "Failed")


class TestCacheProbe:
    """A result.json is reused only while the model it describes is there, unchanged (a run
    reported Succeeded and cached with an output URI that no longer existed)."""

    @pytest.fixture
    def finished(self, tmp_path: Path) -> tuple[Path, ProbeCache]:
        from kompaktor.artifacts import digest_bytes

        run = tmp_path / "runs" / "train-abc"
        run.mkdir(parents=True)
        (run / "model.pt2").write_bytes(b"model")
        ref = OutputRef(uri=(run / "model.pt2").as_uri(), digest=digest_bytes(b"model"))
        record = RunRecord(type="train", output=ref, format="pt2")
        (run / "result.json").write_text(record.model_dump_json(by_alias=True))
        return run, ProbeCache("abc", run.as_uri())

    def test_an_intact_run_is_reused(self, finished: tuple[Path, ProbeCache]) -> None:
        from kompaktor.engine import probe_cache

        _, probe = finished
        found = probe_cache(probe)
        assert isinstance(found, CacheProbed) and found.record is not None

    @pytest.mark.parametrize("damage", ["model gone", "model changed", "record unreadable"])
    def test_a_damaged_run_is_a_miss_and_its_record_goes(
        self, finished: tuple[Path, ProbeCache], damage: str
    ) -> None:
        from kompaktor.engine import probe_cache

        run, probe = finished
        if damage == "model gone":
            (run / "model.pt2").unlink()
        elif damage == "model changed":
            (run / "model.pt2").write_bytes(b"other")
        else:
            (run / "result.json").write_text('{"type": "train", "trunc')
        found = probe_cache(probe)
        assert isinstance(found, CacheProbed) and found.record is None
        assert not (run / "result.json").exists()  # the run is made again, and can publish


def test_runs_carry_the_digests_they_were_planned_with() -> None:
    """So the stage refuses an input replaced or corrupted since (it used it as is)."""
    job = ctx()
    result = started(job)
    first = only_run(result).request
    assert first.input_digest == first.reference_digest == "sha256:in"
    command = first.command()
    at = command.index("--input-digest")
    digests = ["--input-digest", "sha256:in", "--reference-digest", "sha256:in"]
    assert command[at : at + 4] == digests
    done = step(job, result.status, [RunSucceeded(first.run_id, record("train", "d1"))], T0)
    (probe,) = kinds(done, ProbeCache)
    bench = only_run(step(job, done.status, [CacheProbed(probe.key, None)], T0)).request
    assert (bench.input_digest, bench.reference_digest) == ("d1", "sha256:in")


SEARCH = {
    "name": "h",
    "type": "hpo",
    "params": {"target": "train", "sampler": "random", "trials": 1,
               "space": {"lr": {"low": 1e-4, "high": 1e-2}}},
}  # fmt: skip
LATER = T0 + timedelta(seconds=100)


def trial_running(job: JobContext) -> StepResult:
    """From nothing to the search's one trial running."""
    result = started(job)
    while probes := kinds(result, ProbeCache):
        result = step(job, result.status, [CacheProbed(p.key, None) for p in probes], T0)
    return result


def suspended(job: JobContext, suspend: bool = True, generation: int = 2) -> JobContext:
    return replace(
        job, spec=job.spec.model_copy(update={"suspend": suspend}), generation=generation
    )


class TestStoppedAttemptsArePaidFor:
    """An attempt the plan stops ran since it was placed: cpu costs 0.001 USD/s here, 100 W."""

    def test_the_attempt_a_suspension_stops_counts_against_max_cost(self) -> None:
        """Suspending paid nothing for the attempt it cut short, so suspend/resume cycles hid
        spending from maxCostUSD."""
        job = replace(ctx(spec(budget={"maxCostUSD": 0.05})), pool_watts={"cpu": 100.0})
        run = only_run(result := started(job)).request
        placed = step(job, result.status, [RunStarted(run.run_id, "node-1", "cpu")], T0)
        paused = step(suspended(job), placed.status, [], LATER)
        stage = paused.status.stages[0]
        assert (stage.phase, stage.interrupted) == ("Pending", 1)
        assert stage.cost_usd == pytest.approx(0.1) and paused.status.cost_usd == pytest.approx(0.1)
        assert stage.energy_joules == pytest.approx(10_000.0) and stage.energy_method == "estimate"
        still = step(suspended(job), paused.status, [], LATER + timedelta(hours=1))
        assert still.status.cost_usd == pytest.approx(0.1)  # paid once
        resumed = step(suspended(job, False, 3), still.status, [], LATER + timedelta(hours=1))
        assert resumed.status.phase == "Failed" and "maxCostUSD" in (resumed.status.message or "")

    def test_an_attempt_never_placed_costs_nothing(self) -> None:
        run = only_run(result := started(job := ctx())).request
        paused = step(suspended(job), result.status, [], LATER)
        assert CancelRun(run.run_id) in paused.actions
        assert paused.status.stages[0].cost_usd is None and not paused.status.cost_usd

    def test_trials_a_suspension_stops_stay_paid_for_and_run_again(self) -> None:
        job = replace(ctx(spec(stages=[SEARCH])), pool_watts={"cpu": 100.0})
        trial = only_run(result := trial_running(job)).request
        seen = RunStarted(trial.run_id, "node-1", "cpu", job_uid="u1")
        placed = step(job, result.status, [seen], T0)
        paused = step(suspended(job), placed.status, [], LATER)
        assert CancelRun(trial.run_id) in paused.actions
        (kept,) = paused.status.trials
        assert (kept.number, kept.state, kept.cost_usd, kept.job_uid) == (0, "Pending", None, None)
        assert paused.status.replaced_cost_usd == pytest.approx(0.1)
        assert paused.status.replaced_energy_joules == pytest.approx(10_000.0)
        assert paused.status.cost_usd == pytest.approx(0.1)
        again = only_run(settled(suspended(job, False, 3), paused.status, [], LATER)).request
        assert (again.trial, again.params) == (0, trial.params)
        # a Job of its own: the stopped attempt's may still be going away
        assert again.run_id == trial.run_id.replace("-a1", "-a2")

    def test_a_resumed_search_runs_the_trials_it_stopped_under_their_numbers(self) -> None:
        """A stopped trial was dropped: the next proposal took its number, twice over when a
        later trial had finished (two trials numbered 1), and it never ran."""
        two = {**SEARCH, "params": {**SEARCH["params"], "trials": 3, "parallelism": 2}}
        job = ctx(spec(stages=[two]))
        result = trial_running(job)
        first, second = (e.request for e in kinds(result, EnsureRun))
        done = step(job, result.status, [RunSucceeded(second.run_id, record("train", "d1"))], T0)
        paused = step(suspended(job), done.status, [], LATER)
        resumed = settled(suspended(job, False, 3), paused.status, [], LATER)
        numbers = [(t.number, t.state) for t in resumed.status.trials]
        assert numbers == [(0, "Running"), (1, "Complete"), (2, "Running")]
        runs = {e.request.trial: e.request.params for e in kinds(resumed, EnsureRun)}
        assert runs[0] == first.params

    def test_the_job_failing_pays_for_the_attempt_it_stops(self) -> None:
        job = ctx(spec(budget={"maxDuration": "1m"}))
        run = only_run(result := started(job)).request
        placed = step(job, result.status, [RunStarted(run.run_id, "node-1")], T0)
        late = step(job, placed.status, [], T0 + timedelta(minutes=2))
        assert late.status.phase == "Failed" and late.status.stages[0].phase == "Cancelled"
        assert late.status.stages[0].cost_usd == pytest.approx(0.12)
        assert late.status.cost_usd == pytest.approx(0.12)

    def test_an_edit_that_stops_a_run_keeps_its_time_paid_for(self) -> None:
        job = ctx()
        run = only_run(result := started(job)).request
        placed = step(job, result.status, [RunStarted(run.run_id, "node-1")], T0)
        edited = spec(stages=[{"name": "train", "type": "train", "params": {"epochs": 2}}])
        asked = step(ctx(edited, generation=2), placed.status, [], LATER)
        again = step(
            ctx(edited, 2), asked.status, [InputsProbed("sha256:in", "sha256:data")], LATER
        )
        assert CancelRun(run.run_id) in again.actions
        assert again.status.replaced_cost_usd == pytest.approx(0.1)
        assert again.status.cost_usd == pytest.approx(0.1)


class TestJobsSeen:
    """The plan keeps the uid of the Job a pass saw for the attempt in flight: with it, a
    missing Job was deleted; without, it may not be created yet."""

    def test_a_run_keeps_its_jobs_uid_and_a_retry_starts_without_it(self) -> None:
        """A retry that kept the failed attempt's uid would be called lost before its own Job
        was created."""
        job = ctx()
        run = only_run(result := started(job)).request
        seen = step(job, result.status, [RunStarted(run.run_id, job_uid="u1")], T0)
        stage = seen.status.stages[0]
        assert (stage.job_uid, stage.node, stage.attempt_start_time) == ("u1", None, None)
        on_node = RunStarted(run.run_id, "node-1", "cpu", job_uid="u1")
        placed = step(job, seen.status, [on_node], T0 + timedelta(seconds=5))
        again = step(job, placed.status, [on_node], LATER)  # placed once
        stage = again.status.stages[0]
        assert (stage.node, stage.attempt_start_time) == ("node-1", "2026-11-23T12:00:05Z")
        failed = step(job, again.status, [RunFailed(run.run_id, "Evicted", "drained")], LATER)
        retry = step(job, failed.status, [], LATER + timedelta(seconds=11))
        stage = retry.status.stages[0]
        assert stage.attempts == 2 and only_run(retry).request.attempt == 2
        assert (stage.job_uid, stage.node, stage.attempt_start_time) == (None, None, None)

    def test_a_trial_keeps_its_job_and_placement_only_while_it_runs(self) -> None:
        job = ctx(spec(stages=[SEARCH]))
        trial = only_run(result := trial_running(job)).request
        seen = RunStarted(trial.run_id, "node-1", "cpu", job_uid="u1")
        placed = step(job, result.status, [seen], T0)
        (running,) = placed.status.trials
        assert (running.job_uid, running.attempt_start_time) == ("u1", "2026-11-23T12:00:00Z")
        done = step(job, placed.status, [RunSucceeded(trial.run_id, record("train", "d1"))], T0)
        (finished,) = done.status.trials
        assert finished.state == "Complete"
        assert (finished.job_uid, finished.attempt_start_time) == (None, None)

    def test_a_lost_trial_is_a_failed_trial_paid_for_the_time_it_ran(self) -> None:
        job = replace(ctx(spec(stages=[SEARCH])), pool_watts={"cpu": 100.0})
        trial = only_run(result := trial_running(job)).request
        message = "Job x of trial 0 of stage h was deleted before its run ended"
        lost = RunFailed(trial.run_id, "StageJobLost", message, duration_seconds=100.0)
        failed = step(job, result.status, [lost], T0)
        (record_,) = failed.status.trials
        assert (record_.state, record_.message) == ("Failed", f"StageJobLost: {message}")
        assert record_.cost_usd == pytest.approx(0.1)
        assert record_.energy_joules == pytest.approx(10_000.0)


class TestSpendingStaysCounted:
    """costUSD and energyJoules are what the job spent: no edit, pool removal or rerun takes
    any of it away (cpu 3.6 USD/h, arm 1.8, gpu unpriced; no watts set: 10 W)."""

    def test_a_pool_an_edit_drops_stays_paid_for(self) -> None:
        """Its run left status.stages[].pools[] and its cost and energy left the totals; a
        running one was stopped unpaid."""
        job = pools_job(["cpu", "arm", "gpu"])
        missed = settled(job, at_benchmark(job).status, [], T0)
        cpu, arm, gpu = (ensure.request for ensure in kinds(missed, EnsureRun))
        seen = [RunStarted(r.run_id, "node-1", r.pool) for r in (cpu, arm, gpu)]
        placed = step(job, missed.status, seen, T0)
        ran = step(job, placed.status, [RunSucceeded(arm.run_id, bench_record(4.0))], T0)
        assert ran.status.cost_usd == pytest.approx(0.015)  # train 10 s on cpu, arm 10 s
        moved = pools_job(["gpu", "edge"], generation=2)
        asked = step(moved, ran.status, [], LATER)
        again = step(moved, asked.status, [InputsProbed("sha256:in", "sha256:data")], LATER)
        assert CancelRun(cpu.run_id) in again.actions
        assert [p.pool for p in again.status.stages[1].pools or []] == ["gpu", "edge"]
        # arm's run (0.005 USD, 5 J) and cpu's 100 s until the edit (0.1 USD, 1000 J)
        assert again.status.replaced_cost_usd == pytest.approx(0.105)
        assert again.status.replaced_energy_joules == pytest.approx(1005.0)
        assert again.status.cost_usd == pytest.approx(0.115)
        assert again.status.energy_joules == pytest.approx(1010.0)

    def test_a_stage_an_edit_removes_from_the_end_goes_paid_for(self) -> None:
        """Its record stayed in status and the job waited for it forever, Running."""
        job = pools_job(["cpu"])
        missed = settled(job, at_benchmark(job).status, [], T0)
        bench = only_run(missed).request
        placed = step(job, missed.status, [RunStarted(bench.run_id, "node-1", "cpu")], T0)
        shorter = replace(job, spec=spec(stages=job.spec.stages[:1]), generation=2)
        asked = step(shorter, placed.status, [], LATER)
        again = step(shorter, asked.status, [InputsProbed("sha256:in", "sha256:data")], LATER)
        assert again.status.phase == "Succeeded"
        assert [s.name for s in again.status.stages] == ["train"]
        assert CancelRun(bench.run_id) in again.actions
        assert again.status.cost_usd == pytest.approx(0.01 + 0.1)

    def test_an_edit_of_a_failed_job_keeps_its_spending_and_a_fresh_cost_budget(self) -> None:
        """The rerun dropped the failed stage's attempts and the replaced runs from costUSD;
        maxCostUSD still counts from the rerun."""
        budget = {"maxCostUSD": 0.15}
        job = ctx(spec(budget=budget))
        run = only_run(result := started(job)).request
        crash = RunFailed(run.run_id, "Boom", "x", retryable=False, duration_seconds=100.0)
        failed = step(job, result.status, [crash], T0)
        assert failed.status.phase == "Failed" and failed.status.cost_usd == pytest.approx(0.1)
        edited = ctx(spec(budget=budget, seed=1), generation=2)
        again = reprobed(edited, failed.status)
        assert again.status.phase == "Running"
        assert again.status.cost_usd == pytest.approx(0.1)
        assert again.status.energy_joules == pytest.approx(1000.0)
        assert again.status.cost_before_rerun_usd == pytest.approx(0.1)
        (probe,) = kinds(again, ProbeCache)
        rerun = step(edited, again.status, [CacheProbed(probe.key, None)], T0)
        retry = only_run(rerun).request
        crash = RunFailed(retry.run_id, "Boom", "x", duration_seconds=100.0)
        costly = step(edited, rerun.status, [crash], T0)  # 0.2 in all, 0.1 since the rerun
        assert costly.status.cost_usd == pytest.approx(0.2)
        assert costly.status.phase == "Running", costly.status.message
        crash = RunFailed(retry.run_id.replace("-a1", "-a2"), "Boom", "x", duration_seconds=60)
        later = step(edited, costly.status, [], T0 + timedelta(seconds=11))
        over = step(edited, later.status, [crash], T0 + timedelta(seconds=11))
        assert over.status.phase == "Failed"
        assert "cost 0.16 USD since the edit that ran it again is over maxCostUSD 0.15" in (
            over.status.message or ""
        )


@dataclass(frozen=True)
class Scripted:
    """The spec a scripted sequence has reached: each change is a new generation."""

    epochs: int = 1
    pools: tuple[str, ...] = ("cpu", "arm")
    bench: bool = True
    suspend: bool = False
    generation: int = 1

    def job(self) -> JobContext:
        stages: list[dict[str, Any]] = [
            {"name": "train", "type": "train", "params": {"epochs": self.epochs}, "retries": 1}
        ]
        if self.bench:
            stages.append({"name": "bench", "type": "benchmark", "pools": list(self.pools)})
        return JobContext(
            name="demo",
            spec=spec(stages=stages, suspend=self.suspend),
            artifacts_uri="file:///art",
            generation=self.generation,
            default_pool="cpu",
            pool_prices={"cpu": 3.6, "arm": 1.8, "gpu": 7.2},
            pool_watts={"cpu": 100.0, "gpu": 300.0},
            retry_base_seconds=10,
        )

    def edited(self, **changes: Any) -> Scripted:
        return replace(self, generation=self.generation + 1, **changes)

    def moved(self, move: str) -> Scripted:
        """The spec after `move`, or this one when the move edits nothing."""
        others = [p for p in ("cpu", "arm", "gpu") if p not in self.pools]
        edits: dict[str, dict[str, Any]] = {
            "suspend": {"suspend": True},
            "resume": {"suspend": False},
            "edit": {"epochs": self.epochs + 1},
            "drop-pool": {"pools": self.pools[:-1]} if len(self.pools) > 1 else {},
            "add-pool": {"pools": (*self.pools, others[0])} if others else {},
            "drop-stage": {"bench": not self.bench},
        }
        return self.edited(**edits[move]) if edits.get(move) else self


def settled(
    job: JobContext, status: OptimizationJobStatus, obs: list[Observation], now: datetime
) -> StepResult:
    """A step, then its probes answered (the inputs as ever, every cache a miss)."""
    result = step(job, status, obs, now)
    while probes := kinds(result, ProbeInputs) + kinds(result, ProbeCache):
        answers: list[Observation] = [
            InputsProbed("sha256:in", "sha256:data")
            if isinstance(p, ProbeInputs)
            else CacheProbed(p.key, None)
            for p in probes
        ]
        result = step(job, result.status, answers, now)
    return result


def observed(move: str, runs: list[RunRequest]) -> list[Observation]:
    """What the executor reports for `move` about the runs in flight."""
    if not runs:
        return []
    first = runs[0]
    outcomes: dict[str, list[Observation]] = {
        "place": [RunStarted(r.run_id, "node-1", r.pool) for r in runs],
        "ok": [RunSucceeded(first.run_id, record(first.stage_type, f"d-{first.run_id}"))],
        "fail": [RunFailed(first.run_id, "Boom", "x", duration_seconds=20.0)],
        "fatal": [RunFailed(first.run_id, "Boom", "x", retryable=False, duration_seconds=20.0)],
    }
    return outcomes.get(move, [])


MOVES = ["place", "ok", "fail", "fatal", "tick", "suspend", "resume", "edit", "drop-pool",
         "add-pool", "drop-stage"]  # fmt: skip


@settings(max_examples=150, deadline=None)
@given(st.lists(st.sampled_from(MOVES), max_size=16))
def test_cost_and_energy_never_go_down(script: list[str]) -> None:
    """Whatever runs, fails, retries, is suspended, resumed or edited (a pool or a stage
    dropped too), what the job spent stays in costUSD and energyJoules."""
    spec_now, now = Scripted(), T0
    result = settled(spec_now.job(), OptimizationJobStatus(), [], now)
    for move in script:
        before = result.status
        runs = [e.request for e in kinds(result, EnsureRun)]
        spec_now, now = spec_now.moved(move), now + timedelta(seconds=7)
        result = settled(spec_now.job(), before, observed(move, runs), now)
        assert (result.status.cost_usd or 0.0) >= (before.cost_usd or 0.0) - 1e-9, move
        assert (result.status.energy_joules or 0.0) >= (before.energy_joules or 0.0) - 1e-6, move


def test_runs_carry_the_jobs_max_drop_and_quantize_auto_is_keyed_by_it() -> None:
    """quantize's `fallback: auto` keeps layers float until the job's maxDrop is met: the bound
    must reach the stage, and a tighter bound is another output, not the cached one."""
    auto = {"mode": "dynamic", "fallback": "auto"}

    def first_run(max_drop: float, params: dict[str, Any]) -> RunRequest:
        job = ctx(spec(stages=[{"name": "q", "type": "quantize", "params": params}],
                       objective={"metric": "accuracy", "maxDrop": max_drop}))  # fmt: skip
        return only_run(started(job)).request

    loose, tight = first_run(0.05, auto), first_run(0.01, auto)
    assert loose.max_drop == 0.05 and tight.max_drop == 0.01
    command = tight.command()
    assert command[command.index("--max-drop") + 1] == "0.01"
    assert loose.key != tight.key
    plain = {"mode": "dynamic"}
    assert first_run(0.05, plain).key == first_run(0.01, plain).key  # its output ignores it
