"""`kompaktor run` end to end, as a user runs it: real processes, real models, real files."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from kompaktor.quickstart import init_digits

pytestmark = pytest.mark.slow


def kompaktor(
    *args: str, cwd: Path | None = None, timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kompaktor.cli", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=timeout,
        check=False,
    )


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return init_digits(tmp_path_factory.mktemp("demo"))


def run_json(job: Path, *extra: str) -> tuple[int, dict[str, Any], str]:
    done = kompaktor("run", str(job), "--json", *extra)
    summary = json.loads(done.stdout) if done.stdout.strip() else {}
    return done.returncode, summary, done.stderr


def test_quickstart_runs_then_reruns_from_cache(demo: Path) -> None:
    code, summary, err = run_json(demo)
    assert code == 0, err
    assert summary["phase"] == "Succeeded"
    stages = summary["stages"]
    assert [s["phase"] for s in stages] == ["Succeeded"] * len(stages)
    assert not any(s.get("cached") for s in stages)
    result = summary["result"]
    assert result["metric"] >= result["baselineMetric"] - 0.01
    assert result["speedup"] > 0 and result["sizeRatio"] > 0
    for stage in stages:
        assert Path(stage["output"]["uri"].removeprefix("file://")).exists()

    started = time.monotonic()
    code, again, err = run_json(demo)
    assert code == 0, err
    assert all(s["cached"] for s in again["stages"])
    assert [s["output"] for s in again["stages"]] == [s["output"] for s in stages]
    assert time.monotonic() - started < 60


def test_human_output_has_the_table(demo: Path) -> None:
    done = kompaktor("run", str(demo))
    assert done.returncode == 0, done.stderr
    # the outcome is on stdout, progress on stderr
    assert "OptimizationJob digits-cnn: Succeeded" in done.stdout
    assert "x at batch 1" in done.stdout
    # the logs it names are this artifact root's own, the stages' logs among them
    logs = Path(done.stdout.rsplit("logs: ", 1)[1].splitlines()[0])
    assert logs.parent == demo.parent / ".kompaktor" / "digits-cnn"
    assert any(logs.glob("*.log")), sorted(logs.iterdir())


def _edit(job: Path, target: Path, change: Any) -> Path:
    """A changed copy of the job; its data stays where the original job keeps it."""
    document = yaml.safe_load(job.read_text())
    document["spec"]["dataset"]["uri"] = str(job.parent / "digits.npz")
    change(document)
    target.write_text(yaml.safe_dump(document))
    return target


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d["spec"]["stages"][0].update(type="sharpen"), "unknown stage type 'sharpen'"),
        (lambda d: d["spec"]["model"].pop("uri"), "spec.model.uri: required"),
        (
            lambda d: d["spec"]["stages"][0]["params"].update(lr=-1),
            "stage 'train' (spec.stages[0], train): params.lr",
        ),
    ],
)
def test_bad_job_is_one_clear_message(demo: Path, change: Any, message: str) -> None:
    bad = _edit(demo, demo.parent / "bad.yaml", change)
    done = kompaktor("run", str(bad))
    assert done.returncode != 0
    assert message in done.stderr
    assert "Traceback" not in done.stderr


def test_corrupt_model_fails_and_keeps_earlier_artifacts(demo: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken.pt2"
    broken.write_bytes(b"this is not a model")
    bad = _edit(demo, tmp_path / "job.yaml", lambda d: d["spec"]["model"].update(uri=str(broken)))
    before = sorted(p for p in (demo.parent / "artifacts").rglob("*") if p.is_file())
    code, summary, err = run_json(bad, "--artifacts", str(demo.parent / "artifacts"))
    assert code != 0
    assert summary["phase"] == "Failed"
    assert "broken.pt2" in summary["message"]
    assert "Traceback" not in err
    after = sorted(p for p in (demo.parent / "artifacts").rglob("*") if p.is_file())
    assert set(before) <= set(after)


def test_missing_model_file(demo: Path, tmp_path: Path) -> None:
    bad = _edit(
        demo, tmp_path / "job.yaml", lambda d: d["spec"]["model"].update(uri="nowhere/model.pt2")
    )
    code, summary, _ = run_json(bad)
    assert code != 0
    assert "nowhere/model.pt2" in summary["message"]


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_an_interrupt_stops_cleanly_and_a_rerun_resumes(
    demo: Path, tmp_path: Path, signum: signal.Signals
) -> None:
    """Ctrl-C, and SIGTERM (`timeout`, `kill`) alike: the running stage is stopped (it runs in
    a session of its own, which SIGTERM to the CLI does not reach: it used to train on,
    orphaned), the status file says Suspended with nothing Running, and a rerun resumes,
    each stopped run going on as its next attempt, in a log of its own."""
    artifacts, logs = tmp_path / "artifacts", tmp_path / "logs"
    # A shell starts background jobs with SIGINT ignored, and an ignored signal stays ignored
    # across exec (Python then raises no KeyboardInterrupt): give the CLI a terminal's Ctrl-C
    # even when the test suite runs in the background. A handler, unlike SIG_IGN, resets to
    # the default at exec.
    command = [sys.executable, "-m", "kompaktor.cli", "run", str(demo), "--json"]
    command += ["--artifacts", str(artifacts), "--logs", str(logs)]
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        process = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
    finally:
        signal.signal(signal.SIGINT, previous)
    deadline = time.monotonic() + 60
    stages: list[int] = []
    while time.monotonic() < deadline and not (stages and _logged(logs)):
        time.sleep(0.2)
        stages = _children(process.pid)
    assert stages and _logged(logs), "no stage started and logged within 60 s"
    process.send_signal(signum)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    assert "resume" in err
    assert [pid for pid in stages if _alive(pid)] == []
    name = yaml.safe_load(demo.read_text())["metadata"]["name"]
    status = json.loads((artifacts / "jobs" / name / "status.json").read_text())
    assert status["phase"] == "Suspended" and "resume" in status["message"]
    assert [s["name"] for s in status.get("stages", []) if s["phase"] == "Running"] == []
    assert [t for t in status.get("trials", []) if t["state"] == "Running"] == []
    if signum != signal.SIGINT:
        return  # resuming does not depend on the signal; one full rerun is enough
    interrupted = {log: log.read_text() for log in logs.rglob("*.log") if log.stat().st_size}
    code, summary, err = run_json(demo, "--artifacts", str(artifacts), "--logs", str(logs))
    assert code == 0, err
    assert summary["phase"] == "Succeeded"
    assert all(log.read_text() == text for log, text in interrupted.items())
    assert [log for log in interrupted if _next_attempt(log).exists()], (
        "the rerun started none of the interrupted runs again"
    )


def _next_attempt(log: Path) -> Path:
    """The log of the attempt after the one `log` is of (`<run>-a<attempt>.log`)."""
    run, attempt = log.stem.rsplit("-a", 1)
    return log.with_name(f"{run}-a{int(attempt) + 1}.log")


def _logged(logs: Path) -> bool:
    return any(log.stat().st_size for log in logs.rglob("*.log"))


def _children(pid: int) -> list[int]:
    """The processes whose parent is `pid` (the stages a run started)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(stat[1]) == pid:
            found.append(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    """Whether `pid` still runs (a zombie has stopped: it only waits to be reaped)."""
    try:
        stat = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return False
    return stat[0] != "Z"


def test_s3_artifacts(demo: Path, s3_bucket: str) -> None:
    env_ok = os.environ.get("KOMPAKTOR_S3_ENDPOINT_URL")
    assert env_ok, "the s3_server fixture sets the endpoint for child processes"
    code, summary, err = run_json(demo, "--artifacts", s3_bucket)
    assert code == 0, err
    assert all(s["output"]["uri"].startswith("s3://") for s in summary["stages"])
    code, again, err = run_json(demo, "--artifacts", s3_bucket)
    assert code == 0, err
    assert all(s["cached"] for s in again["stages"])


def test_unreadable_bucket(demo: Path, s3_server: Any) -> None:
    code, summary, err = run_json(demo, "--artifacts", "s3://no-such-bucket-kompaktor/x")
    assert code != 0
    assert "no-such-bucket-kompaktor" in (summary.get("message") or err)
    assert "Traceback" not in err
