"""Runs that share a timing lock (KOMPAKTOR_TIMING_LOCK) time their output one at a time.

`kompaktor run` runs hpo trials as parallel processes: each timed its model while its siblings
timed theirs beside it on the same cores, so latency objectives ranked trials by noise. A timing
holds the lock exclusively (training and evaluation hold it shared and pause for it:
test_timing_lock_turnstile.py); a run with no lock named times at once.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from itertools import combinations
from pathlib import Path

import pytest

from kompaktor.api.run import RunRecord
from kompaktor.api.status import TrialRecord
from kompaktor.data import load_dataset
from kompaktor.errors import KompaktorError
from kompaktor.executors.local import TIMING_LOCK_FILE, LocalExecutor, artifacts_root
from kompaktor.models import load_model
from kompaktor.plan import Observation, RunRequest, RunStarted, RunSucceeded
from kompaktor.plan.trials import complete
from kompaktor.stages.runner import StageRequest, batch1_latency, run_stage
from kompaktor.timing_lock import TIMING_LOCK_ENV

TRAIN = {"epochs": 1, "lr": 0.01, "batchSize": 32}
DATASET = "sklearn:breast_cancer"
#: One process: load the model, say it is ready, wait for the go file, time the model, print
#: when the timing ran (lock held) and how long it waited for the lock.
TIMER = """
import json, sys, time
from pathlib import Path
from kompaktor.data import load_dataset
from kompaktor.models import load_model
from kompaktor.stages.runner import batch1_latency
model, dataset = load_model(Path(sys.argv[1])), load_dataset(sys.argv[2])
ready, go = Path(sys.argv[3]), Path(sys.argv[4])
ready.touch()
while not go.exists():
    time.sleep(0.001)
timed = batch1_latency(model, dataset)
print(json.dumps([timed.started, timed.ended, timed.lock_wait_seconds]))
"""
PROCESSES = 3


@pytest.fixture(autouse=True)
def no_lock(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test names its own lock, or none."""
    monkeypatch.delenv(TIMING_LOCK_ENV, raising=False)


def time_at_once(model: Path, folder: Path) -> list[tuple[float, float, float | None]]:
    """PROCESSES processes released together (each loaded and waiting) to time `model`."""
    go = folder / "go"
    readies = [folder / f"ready-{n}" for n in range(PROCESSES)]
    timers = [
        subprocess.Popen(
            [sys.executable, "-c", TIMER, str(model), DATASET, str(ready), str(go)],
            stdout=subprocess.PIPE,
            text=True,
        )
        for ready in readies
    ]
    try:
        while not all(ready.exists() for ready in readies):
            assert all(timer.poll() is None for timer in timers), "a timer process died"
            time.sleep(0.01)
        go.touch()
        outs = [timer.communicate(timeout=120)[0] for timer in timers]
    finally:
        for timer in timers:
            timer.kill()
            timer.wait()
    assert all(timer.returncode == 0 for timer in timers)
    return [tuple(json.loads(out)) for out in outs]


def test_processes_sharing_a_lock_never_time_at_the_same_moment(
    cancer_mlp_pt2: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lock = tmp_path / "timing.lock"
    monkeypatch.setenv(TIMING_LOCK_ENV, str(lock))
    timings = time_at_once(cancer_mlp_pt2, tmp_path)
    for (start_a, end_a, _), (start_b, end_b, _) in combinations(timings, 2):
        assert end_a <= start_b or end_b <= start_a, timings  # the intervals do not overlap
    assert all(waited is not None and waited >= 0 for _, _, waited in timings)
    assert lock.exists()


def test_without_a_lock_timing_starts_at_once_and_records_no_wait(
    cancer_mlp_pt2: Path, tmp_path: Path
) -> None:
    timed = batch1_latency(load_model(cancer_mlp_pt2), load_dataset(DATASET))
    assert timed.lock_wait_seconds is None
    assert timed.started <= timed.ended
    assert timed.metrics() == {"latencyMs": timed.p50_ms, "latencyBatch": 1, "latencyThreads": 1}


def test_a_lock_that_cannot_be_opened_names_the_variable(
    cancer_mlp_pt2: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lock = tmp_path / "gone" / "timing.lock"
    monkeypatch.setenv(TIMING_LOCK_ENV, str(lock))
    expected = rf"^{TIMING_LOCK_ENV}={re.escape(str(lock))}: cannot open the timing lock"
    with pytest.raises(KompaktorError, match=expected):
        batch1_latency(load_model(cancer_mlp_pt2), load_dataset(DATASET))


@pytest.mark.parametrize("locked", [False, True])
def test_a_run_records_how_its_latency_was_measured(
    cancer_mlp_pt2: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, locked: bool
) -> None:
    if locked:
        monkeypatch.setenv(TIMING_LOCK_ENV, str(tmp_path / "timing.lock"))
    out = tmp_path / "runs" / "train-1"
    request = StageRequest(type="train", input=str(cancer_mlp_pt2), dataset=DATASET,
                           output=out.as_uri(), params=TRAIN)  # fmt: skip
    metrics = run_stage(request).metrics
    assert metrics["latencyMs"] > 0
    assert metrics["latencyBatch"] == 1 and metrics["latencyThreads"] == 1
    assert ("latencyLockWaitSeconds" in metrics) is locked
    assert ("pausedForTimingSeconds" in metrics) is locked  # nothing else held it: 0
    assert metrics.get("pausedForTimingSeconds", 0.0) < 1.0
    assert (tmp_path / "timing.lock").exists() is locked


def test_kompaktor_run_gives_its_runs_one_lock_per_artifact_root(
    cancer_mlp_pt2: Path, tmp_path: Path
) -> None:
    root = tmp_path / "artifacts"
    request = RunRequest(run_id="tune-0123456789-t0", job="demo", stage="tune", stage_type="train",
                         params=TRAIN, key="0123456789" * 3, input_uri=str(cancer_mlp_pt2),
                         dataset_uri=DATASET, output_uri=f"{root.as_uri()}/runs/train-0123",
                         reference_uri=str(cancer_mlp_pt2), metric="accuracy",
                         task="classification", seed=0, attempt=1)  # fmt: skip
    executor = LocalExecutor(tmp_path / "logs")
    executor.ensure(request)
    events: list[Observation] = []
    deadline = time.monotonic() + 120
    while executor.running and time.monotonic() < deadline:
        events += executor.poll(0.2)
    executor.shutdown()
    end = events[-1]
    assert isinstance(events[0], RunStarted) and isinstance(end, RunSucceeded), events
    assert "latencyLockWaitSeconds" in end.record.metrics
    assert (executor.logs_for(artifacts_root(request.output_uri)) / TIMING_LOCK_FILE).exists()


def test_an_hpo_trial_keeps_its_lock_wait() -> None:
    """A trial record keeps few metrics: whether its latency was timed alone is one of them."""
    record = RunRecord.model_validate(
        {"type": "train", "output": {"uri": "file:///m.pt2", "digest": "sha256:" + "0" * 64},
         "format": "pt2", "metrics": {"latencyMs": 0.2, "latencyLockWaitSeconds": 1.5,
                                      "latencyThreads": 1.0, "epochs": 1.0}}
    )  # fmt: skip
    trial = complete(TrialRecord(stage="tune", number=0, params={}), record)
    assert trial.metrics == {"latencyMs": 0.2, "latencyLockWaitSeconds": 1.5}
