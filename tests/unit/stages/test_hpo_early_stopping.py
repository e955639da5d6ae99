"""Pruners stop clearly bad trials of a real search before their last epoch, in the search the
plan runs (each trial a `kompaktor stage run --trial` of its own) and in the in-process one
(`kompaktor stage run --type hpo`), and leave the best trial alone.

The search trains the untrained digits CNN for 4 epochs with lr drawn on a log scale up to 10:
with seed 1 trials 0, 2, 6 and 8 draw lr above 0.1 and stay at chance (0.10); trials 6 and 8
start after good trials have finished, so every pruner has what it needs to stop them.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from kompaktor.api.run import RESULT_FILE, RunRecord
from kompaktor.api.spec import OptimizationJobSpec
from kompaktor.api.status import OptimizationJobStatus, TrialRecord
from kompaktor.artifacts import open_store
from kompaktor.cli import build_parser
from kompaktor.engine import reconcile
from kompaktor.plan import EnsureRun, JobContext, Observation, RunFailed, RunRequest, RunSucceeded

pytestmark = pytest.mark.slow

EPOCHS = 4
SEARCH: dict[str, Any] = {
    "target": "train",
    "sampler": "random",
    "trials": 10,
    "parallelism": 2,
    "seed": 1,
    "base": {"epochs": EPOCHS, "batchSize": 64},
    "space": {"lr": {"low": 1e-3, "high": 10.0, "log": True}},
}
#: Pruners with their defaults, then with options a user sets.
PRUNERS = [
    {"pruner": "median"},
    {"pruner": "percentile"},
    {"pruner": "successiveHalving"},
    {"pruner": "hyperband"},
    {"pruner": "median", "startupTrials": 3, "warmupSteps": 1},
    {"pruner": "successiveHalving", "minResource": 3, "reductionFactor": 2},
]
BAD, LATE_BAD, BEST = {0, 2, 6, 8}, {6, 8}, 1


def check_early_stopping(trials: list[TrialRecord], best: int) -> None:
    """Late bad trials are pruned before their last epoch, nothing is pruned at its last one,
    and the best trial runs to its end and wins."""
    assert {t.number for t in trials if t.params["lr"] > 0.1} == BAD  # the draws of seed 1
    pruned = {t.number for t in trials if t.state == "Pruned"}
    shown = [(t.number, t.state, t.curve) for t in trials]
    assert pruned >= LATE_BAD, shown
    assert all(len(t.curve or []) < EPOCHS for t in trials if t.state == "Pruned"), shown
    assert all(len(t.curve or []) == EPOCHS for t in trials if t.state == "Complete"), shown
    assert trials[BEST].state == "Complete" and best == BEST, shown


def stage_run(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    code: int = args.handler(args)
    return code


@pytest.mark.parametrize("pruner", PRUNERS, ids=lambda p: ",".join(f"{v}" for v in p.values()))
def test_the_in_process_search_stops_bad_trials_early(
    pruner: dict[str, Any],
    digits_cnn_raw_pt2: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("KOMPAKTOR_TERMINATION_LOG", str(tmp_path / "termination"))
    out = tmp_path / "hpo"
    argv = ["stage", "run", "--type", "hpo", "--params", json.dumps({**SEARCH, **pruner}),
            "--input", str(digits_cnn_raw_pt2), "--dataset", "sklearn:digits",
            "--output", out.as_uri()]  # fmt: skip
    assert stage_run(argv) == 0
    record = RunRecord.model_validate_json((out / RESULT_FILE).read_text())
    trials = [TrialRecord(stage="hpo", **t) for t in record.details["trials"]]
    check_early_stopping(trials, record.details["bestTrial"])
    assert record.metrics["prunedTrials"] == sum(t.state == "Pruned" for t in trials)


def run_here(request: RunRequest) -> Observation:
    """The trial's `kompaktor stage run` command, run in this process (as its pod would)."""
    code = stage_run(request.command()[1:])
    if code != 0:
        return RunFailed(request.run_id, "StageFailed", f"exit {code}", retryable=False)
    record = RunRecord.model_validate_json(open_store(request.output_uri).get_bytes(RESULT_FILE))
    return RunSucceeded(request.run_id, record)


@pytest.mark.parametrize("pruner", [PRUNERS[0], PRUNERS[3]], ids=["median", "hyperband"])
def test_the_plan_run_search_stops_bad_trials_early(
    pruner: dict[str, Any],
    digits_cnn_raw_pt2: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("KOMPAKTOR_TERMINATION_LOG", str(tmp_path / "termination"))
    spec = OptimizationJobSpec.model_validate(
        {
            "model": {"uri": digits_cnn_raw_pt2.as_uri()},
            "dataset": {"uri": "sklearn:digits"},
            "objective": {"metric": "accuracy", "maxDrop": 0.05},
            "stages": [{"name": "tune", "type": "hpo", "params": {**SEARCH, **pruner}}],
        }
    )
    ctx = JobContext(name="h", spec=spec, artifacts_uri=(tmp_path / "art").as_uri(), generation=1)
    status, observations = OptimizationJobStatus(), list[Observation]()
    for _ in range(50):
        result = reconcile(ctx, status, observations, datetime.now(UTC))
        status = result.status
        if status.phase in ("Succeeded", "Failed"):
            break
        observations = [run_here(a.request) for a in result.actions if isinstance(a, EnsureRun)]
    assert status.phase == "Succeeded", status.message
    stage = status.stages[0]
    check_early_stopping(list(status.trials), int(stage.metrics["bestTrial"]))
    assert stage.metrics["prunedTrials"] == sum(t.state == "Pruned" for t in status.trials)
