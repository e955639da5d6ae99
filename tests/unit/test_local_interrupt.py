"""`kompaktor run` interrupted and resumed pays for the time its stopped stage ran.

The stage is a real `kompaktor stage run` process (a long training of the breast-cancer
example's MLP) that the run stops a few seconds in, as Ctrl-C or SIGTERM would: both raise
KeyboardInterrupt in the run's loop (`kompaktor.interrupts`).
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from kompaktor.api.jobfile import load_job_file
from kompaktor.api.status import OptimizationJobStatus
from kompaktor.executors.local import LocalExecutor
from kompaktor.local import LocalRun, localize
from kompaktor.metrics.energy import DEFAULT_WATTS_PER_CORE
from kompaktor.plan import JobContext
from kompaktor.plan.clock import parse_iso

EXAMPLE = Path(__file__).parents[2] / "examples" / "breast-cancer-mlp" / "model.pt2"
JOB = """\
apiVersion: kompaktor.io/v1alpha1
kind: OptimizationJob
metadata: {name: stopped}
spec:
  model: {uri: model.pt2}
  dataset: {uri: "sklearn:breast_cancer"}
  stages:
    - {name: fit, type: train, params: {epochs: 100000}}
"""
#: USD per hour of the one local pool: 0.01 USD a second.
PRICE = 36.0
#: How long the stage runs before the interrupt.
RUN_SECONDS = 3.0


@pytest.fixture
def job(tmp_path: Path) -> JobContext:
    shutil.copy(EXAMPLE, tmp_path / "model.pt2")
    (tmp_path / "job.yaml").write_text(JOB)
    ctx = localize(load_job_file(tmp_path / "job.yaml"), tmp_path, None)
    return replace(ctx, pool_prices={"local": PRICE})


def interrupt_after(seconds: float, seen: list[OptimizationJobStatus]) -> Callable[..., None]:
    """An `on_update` that keeps each status and interrupts once a stage has run `seconds`."""
    since: list[float] = []

    def update(status: OptimizationJobStatus, running: list[Any]) -> None:
        seen.append(status)
        if running and not since:
            since.append(time.monotonic())
        if since and time.monotonic() - since[0] >= seconds:
            raise KeyboardInterrupt

    return update


def interrupted_run(job: JobContext, logs: Path, seconds: float) -> list[OptimizationJobStatus]:
    seen: list[OptimizationJobStatus] = []
    run = LocalRun(job, LocalExecutor(logs), interrupt_after(seconds, seen))
    with pytest.raises(KeyboardInterrupt):
        run.run()
    return seen


def test_an_interrupted_stage_is_paid_for_and_a_resume_keeps_it(
    job: JobContext, tmp_path: Path
) -> None:
    """The interrupted attempt cost nothing (its status only went back to Pending), and the
    resumed run started its totals from 0: its processes' time was lost from costUSD,
    energyJoules and maxCostUSD."""
    began = time.monotonic()
    interrupted_run(job, tmp_path / "logs", RUN_SECONDS)
    elapsed = time.monotonic() - began
    saved = LocalRun(job, LocalExecutor(tmp_path / "logs")).load_status()
    status = saved_status(tmp_path)
    (stage,) = status.stages
    assert (status.phase, stage.phase, stage.interrupted) == ("Suspended", "Pending", 1)
    assert "resume" in (status.message or "")
    # placed at a whole second (status times), stopped RUN_SECONDS later at least
    seconds = (stage.cost_usd or 0.0) / PRICE * 3600
    assert RUN_SECONDS - 1 <= seconds <= elapsed + 1
    assert stage.energy_joules == pytest.approx(seconds * DEFAULT_WATTS_PER_CORE)
    assert stage.energy_method == "estimate"
    assert status.cost_usd == pytest.approx(stage.cost_usd, abs=1e-6)
    assert status.energy_joules == pytest.approx(stage.energy_joules, abs=1e-3)
    assert (saved.cost_usd, saved.stages[0].cost_usd) == (status.cost_usd, stage.cost_usd)

    resumed = interrupted_run(job, tmp_path / "logs", 0.0)
    assert resumed[0].cost_usd == status.cost_usd
    assert resumed[0].energy_joules == status.energy_joules
    assert resumed[0].stages[0].phase == "Running"  # its next attempt, paid for on its own
    assert resumed[0].stages[0].attempts == 2


def test_a_resume_carries_attempts_and_the_time_run_on(job: JobContext, tmp_path: Path) -> None:
    """A resumed run started its stages at attempt 1 again (a stage's retries came back after
    Ctrl-C and a rerun) and its maxDuration from 0; the time between the runs is not counted."""
    interrupted_run(job, tmp_path / "logs", RUN_SECONDS)
    first = saved_status(tmp_path)
    time.sleep(2.0)  # between the runs: not counted
    began = time.monotonic()
    interrupted_run(job, tmp_path / "logs", 0.0)
    second_run = time.monotonic() - began
    second = saved_status(tmp_path)
    (stage,) = second.stages
    assert (stage.attempts, stage.interrupted) == (2, 2)
    logs = sorted(log.name.rsplit("-", 1)[1] for log in (tmp_path / "logs").glob("*/fit-*.log"))
    assert logs == ["a1.log", "a2.log"]  # the resume ran the next attempt
    # whole seconds: the time counted is the first run's and the second's, not the pause
    counted, ran_first = run_time(second), run_time(first)
    assert ran_first >= RUN_SECONDS - 1
    assert ran_first <= counted <= ran_first + second_run + 1


def saved_status(tmp_path: Path) -> OptimizationJobStatus:
    path = tmp_path / "artifacts" / "jobs" / "stopped" / "status.json"
    return OptimizationJobStatus.model_validate_json(path.read_text())


def run_time(status: OptimizationJobStatus) -> float:
    """Seconds a suspended job has run: what maxDuration counts when it resumes."""
    assert status.start_time is not None and status.suspend_time is not None
    return (parse_iso(status.suspend_time) - parse_iso(status.start_time)).total_seconds()
