"""One `kompaktor run` of a job to an artifact root at a time, and none leaves stages behind.

Two runs of the same job to the same root shared the status file and the logs and started each
stage run twice; a run killed outright (SIGKILL) left its stage processes going (each in a
session of its own), and the resumed run started the same runs again beside them. The lock lives
in the artifact root itself, so runs with other `--logs` are held off too; the record of started
processes lives in the root's logs folder (LocalExecutor.claim).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import kompaktor.executors.leftovers as leftovers
from kompaktor.api.jobfile import load_job_file
from kompaktor.artifacts import local_path
from kompaktor.cli import EXIT_USAGE, main
from kompaktor.executors.leftovers import process_start_time
from kompaktor.executors.local import PROCESSES_SUFFIX, LocalExecutor
from kompaktor.executors.run_lock import RUN_LOCK_KEY, RunInProgressError
from kompaktor.local import localize

EXAMPLE = Path(__file__).parents[2] / "examples" / "breast-cancer-mlp" / "model.pt2"
JOB = """\
apiVersion: kompaktor.io/v1alpha1
kind: OptimizationJob
metadata: {{name: {name}}}
spec:
  model: {{uri: model.pt2}}
  dataset: {{uri: "sklearn:breast_cancer"}}
  stages:
    - {{name: fit, type: train, params: {{epochs: {epochs}}}}}
"""
#: A stage that will not stop on SIGTERM: says so once its handler is set, then sleeps.
IGNORES_SIGTERM = (
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print(flush=True); "
    "time.sleep(60)"
)


#: Process groups a test started: leader pid and start time.
Groups = list[tuple[int, int | None]]


@pytest.fixture
def groups(tmp_path: Path) -> Iterator[Groups]:
    """Process groups a test started (leader pid, start time), and the stage processes its runs
    recorded: those a failed test left going are killed, and only they (a pid may have been
    reused since)."""
    started: Groups = []
    yield started
    for processes in tmp_path.rglob(f"*{PROCESSES_SUFFIX}"):
        with contextlib.suppress(ValueError):
            started += [(r["pid"], r["start"]) for r in map(json.loads, processes.open())]
    for pid, start in started:
        if start is not None and process_start_time(pid) == start:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)


def session(groups: Groups, *argv: str) -> subprocess.Popen[bytes]:
    """A process in a session of its own, as LocalExecutor starts a stage."""
    popen = subprocess.Popen(argv, stdout=subprocess.PIPE, start_new_session=True)
    groups.append((popen.pid, process_start_time(popen.pid)))
    return popen


def record(executor: LocalExecutor, root: str, entries: list[tuple[int, int | None]]) -> None:
    """The job's processes file as a killed run leaves it."""
    lines = [json.dumps({"pid": pid, "start": start, "run": f"fit-a{i}"}) for i, (pid, start) in
             enumerate(entries, 1)]  # fmt: skip
    executor.job_file(root, "demo", PROCESSES_SUFFIX).write_text("".join(f"{x}\n" for x in lines))


