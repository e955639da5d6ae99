"""Where `kompaktor run` prints, run as users run it with its output redirected: the outcome on
stdout (a file or a pipe gets it), progress on stderr one line per event as it happens, and in
`--json` mode nothing on stdout but the JSON summary."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.slow

MODEL = Path(__file__).parents[2] / "examples" / "breast-cancer-mlp" / "model.pt2"


def tiny_job(folder: Path) -> Path:
    """One quick benchmark stage at two batch sizes: a real run in a few seconds."""
    bench = {"batchSizes": [1, 4], "iterations": 5, "minSeconds": 0, "warmup": 1}
    job = {
        "apiVersion": "kompaktor.io/v1alpha1",
        "kind": "OptimizationJob",
        "metadata": {"name": "tiny"},
        "spec": {
            "model": {"uri": str(MODEL)},
            "dataset": {"uri": "sklearn:breast_cancer", "task": "classification"},
            "objective": {"metric": "accuracy", "maxDrop": 0.02},
            "stages": [{"name": "bench", "type": "benchmark", "params": bench}],
        },
    }
    path = folder / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    return path


def command(job: Path, *extra: str) -> list[str]:
    logs = str(job.parent / "logs")
    return [sys.executable, "-m", "kompaktor.cli", "run", str(job), "--logs", logs, *extra]


def test_redirected_the_outcome_is_on_stdout_and_progress_comes_as_it_happens(
    tmp_path: Path,
) -> None:
    """`kompaktor run job.yaml 2>/dev/null | wc -c` printed 0, and `> f 2>&1 &` left f empty
    for the whole run: the summary was on stderr, and progress only a live table, drawn
    nowhere when stderr is not a terminal."""
    job = tiny_job(tmp_path)
    with subprocess.Popen(
        command(job), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as run:
        assert run.stderr is not None and run.stdout is not None
        first = run.stderr.readline()
        still_running = run.poll() is None  # the line came while the stage ran, flushed
        err = first + run.stderr.read()
        out = run.stdout.read()
    assert run.returncode == 0, err
    assert first == "bench (benchmark): started\n" and still_running
    assert "bench (benchmark): succeeded in " in err
    assert "speed-up " in err.splitlines()[-1]
    assert out.startswith("OptimizationJob tiny: Succeeded")
    assert "accuracy " in out and "(input " in out and "maxDrop 0.02)" in out
    assert "x at batch 1, " in out and "x at batch 4" in out
    assert "artifacts: " in out and "logs: " in out
    assert "started" not in out and "OptimizationJob" not in err


def test_json_mode_prints_only_the_summary_on_stdout(tmp_path: Path) -> None:
    """Progress lines go to stderr, so `--json | jq` still reads one JSON document."""
    job = tiny_job(tmp_path)
    runs = [
        subprocess.run(command(job, "--json"), capture_output=True, text=True, check=False)
        for _ in ("run", "cached rerun")
    ]
    for done in runs:
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["phase"] == "Succeeded"
    assert "bench (benchmark): succeeded in " in runs[0].stderr
    assert runs[1].stderr.startswith("bench (benchmark): succeeded (cached): speed-up ")
