"""`kompaktor run` resumed: what the interrupted (or killed) run had used carries on.

The statuses are made by the real plan, stepped with scripted observations at chosen times, and
go through the run's own status file (`LocalRun.save_status` / `load_status`), as an
interrupted run and the rerun of the same command pass them on.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import pytest

from kompaktor.api.jobfile import load_job_file
from kompaktor.api.status import OptimizationJobStatus
from kompaktor.executors.local import LocalExecutor
from kompaktor.local import LocalRun, interrupted, localize
from kompaktor.plan import (
    EnsureRun,
    Observation,
    RunFailed,
    RunRequest,
    RunStarted,
    RunSucceeded,
    step,
)
from kompaktor.plan.clock import iso
from tests.unit.plan.test_machine import T0, kinds, record, settled

JOB = """\
apiVersion: kompaktor.io/v1alpha1
kind: OptimizationJob
metadata: {name: resumed}
spec:
  model: {uri: model.pt2}
  dataset: {uri: "sklearn:digits"}
  budget: {maxDuration: 1h}
  stages:
    - {name: fit, type: train, params: {epochs: 1}, retries: 1}
"""
SEARCH = """\
    - name: tune
      type: hpo
      params: {target: train, sampler: random, trials: 2, parallelism: 2,
               space: {lr: {low: 1.0e-4, high: 1.0e-2}}}
"""


def local_run(tmp_path: Path, job: str = JOB) -> LocalRun:
    (tmp_path / "job.yaml").write_text(job)
    ctx = localize(load_job_file(tmp_path / "job.yaml"), tmp_path, None)
    return LocalRun(ctx, LocalExecutor(tmp_path / "logs"))


def only_request(status: OptimizationJobStatus, run: LocalRun, now: datetime) -> RunRequest:
    """The one run the plan starts from `status` at `now` (the first step of a run)."""
    (ensure,) = kinds(settled(run.ctx, status, [], now), EnsureRun)
    return ensure.request  # type: ignore[no-any-return]


def resume(run: LocalRun, status: OptimizationJobStatus, now: datetime) -> RunRequest:
    """`status` saved as the run left it, loaded by the rerun, and the run that starts."""
    run.save_status(status)
    return only_request(run.load_status(), run, now)


def second_attempt(run: LocalRun) -> tuple[OptimizationJobStatus, RunRequest]:
    """The fit stage's first attempt failed at T0; its retry runs, placed at T0 + 30 s."""
    first = settled(run.ctx, OptimizationJobStatus(), [], T0)
    (ensure,) = kinds(first, EnsureRun)
    failed = step(run.ctx, first.status, [RunFailed(ensure.request.run_id, "Boom", "x")], T0)
    retry = settled(run.ctx, failed.status, [], T0 + timedelta(seconds=20))
    (again,) = kinds(retry, EnsureRun)
    placed = step(run.ctx, retry.status, [RunStarted(again.request.run_id, "local")], T0 + _s(30))
    return placed.status, again.request


def _s(seconds: float) -> timedelta:
    return timedelta(seconds=seconds)


class TestAttemptsCarryOn:
    """A resumed run rebuilt its stages from nothing: a stage that had spent its retries got
    them back after Ctrl-C and the same command again."""

    def test_an_interrupted_run_resumes_its_stage_at_the_next_attempt(self, tmp_path: Path) -> None:
        run = local_run(tmp_path)
        status, second = second_attempt(run)
        assert second.attempt == 2
        stopped = interrupted(run.ctx, status, T0 + _s(60))
        third = resume(run, stopped, T0 + _s(90))
        assert third.attempt == 3 and third.run_id == second.run_id.replace("-a2", "-a3")
        (stage,) = run.load_status().stages
        assert (stage.attempts, stage.interrupted) == (2, 1)

    def test_the_resumed_run_no_longer_says_it_was_interrupted(self, tmp_path: Path) -> None:
        run = local_run(tmp_path)
        status, _ = second_attempt(run)
        run.save_status(interrupted(run.ctx, status, T0 + _s(60)))
        running = settled(run.ctx, run.load_status(), [], T0 + _s(90))
        (ensure,) = kinds(running, EnsureRun)
        done = step(
            run.ctx,
            running.status,
            [RunSucceeded(ensure.request.run_id, record("train", "d1"))],
            T0 + _s(99),
        )
        assert (done.status.phase, done.status.message) == ("Succeeded", None)

    def test_the_retry_spent_before_the_interrupt_stays_spent(self, tmp_path: Path) -> None:
        run = local_run(tmp_path)  # fit: retries 1, spent by the failed first attempt
        status, _ = second_attempt(run)
        run.save_status(interrupted(run.ctx, status, T0 + _s(60)))
        running = settled(run.ctx, run.load_status(), [], T0 + _s(90))
        (ensure,) = kinds(running, EnsureRun)
        crash = RunFailed(ensure.request.run_id, "Boom", "x")
        final = step(run.ctx, running.status, [crash], T0 + _s(95))
        assert final.status.stages[0].phase == "Failed" and final.status.phase == "Failed"
        assert not kinds(final, EnsureRun)

    def test_a_stage_waiting_to_retry_waits_out_its_backoff(self, tmp_path: Path) -> None:
        run = local_run(tmp_path)
        first = settled(run.ctx, OptimizationJobStatus(), [], T0)
        (ensure,) = kinds(first, EnsureRun)
        failed = step(run.ctx, first.status, [RunFailed(ensure.request.run_id, "Boom", "x")], T0)
        assert failed.status.stages[0].next_retry_time == iso(T0 + _s(2))  # base 2 s locally
        run.save_status(interrupted(run.ctx, failed.status, T0 + _s(1)))
        early = settled(run.ctx, run.load_status(), [], T0 + _s(1))
        assert early.status.stages[0].phase == "Retrying" and not kinds(early, EnsureRun)
        assert only_request(early.status, run, T0 + _s(3)).attempt == 2

    def test_a_killed_run_resumes_its_stage_at_the_next_attempt(self, tmp_path: Path) -> None:
        """No interrupt wrote its status: it still says Running, attempt 2 on its way."""
        run = local_run(tmp_path)
        status, second = second_attempt(run)
        third = resume(run, status, T0 + _s(600))
        assert third.attempt == 3 and third.run_id == second.run_id.replace("-a2", "-a3")
        (stage,) = run.load_status().stages
        assert (stage.attempts, stage.interrupted) == (2, 1)


