"""`kompaktor run`'s own state: the status file a rerun starts from."""

from __future__ import annotations

from pathlib import Path

import pytest

from kompaktor.api.jobfile import load_job_file
from kompaktor.api.status import JobPhase, OptimizationJobStatus, TrialRecord
from kompaktor.errors import JobSpecError
from kompaktor.executors.local import LocalExecutor
from kompaktor.local import LocalRun, localize
from tests.unit.api.test_jobfile import GOOD


def saved_search(tmp_path: Path, phase: JobPhase) -> LocalRun:
    """A local run whose status file holds a search's trials, one finished, one running."""
    job_path = tmp_path / "job.yaml"
    job_path.write_text(GOOD)  # any valid job: only its status file is used
    ctx = localize(load_job_file(job_path), job_path.parent, None)
    run = LocalRun(ctx, LocalExecutor(tmp_path / "logs"))
    trial = TrialRecord(stage="tune", number=0, params={}, cost_usd=0.5, energy_joules=120.0)
    saved = OptimizationJobStatus(
        phase=phase,
        cost_usd=1.0,
        energy_joules=240.0,
        trials=[
            trial.model_copy(update={"state": "Complete"}),
            trial.model_copy(update={"number": 1, "state": "Running", "attempts": 1}),
        ],
    )
    run.save_status(saved)
    return run


def test_a_rerun_counts_restored_trials_as_spent_by_the_run_that_made_them(tmp_path: Path) -> None:
    """A fully cached rerun showed 0 J for every stage and the restored HPO trials' energy in
    its total (294.6 J on the digits pipeline): restored finished trials count 0 here, and a
    trial that was running is run again, from Pending."""
    restored = saved_search(tmp_path, "Succeeded").load_status()
    assert [(t.state, t.energy_joules, t.cost_usd) for t in restored.trials] == [
        ("Complete", 0.0, 0.0),
        ("Pending", 0.0, 0.0),  # run again: its figures are set when it finishes
    ]
    assert restored.energy_joules is None and restored.replaced_energy_joules is None


def test_a_resumed_run_keeps_what_the_interrupted_one_spent(tmp_path: Path) -> None:
    """Resuming dropped the interrupted run's spending, the stopped runs' time included: it
    stays in the totals once, where it was (the resume goes on from the saved status)."""
    restored = saved_search(tmp_path, "Suspended").load_status()
    assert [(t.energy_joules, t.cost_usd) for t in restored.trials] == [(120.0, 0.5)] * 2
    assert (restored.cost_usd, restored.energy_joules) == (1.0, 240.0)
    assert (restored.replaced_cost_usd, restored.replaced_energy_joules) == (None, None)


@pytest.mark.parametrize(
    ("flag", "problem"),
    [
        ("htp://bucket/runs", "htp://bucket/runs: unsupported URI scheme 'htp'"),
        ("s3://b/runs", "invalid S3 URI 's3://b/runs': want s3://<bucket>[/<prefix>]"),
    ],
)
def test_a_bad_artifacts_flag_is_refused_naming_the_flag(
    tmp_path: Path, flag: str, problem: str
) -> None:
    """It failed at the first status write, with a message that did not say which setting."""
    job_path = tmp_path / "job.yaml"
    job_path.write_text(GOOD)
    with pytest.raises(JobSpecError) as caught:
        localize(load_job_file(job_path), job_path.parent, flag)
    assert str(caught.value).startswith(f"--artifacts: {problem}")