def wait_for(check: Callable[[], bool], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def test_a_second_claim_of_the_job_and_root_is_refused_until_the_first_ends(
    tmp_path: Path,
) -> None:
    """Other jobs and other roots are not held up; the lock goes with the run's shutdown."""
    root, other = (tmp_path / "a").as_uri(), (tmp_path / "b").as_uri()
    first, second = LocalExecutor(tmp_path / "logs"), LocalExecutor(tmp_path / "logs")
    assert first.claim("demo", root) == []
    with pytest.raises(RunInProgressError, match=rf"job demo is already running to {root}: .*"
                       rf"pid {os.getpid()} \(started 20"):  # fmt: skip
        second.claim("demo", root)
    second.claim("demo", other)
    second.claim("other", root)
    first.shutdown()
    second.claim("demo", root)
    second.shutdown()


def test_a_live_process_of_a_killed_run_is_stopped_and_a_reused_pid_is_not(
    tmp_path: Path, groups: Groups
) -> None:
    """A record whose pid now belongs to another process (its start time differs) is left be."""
    root = (tmp_path / "a").as_uri()
    executor = LocalExecutor(tmp_path / "logs")
    left, stranger = session(groups, "sleep", "60"), session(groups, "sleep", "60")
    stranger_start = process_start_time(stranger.pid)
    assert stranger_start is not None
    record(executor, root, [(left.pid, process_start_time(left.pid)),
                                 (stranger.pid, stranger_start - 1)])  # fmt: skip
    assert executor.claim("demo", root) == ["fit-a1"]
    assert left.wait(timeout=10) == -signal.SIGTERM
    assert stranger.poll() is None
    assert executor.job_file(root, "demo", PROCESSES_SUFFIX).read_text() == ""
    executor.shutdown()
    assert not executor.job_file(root, "demo", PROCESSES_SUFFIX).exists()


def test_a_left_process_that_ignores_sigterm_is_killed_after_the_grace(
    tmp_path: Path, groups: Groups, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(leftovers, "STOP_GRACE_SECONDS", 1.0)
    root = (tmp_path / "a").as_uri()
    executor = LocalExecutor(tmp_path / "logs")
    stubborn = session(groups, sys.executable, "-c", IGNORES_SIGTERM)
    assert stubborn.stdout is not None and stubborn.stdout.readline()  # its handler is set
    record(executor, root, [(stubborn.pid, process_start_time(stubborn.pid))])
    assert executor.claim("demo", root) == ["fit-a1"]
    assert stubborn.wait(timeout=10) == -signal.SIGKILL
    executor.shutdown()


#: A `kompaktor run` of job demo as far as its lock goes: claims it with the logs folder and root
#: its arguments name, says so, and waits to be killed.
HOLDS_DEMO = (
    "import sys, time; from pathlib import Path; "
    "from kompaktor.executors.local import LocalExecutor; "
    "LocalExecutor(Path(sys.argv[1])).claim('demo', sys.argv[2]); print(flush=True); "
    "time.sleep(60)"
)


def holding_run(groups: Groups, logs: Path, root: str) -> subprocess.Popen[bytes]:
    """A process that holds job demo's lock for `root`, logging to `logs`, once it returns."""
    holder = session(groups, sys.executable, "-c", HOLDS_DEMO, str(logs), root)
    assert holder.stdout is not None and holder.stdout.readline(), "the holder did not claim"
    return holder


def test_a_run_with_other_logs_is_refused_while_another_process_holds_the_job(
    tmp_path: Path, groups: Groups
) -> None:
    """The lock is the root's: a run logging elsewhere is refused while the holder lives, and
    takes the job at once when it dies (the OS lets go of the lock, even after SIGKILL)."""
    root = (tmp_path / "a").as_uri()
    holder = holding_run(groups, tmp_path / "logs", root)
    other = LocalExecutor(tmp_path / "other-logs")
    lock = tmp_path / "a" / "jobs" / "demo" / "run.lock"
    with pytest.raises(RunInProgressError, match=rf"already running to {root}: `kompaktor run` "
                       rf"pid {holder.pid} \(started 20.*\) on .* holds {lock}"):  # fmt: skip
        other.claim("demo", root)
    holder.kill()
    holder.wait(timeout=10)
    assert other.claim("demo", root) == []
    other.shutdown()


def test_a_killed_runs_stages_are_stopped_whatever_logs_the_next_run_has(
    tmp_path: Path, groups: Groups
) -> None:
    """The lock names the processes file its holder kept, so the next run on this machine stops
    the stages a killed run left though it logs to another folder."""
    root = (tmp_path / "a").as_uri()
    killed = holding_run(groups, tmp_path / "logs", root)
    stage = session(groups, "sleep", "60")
    record(LocalExecutor(tmp_path / "logs"), root, [(stage.pid, process_start_time(stage.pid))])
    killed.kill()
    killed.wait(timeout=10)
    other = LocalExecutor(tmp_path / "other-logs")
    assert other.claim("demo", root) == ["fit-a1"]
    assert stage.wait(timeout=10) == -signal.SIGTERM
    other.shutdown()


# Jobs of `kompaktor run` that train the breast-cancer example's MLP.


def job_file(folder: Path, name: str, epochs: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(EXAMPLE, folder / "model.pt2")
    path = folder / "job.yaml"
    path.write_text(JOB.format(name=name, epochs=epochs))
    return path


def job_files(job: Path) -> tuple[Path, Path, str]:
    """The run lock and processes file `kompaktor run job` uses by default, and its root."""
    loaded = load_job_file(job)
    name, root = loaded.metadata.name, localize(loaded, job.parent, None).artifacts_uri
    executor = LocalExecutor(job.parent / ".kompaktor" / name)
    path = local_path(root)
    assert path is not None
    lock = path / RUN_LOCK_KEY.format(job=name)
    return lock, executor.job_file(root, name, PROCESSES_SUFFIX), root


def start_run(job: Path, groups: Groups) -> subprocess.Popen[str]:
    popen = subprocess.Popen(
        [sys.executable, "-m", "kompaktor.cli", "run", str(job), "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # so the fixture can clean up after a failed test
    )
    groups.append((popen.pid, process_start_time(popen.pid)))
    return popen


def started_stage(
    processes: Path, run: subprocess.Popen[str], other_than: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The first stage process `run` recorded (other than an earlier run's), once it has."""

    def records() -> list[dict[str, Any]]:
        assert run.poll() is None, run.communicate()
        with contextlib.suppress(FileNotFoundError, ValueError):  # not yet, or half written
            found = [json.loads(line) for line in processes.read_text().splitlines()]
            return [record for record in found if record != other_than]
        return []

    wait_for(lambda: bool(records()), 120, "the run to start its stage")
    return records()[0]


def alive(stage: dict[str, Any]) -> bool:
    """The recorded process runs still (a zombie does not)."""
    start: int = stage["start"]
    return process_start_time(stage["pid"]) == start


def test_the_command_refuses_a_second_run_with_the_usage_code(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Refused, as a job that does not validate is: nothing of it ran. The run holding the job
    logs to another folder (the lock was in the logs folder, so it held off only runs that
    logged to the same one)."""
    job = job_file(tmp_path, "twice", epochs=1)
    lock, _, root = job_files(job)
    holder = LocalExecutor(tmp_path / "elsewhere")
    holder.claim("twice", root)
    try:
        assert main(["run", str(job), "--json"]) == EXIT_USAGE
    finally:
        holder.shutdown()
    message = json.loads(capsys.readouterr().out)["message"]
    assert f"job twice is already running to {root}" in message and str(lock) in message
    assert [p for p in (tmp_path / "artifacts").rglob("*") if p.is_file()] == [lock]


@pytest.mark.slow
def test_a_second_run_of_a_running_job_is_refused_naming_the_first(
    tmp_path: Path, groups: Groups
) -> None:
    job = job_file(tmp_path, "twice", epochs=100_000)
    lock, processes, root = job_files(job)
    first = start_run(job, groups)
    stage = started_stage(processes, first)

    second = start_run(job, groups)
    out, err = second.communicate(timeout=60)  # refused at once, not after the first run
    assert second.returncode == 2, err
    message = json.loads(out)["message"]
    assert f"job twice is already running to {root}" in message
    assert f"pid {first.pid} (started 20" in message and str(lock) in message
    assert "wait for it to finish, or stop it" in err
    assert first.poll() is None and alive(stage)  # the first run goes on, untouched

    first.send_signal(signal.SIGTERM)
    assert first.wait(timeout=60) == 130, first.communicate()
    assert not alive(stage)


@pytest.mark.slow
def test_a_killed_runs_stage_is_stopped_when_the_job_is_run_again(
    tmp_path: Path, groups: Groups
) -> None:
    """The killed run's stage is gone before the resumed run starts the same run again. (Were
    it not stopped, it would still run then: its start-up, torch and the dataset, and 100
    epochs take longer than the second run needs to start its stage.)"""
    job = job_file(tmp_path, "orphan", epochs=100)
    _, processes, _ = job_files(job)
    killed = start_run(job, groups)
    stage = started_stage(processes, killed)
    killed.kill()  # the run alone, as the OOM killer or a power cut would
    killed.wait(timeout=30)
    assert alive(stage), "the stage should live on after its run was killed"

    again = start_run(job, groups)
    started_stage(processes, again, other_than=stage)
    assert not alive(stage), "the killed run's stage should be gone before the resumed one starts"
    out, err = again.communicate(timeout=300)
    assert again.returncode == 0, err
    assert f"stopped 1 stage process left by an earlier run that was killed ({stage['run']})" in err
    summary = json.loads(out)
    assert summary["phase"] == "Succeeded"
    assert [(s["phase"], s["attempts"], s.get("interrupted")) for s in summary["stages"]] == [
        ("Succeeded", 2, 1)
    ]
    assert not processes.exists()  # the run stopped everything it started
