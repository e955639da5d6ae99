"""While one run times a model under the timing lock, its siblings neither train nor evaluate.

`kompaktor run`'s parallel hpo trials timed their models one at a time, but each timing still ran
beside its siblings' training on the same cores. Work now holds the lock shared and passes a
turnstile between steps; a timing takes the turnstile, then the lock, so siblings pause at their
next step and stay paused until it ends. These tests use real processes and the real loops.
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import math
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from torch import nn

from kompaktor.data import Dataset
from kompaktor.errors import KompaktorError
from kompaktor.evaluate import predict_all
from kompaktor.quant import CalibrationReader
from kompaktor.stages.base import StageContext
from kompaktor.stages.benchmark import BenchmarkParams, BenchmarkStage
from kompaktor.stages.runner import StageRequest, run_stage
from kompaktor.timing_lock import (
    TIMING_LOCK_ENV,
    TURNSTILE_SUFFIX,
    YIELD_SECONDS,
    timing_lock,
    working,
)
from kompaktor.training import fit

ContextFactory = Callable[..., StageContext[Any]]
#: Each training step sleeps this long, so a yield interval spans a known number of steps.
STEP_SLEEP = 0.01
#: How long the sibling holds the lock, timing a model.
HOLD = 0.3
#: A process training a small MLP until `done` exists, then one epoch more, evaluating after each
#: epoch (nested work); prints each step's [start, end] (loss computed to optimizer step done).
TRAINER = f"""
import json, sys, time
from collections.abc import Callable
from pathlib import Path
import torch
from torch import nn
from torch.optim.optimizer import register_optimizer_step_post_hook
from kompaktor.data import load_dataset
from kompaktor.evaluate import predict_all
from kompaktor.training import fit, task_loss
ready, done = Path(sys.argv[1]), Path(sys.argv[2])
data = load_dataset("sklearn:breast_cancer")
steps, seen, loss = [], [], task_loss("classification")
def timed_loss(module, x, y):
    steps.append([time.time(), None])
    if len(steps) == 3:
        ready.touch()
    time.sleep({STEP_SLEEP})
    return loss(module, x, y)
def step_done(optimizer, args, kwargs):
    steps[-1][1] = time.time()
def on_epoch(epoch, mean):
    predict_all(lambda x: model(torch.as_tensor(x).float()).detach().numpy(), data.inputs("val"))
    seen.append(done.exists())
    return len(seen) > 1 and seen[-2]
register_optimizer_step_post_hook(step_done)
torch.manual_seed(0)
model = nn.Sequential(nn.Linear(30, 8), nn.ReLU(), nn.Linear(8, 2))
fit(model, data, epochs=100_000, lr=1e-3, batch_size=64, seed=0, loss_fn=timed_loss,
    on_epoch=on_epoch)
print(json.dumps(steps))
"""
#: A sibling that waits for every `ready` file (or none), times a model under the lock for HOLD
#: seconds, touches `done` and prints [asked, started, ended] (seconds since the epoch).
TIMER = f"""
import json, sys, time
from collections.abc import Callable
from pathlib import Path
import numpy as np
from kompaktor.evaluate import measure_latency
from kompaktor.timing_lock import timing_lock
done, readies = Path(sys.argv[1]), [Path(p) for p in sys.argv[2:]]
while not all(ready.exists() for ready in readies):
    time.sleep(0.005)
sample = (np.ones((1, 30), dtype=np.float32),)
asked = time.time()
with timing_lock():
    started = time.time()
    done.touch()
    measure_latency(lambda x: np.tanh(x), sample, 1, iterations=10, min_seconds={HOLD})
    ended = time.time()
print(json.dumps([asked, started, ended]))
"""


@pytest.fixture
def lock(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A timing lock named for this process and the processes it starts."""
    path = tmp_path / "timing.lock"
    monkeypatch.setenv(TIMING_LOCK_ENV, str(path))
    return path


def python(script: str, *args: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", script, *map(str, args)], stdout=subprocess.PIPE, text=True
    )


def finish(process: subprocess.Popen[str], timeout: float = 180) -> Any:
    """The JSON the process printed; it must exit cleanly."""
    try:
        out = process.communicate(timeout=timeout)[0]
    finally:
        process.kill()
        process.wait()
    assert process.returncode == 0
    return json.loads(out)


def hold_lock(tmp_path: Path) -> tuple[subprocess.Popen[str], Path]:
    """A sibling holding the lock (timing a model) for HOLD seconds from when `done` appears."""
    done = tmp_path / "held"
    timer = python(TIMER, done)
    deadline = time.monotonic() + 60
    while not done.exists():
        assert timer.poll() is None and time.monotonic() < deadline, "the timer did not start"
        time.sleep(0.005)
    return timer, done


