"""SIGTERM to `kompaktor stage run` (a pod deleted or evicted, `kompaktor run` stopping its
stages) unwinds through the run's cleanup: Python's default handler killed the process where it
stood, leaking its temporary folder (copies of the input and reference models) and leaving a
multipart upload under way unaborted."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kompaktor.api.run import EXIT_FAILED, FAILURE_FILE, RunFailure


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_a_terminated_stage_cleans_up_and_fails_retryably(
    cancer_mlp_pt2: Path, tmp_path: Path, signum: signal.Signals
) -> None:
    temp, out, message = tmp_path / "tmp", tmp_path / "runs" / "train-1", tmp_path / "message"
    temp.mkdir()
    env = dict(os.environ, TMPDIR=str(temp), KOMPAKTOR_TERMINATION_LOG=str(message))
    params = {"epochs": 100_000, "lr": 0.01, "batchSize": 32}
    command = [sys.executable, "-m", "kompaktor.cli", "stage", "run", "--type", "train",
               "--params", json.dumps(params), "--input", str(cancer_mlp_pt2),
               "--dataset", "sklearn:breast_cancer", "--output", out.as_uri()]  # fmt: skip
    stage = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not list(temp.glob("kompaktor-stage-*/scratch")):  # inputs loaded: training
            assert stage.poll() is None, stage.communicate()
            assert time.monotonic() < deadline, "the stage never started training"
            time.sleep(0.1)
        assert len(list(temp.iterdir())) == 1  # the run's own temporary folder
        time.sleep(0.5)
        stage.send_signal(signum)
        _, err = stage.communicate(timeout=60)
    finally:
        if stage.poll() is None:
            stage.kill()
            stage.wait()

    assert stage.returncode == EXIT_FAILED, err.decode()  # retryable, as any plain failure
    assert list(temp.iterdir()) == []  # the temporary folder went with the run
    name = signal.Signals(signum).name
    failure = RunFailure.model_validate_json(message.read_text())
    assert (failure.reason, failure.retryable) == ("Interrupted", True)
    assert failure.message == f"stage (train): stopped by {name} before it finished"
    assert RunFailure.model_validate_json((out / FAILURE_FILE).read_text()) == failure
    assert f"error: stage (train): stopped by {name}" in err.decode()
    assert b"Traceback" not in err