class TestMaxDurationCountsTheTimeRun:
    """A resumed run started maxDuration (1 h here) over; the time between the interrupt and
    the resume does not count, the time run before does."""

    def test_the_time_before_the_interrupt_counts(self, tmp_path: Path) -> None:
        run = local_run(tmp_path)
        status, _ = second_attempt(run)
        run.save_status(interrupted(run.ctx, status, T0 + timedelta(minutes=40)))
        back = T0 + timedelta(hours=5)  # the run went on 4 h 20 min after it began
        resumed = settled(run.ctx, run.load_status(), [], back)
        assert resumed.status.phase == "Running", resumed.status.message
        assert resumed.status.start_time == iso(back - timedelta(minutes=40))
        inside = step(run.ctx, resumed.status, [], back + timedelta(minutes=19))
        assert inside.status.phase == "Running"
        over = step(run.ctx, inside.status, [], back + timedelta(minutes=21))
        assert over.status.phase == "Failed"
        assert "maxDuration" in (over.status.message or "")

    def test_a_killed_run_counts_up_to_the_last_moment_its_status_records(
        self, tmp_path: Path
    ) -> None:
        """Its attempt was placed at T0 + 30 s, the last time it records: the time after it
        is unknown, and counted neither as run nor as paid for."""
        run = local_run(tmp_path)
        status, _ = second_attempt(run)
        run.save_status(status)
        loaded = run.load_status()
        assert (loaded.phase, loaded.suspend_time) == ("Suspended", iso(T0 + _s(30)))
        back = T0 + timedelta(hours=5)
        resumed = settled(run.ctx, loaded, [], back)
        assert resumed.status.start_time == iso(back - _s(30))
        assert not resumed.status.cost_usd


class TestCancelledTrialsRunAgain:
    """Trials the job's failure cancelled stayed Failed `cancelled`: the rerun of the failed
    job counted them as failed trials (`NoTrialSucceeded: all 2 trials failed: cancelled`)
    and never ran them."""

    def failed_search(self, tmp_path: Path) -> tuple[LocalRun, list[RunRequest]]:
        """A search whose two trials are running when the job runs out of time."""
        run = local_run(tmp_path, JOB.replace("    - {name: fit", SEARCH + "    - {name: fit"))
        started = settled(run.ctx, OptimizationJobStatus(), [], T0)
        trials = [e.request for e in kinds(started, EnsureRun)]
        late = step(run.ctx, started.status, [], T0 + timedelta(hours=2))
        assert late.status.phase == "Failed"
        assert [(t.state, t.message) for t in late.status.trials] == [("Failed", "cancelled")] * 2
        run.save_status(late.status)
        return run, trials

    def test_the_rerun_of_a_failed_job_runs_its_cancelled_trials(self, tmp_path: Path) -> None:
        run, trials = self.failed_search(tmp_path)
        rerun = settled(run.ctx, run.load_status(), [], T0 + timedelta(hours=3))
        assert rerun.status.phase == "Running", rerun.status.message
        again = [e.request for e in kinds(rerun, EnsureRun)]
        assert [(r.trial, r.params) for r in again] == [(r.trial, r.params) for r in trials]
        assert [r.attempt for r in again] == [2, 2]  # runs of their own

    def test_only_the_trials_that_ran_and_failed_count_as_failed(self, tmp_path: Path) -> None:
        run, _ = self.failed_search(tmp_path)
        now = T0 + timedelta(hours=3)
        rerun = settled(run.ctx, run.load_status(), [], now)
        first, second = (e.request for e in kinds(rerun, EnsureRun))
        ended: list[Observation] = [
            RunFailed(first.run_id, "Boom", "x", retryable=False),
            RunSucceeded(second.run_id, record("train", "d1")),
        ]
        done = settled(run.ctx, rerun.status, ended, now)
        tune = done.status.stages[0]
        assert tune.phase == "Succeeded", tune.message
        assert (tune.metrics["failedTrials"], tune.metrics["trials"]) == (1.0, 1.0)

    def test_no_winner_names_the_failures_the_trials_had(self, tmp_path: Path) -> None:
        run, _ = self.failed_search(tmp_path)
        now = T0 + timedelta(hours=3)
        rerun = settled(run.ctx, run.load_status(), [], now)
        ended: list[Observation] = [
            RunFailed(e.request.run_id, "Boom", "x") for e in kinds(rerun, EnsureRun)
        ]
        done = settled(run.ctx, rerun.status, ended, now)
        assert done.status.phase == "Failed"
        assert "all 2 trials failed: Boom: x" in (done.status.message or "")
        assert "cancelled" not in (done.status.message or "")


@pytest.mark.parametrize("phase", ["Succeeded", "Failed"])
def test_a_finished_job_still_runs_afresh(tmp_path: Path, phase: str) -> None:
    """Only an unfinished run resumes: a finished one's rerun starts its stages and budgets
    anew (a fully cached rerun spends nothing)."""
    run = local_run(tmp_path)
    status, _ = second_attempt(run)
    run.save_status(status.model_copy(update={"phase": phase}))
    assert run.load_status().stages == []