def test_training_siblings_pause_for_the_whole_timing(lock: Path, tmp_path: Path) -> None:
    """Two processes train (and evaluate between epochs) while a third times a model: no step
    of either runs during the timing, which starts within one yield interval of steps."""
    readies = [tmp_path / f"ready-{n}" for n in range(2)]
    done = tmp_path / "done"
    trainers = [python(TRAINER, ready, done) for ready in readies]
    timer = python(TIMER, done, *readies)
    asked, started, ended = finish(timer)
    for steps in (finish(trainer) for trainer in trainers):
        assert all(end is not None for _, end in steps)
        overlapping = [(s, e) for s, e in steps if s < ended and e > started]
        assert not overlapping, (started, ended, overlapping)
        assert any(e <= started for _, e in steps) and any(s >= ended for s, _ in steps)
        # A yield interval holds at most this many steps; the timer may ask just as one starts.
        most = 2 * math.ceil(YIELD_SECONDS / STEP_SLEEP)
        assert len([s for s, _ in steps if asked < s < started]) <= most
    assert Path(str(lock) + TURNSTILE_SUFFIX).exists()


#: fit twice, the second time under audit: prints every flock and every file opened in argv[1].
AUDIT = """
import json, sys
import torch
from torch import nn
from kompaktor.data import load_dataset
from kompaktor.training import fit
data = load_dataset("sklearn:breast_cancer")
def train():
    torch.manual_seed(0)
    fit(nn.Sequential(nn.Linear(30, 4), nn.Linear(4, 2)), data, epochs=2, lr=1e-3,
        batch_size=32, seed=0)
train()  # torch's lazy imports happen here, not under audit
events, folder = [], sys.argv[1]
def audit(event, args):
    if event == "fcntl.flock" or event == "open" and str(args[0]).startswith(folder):
        events.append([event, str(args[0])])
sys.addaudithook(audit)
train()
print(json.dumps(events))
"""


@pytest.mark.parametrize("named", [False, True])
def test_fit_touches_a_lock_only_when_one_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, named: bool
) -> None:
    lock = tmp_path / "timing.lock"
    if named:
        monkeypatch.setenv(TIMING_LOCK_ENV, str(lock))
    else:
        monkeypatch.delenv(TIMING_LOCK_ENV, raising=False)
    events = finish(python(AUDIT, tmp_path))
    if named:
        assert [args for event, args in events if event == "open"] == [
            str(lock),
            str(lock) + TURNSTILE_SUFFIX,
        ]
        assert any(event == "fcntl.flock" for event, _ in events)
    else:
        assert events == []
        assert list(tmp_path.iterdir()) == []


NESTED = """
import json
from kompaktor.timing_lock import timing_lock, working
with working() as checkpoint:
    checkpoint()
    with working() as inner:
        with timing_lock() as waited:  # training, then timing, in one process
            with working() as during:  # evaluation inside a timing
                during()
        inner()
    checkpoint()
with timing_lock():
    pass
print(json.dumps(waited is not None))
"""


def test_a_process_that_works_then_times_never_waits_on_itself(lock: Path) -> None:
    """flock locks belong to open files: a process holding the lock shared, timing with a second
    open of it, would wait for itself forever."""
    assert finish(python(NESTED), timeout=60) is True


def test_evaluation_waits_for_a_siblings_timing(lock: Path, tmp_path: Path) -> None:
    timer, _ = hold_lock(tmp_path)
    calls: list[float] = []

    def predictor(*inputs: np.ndarray) -> np.ndarray:
        calls.append(time.time())
        return inputs[0]

    predict_all(predictor, (np.zeros((5, 3), dtype=np.float32),), batch_size=2)
    _, started, ended = finish(timer)
    assert len(calls) == 3 and min(calls) >= ended > started


def test_calibration_passes_a_checkpoint_before_each_batch() -> None:
    """Static quantization feeds ONNX Runtime batch by batch through this reader, inside
    `working()`: a checkpoint before each batch is where calibration pauses for a sibling's
    timing (the checkpoint's pausing is tested with real processes above)."""
    events: list[str] = []
    rows = np.zeros((5, 3), dtype=np.float32)
    reader = CalibrationReader(
        [("x", ["batch", 3])], [rows], 5, 2, checkpoint=lambda: events.append("checkpoint")
    )
    while reader.get_next() is not None:
        events.append("batch")
    assert events == ["checkpoint", "batch"] * 3 + ["checkpoint"]


def test_a_lock_that_cannot_be_opened_fails_training_naming_the_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cancer: Dataset
) -> None:
    lock = tmp_path / "gone" / "timing.lock"
    monkeypatch.setenv(TIMING_LOCK_ENV, str(lock))
    expected = rf"^{TIMING_LOCK_ENV}={re.escape(str(lock))}: cannot open the timing lock"
    with pytest.raises(KompaktorError, match=expected):
        fit(nn.Linear(30, 2), cancer, epochs=1, lr=1e-3, batch_size=32, seed=0)


def test_training_logs_how_long_it_paused(lock: Path, tmp_path: Path, cancer: Dataset) -> None:
    timer, _ = hold_lock(tmp_path)
    lines: list[str] = []
    fit(nn.Linear(30, 2), cancer, epochs=1, lr=1e-3, batch_size=32, seed=0, log=lines.append)
    finish(timer)
    paused = re.fullmatch(
        r"paused ([0-9.]+) s in all while sibling runs timed their models", lines[-1]
    )
    assert paused is not None and float(paused[1]) > 0


