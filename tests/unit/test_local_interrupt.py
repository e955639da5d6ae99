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
    status = OptimizationJobStatus.model_validate_json(
        (tmp_path / "artifacts" / "jobs" / "stopped" / "status.json").read_text()
    )
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
    assert (saved.replaced_cost_usd, saved.replaced_energy_joules) == (
        status.cost_usd,
        status.energy_joules,
    )

    resumed = interrupted_run(job, tmp_path / "logs", 0.0)
    assert resumed[0].cost_usd == status.cost_usd
    assert resumed[0].energy_joules == status.energy_joules
    assert resumed[0].stages[0].phase == "Running"  # its next attempt, paid for on its own