def test_benchmark_times_under_the_lock(
    lock: Path,
    tmp_path: Path,
    stage_context: ContextFactory,
    cancer_mlp_pt2: Path,
    cancer: Dataset,
) -> None:
    """The benchmark stage's timing waits for a sibling's and records the wait."""
    params = BenchmarkParams(batch_sizes=[1], iterations=5, warmup=1)
    logged: list[tuple[float, str]] = []
    ctx: StageContext[Any] = dataclasses.replace(
        stage_context(params, cancer_mlp_pt2, cancer),
        log=lambda text: logged.append((time.time(), text)),
    )
    timer, _ = hold_lock(tmp_path)
    metrics = BenchmarkStage().run(ctx).metrics
    _, _, ended = finish(timer)
    timing = [at for at, text in logged if text.startswith("timing batch size")]
    assert timing and min(timing) >= ended
    assert metrics["latencyLockWaitSeconds"] > 0
    assert metrics["latencyBatch"] == 1 and metrics["latencyThreads"] == 1


def test_benchmark_without_a_lock_records_no_wait(
    stage_context: ContextFactory,
    cancer_mlp_pt2: Path,
    cancer: Dataset,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(TIMING_LOCK_ENV, raising=False)
    params = BenchmarkParams(batch_sizes=[4, 8], iterations=5, warmup=1, threads=2)
    metrics = BenchmarkStage().run(stage_context(params, cancer_mlp_pt2, cancer)).metrics
    assert "latencyLockWaitSeconds" not in metrics
    assert metrics["latencyBatch"] == 4 and metrics["latencyThreads"] == 2


def sibling_could_time(lock: Path) -> bool:
    """Whether a sibling process could take the lock exclusively now (a second open file, so
    this process's own shared hold counts as a sibling's)."""
    fd = os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(fd)
    return True


def test_a_stage_run_loads_and_saves_under_the_lock(
    lock: Path, tmp_path: Path, cancer_mlp_pt2: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Loading, exporting and saving have no step to pause at: a sibling's timing waited only
    for training and evaluation, and ran beside an export that took seconds."""
    import kompaktor.models as models

    seen: dict[str, bool] = {}

    def watched(name: str, call: Callable[..., Any]) -> Callable[..., Any]:
        def during(*args: Any, **kwargs: Any) -> Any:
            seen.setdefault(name, sibling_could_time(lock))
            return call(*args, **kwargs)

        return during

    monkeypatch.setattr(models, "load_model", watched("load", models.load_model))
    monkeypatch.setattr(models, "save_torch", watched("save", models.save_torch))
    train = {"epochs": 1, "lr": 0.01, "batchSize": 32}
    request = StageRequest(type="train", input=str(cancer_mlp_pt2), dataset="sklearn:breast_cancer",
                           output=(tmp_path / "out").as_uri(), params=train)  # fmt: skip
    assert run_stage(request).metrics["latencyLockWaitSeconds"] >= 0
    assert seen == {"load": False, "save": False}
    assert sibling_could_time(lock)  # let go when the run ends


def test_work_holds_the_lock_again_after_its_own_timing(lock: Path) -> None:
    """What follows a timing in the same work (saving the model it timed) is work too."""
    with working():
        assert not sibling_could_time(lock)
        with timing_lock():
            assert not sibling_could_time(lock)
        assert not sibling_could_time(lock)
    assert sibling_could_time(lock)


def test_a_stage_process_imports_its_libraries_only_between_timings(
    lock: Path, tmp_path: Path, cancer_mlp_pt2: Path
) -> None:
    """A new trial's process imported torch and the stages' libraries (≈1.4 s of CPU, no step
    to pause at) beside a sibling's timing; it now waits for the timing to end first."""
    turnstile = Path(str(lock) + TURNSTILE_SUFFIX)
    held = [os.open(path, os.O_WRONLY | os.O_CREAT) for path in (turnstile, lock)]
    for fd in held:  # a sibling timing a model: the turnstile, then the lock
        fcntl.flock(fd, fcntl.LOCK_EX)
    train = json.dumps({"epochs": 1, "lr": 0.01, "batchSize": 32})
    argv = [sys.executable, "-m", "kompaktor.cli", "stage", "run", "--type", "train",
            "--params", train, "--input", str(cancer_mlp_pt2), "--dataset",
            "sklearn:breast_cancer", "--output", (tmp_path / "out").as_uri()]  # fmt: skip
    run = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        maps = Path(f"/proc/{run.pid}/maps")
        deadline = time.monotonic() + 6  # torch alone loads in about 2 s here
        while time.monotonic() < deadline and run.poll() is None:
            assert "libtorch" not in maps.read_text()
            time.sleep(0.2)
        assert run.poll() is None  # still waiting for the timing to end
    finally:
        for fd in held:
            os.close(fd)
    assert run.wait(timeout=180) == 0, run.communicate()[1]
