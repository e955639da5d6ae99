"""Runs each stage as a local subprocess of the same `kompaktor stage run` command a pod runs.

One `kompaktor run` of a job to an artifact root at a time: `claim` takes the job's lock in the
root's logs folder (two runs would share the status file and start each stage run twice), and
stops the stage processes that a run killed outright (SIGKILL, power loss) left going: they run
in sessions of their own, so that Ctrl-C reaches only `kompaktor run`, and would otherwise go on
writing the outputs of the runs the resumed run starts again.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import IO

from pydantic import ValidationError

from kompaktor.api.run import EXIT_INVALID, RESULT_FILE, RunFailure, RunRecord
from kompaktor.artifacts import open_store
from kompaktor.errors import KompaktorError
from kompaktor.plan import Observation, RunFailed, RunRequest, RunStarted, RunSucceeded

POLL_INTERVAL = 0.1
#: In each artifact root's logs folder: the root's URI, which the folder's name only abbreviates.
ROOT_FILE = "ARTIFACTS"
#: Beside it: the lock the root's runs hold exclusively while they time a model and shared while
#: they train or evaluate (KOMPAKTOR_TIMING_LOCK, kompaktor.timing_lock), so a parallel HPO
#: trial times alone.
TIMING_LOCK_FILE = "timing.lock"
#: Beside it, per job (`<job><suffix>`): the lock a `kompaktor run` of the job holds for its whole
#: run (the OS lets go of it when the process dies), which names its holder ...
RUN_LOCK_SUFFIX = ".run.lock"
#: ... and the stage processes the run started, one JSON line each: pid, start time, run id.
PROCESSES_SUFFIX = ".processes"
#: How long a stopped stage gets to clean up after SIGTERM (its upload, its temporary folder).
STOP_GRACE_SECONDS = 5.0
_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


class RunInProgressError(KompaktorError):
    """Another `kompaktor run` of the job to the same artifact root is going."""


@dataclass
class _Process:
    request: RunRequest
    popen: subprocess.Popen[bytes]
    message_path: Path
    log_path: Path
    log: IO[bytes]
    started: float


class LocalExecutor:
    """Subprocesses keyed by run id; `logs_dir` keeps every run's stderr after it ends, in a
    folder per artifact root. Run ids follow from the job alone, so runs of one job to two roots
    (`--artifacts A`, then or meanwhile `--artifacts B`) share ids: in one folder they appended
    to each other's logs and read each other's termination messages (a run in A could be
    reported with B's result)."""

    def __init__(self, logs_dir: Path, *, threads_per_run: int | None = None) -> None:
        self.logs_dir = logs_dir
        self.threads_per_run = threads_per_run
        self._running: dict[str, _Process] = {}
        self._finished: set[str] = set()
        self._events: list[Observation] = []
        self._claims: dict[Path, int] = {}  # processes file -> descriptor of its held run lock
        logs_dir.mkdir(parents=True, exist_ok=True)

    @property
    def running(self) -> list[RunRequest]:
        return [p.request for p in self._running.values()]

    def logs_for(self, artifacts_uri: str) -> Path:
        """The folder of the logs of runs whose outputs go under `artifacts_uri`: its last
        name and a digest of the whole URI, with the URI in ROOT_FILE for a reader."""
        root = artifacts_uri.rstrip("/")
        name = _SAFE.sub("_", root.rsplit("/", 1)[-1].rsplit(":", 1)[-1]) or "root"
        folder = self.logs_dir / f"{name}-{hashlib.sha256(root.encode()).hexdigest()[:8]}"
        folder.mkdir(parents=True, exist_ok=True)
        marker = folder / ROOT_FILE
        if not marker.exists():
            marker.write_text(root + "\n")
        return folder

    def job_file(self, artifacts_uri: str, job: str, suffix: str) -> Path:
        """The job's run lock or processes file in the root's logs folder."""
        return self.logs_for(artifacts_uri) / f"{_SAFE.sub('_', job)}{suffix}"

    def claim(self, job: str, artifacts_uri: str) -> list[str]:
        """Hold the job's run lock for the root until `shutdown` (RunInProgressError naming the run
        that holds it), then stop the stage processes a killed run of the job left; their run
        ids."""
        lock = self.job_file(artifacts_uri, job, RUN_LOCK_SUFFIX)
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)  # not inherited by stage processes
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise RunInProgressError(_refusal(job, artifacts_uri, lock)) from None
        try:
            stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps({"pid": os.getpid(), "started": stamp}).encode(), 0)
            processes = self.job_file(artifacts_uri, job, PROCESSES_SUFFIX)
            stopped = _stop_left(processes)
            processes.write_text("")
        except BaseException:
            os.close(fd)
            raise
        self._claims[processes] = fd
        return stopped

    def log_path(self, request: RunRequest) -> Path:
        """Where the run's output goes: beside the logs of its artifact root's other runs."""
        return self.logs_for(artifacts_root(request.output_uri)) / f"{request.run_id}.log"

    def ensure(self, request: RunRequest) -> None:
        if request.run_id in self._running or request.run_id in self._finished:
            return
        log_path = self.log_path(request)
        message_path = log_path.with_suffix(".termination")
        message_path.unlink(missing_ok=True)
        env = dict(
            os.environ,
            KOMPAKTOR_TERMINATION_LOG=str(message_path),
            KOMPAKTOR_TIMING_LOCK=str(log_path.parent / TIMING_LOCK_FILE),
        )
        if self.threads_per_run:
            env["OMP_NUM_THREADS"] = str(self.threads_per_run)
        # Appended: a run resumed after an interrupt gets the same id, and the interrupted
        # attempt's log is what says how far it got.
        log = log_path.open("ab")
        if log.tell():
            stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            log.write(f"\n--- kompaktor: started again at {stamp}\n".encode())
            log.flush()
        command = [sys.executable, "-m", "kompaktor.cli", *request.command()[1:]]
        popen = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
        self._running[request.run_id] = _Process(
            request, popen, message_path, log_path, log, time.monotonic()
        )
        processes = self.job_file(artifacts_root(request.output_uri), request.job, PROCESSES_SUFFIX)
        with processes.open("a") as file:  # read by the next run if this one is killed
            start = process_start_time(popen.pid)
            file.write(json.dumps({"pid": popen.pid, "start": start, "run": request.run_id}) + "\n")
        self._events.append(RunStarted(request.run_id, socket.gethostname(), "local"))

    def cancel(self, run_id: str) -> None:
        process = self._running.pop(run_id, None)
        if process is None:
            return
        _stop(process.popen)
        process.log.close()
        self._finished.add(run_id)

    def poll(self, timeout: float) -> list[Observation]:
        deadline = time.monotonic() + timeout
        while True:
            self._reap()
            if self._events or time.monotonic() >= deadline:
                events, self._events = self._events, []
                return events
            time.sleep(min(POLL_INTERVAL, max(deadline - time.monotonic(), 0.0)))

    def shutdown(self) -> None:
        """Stop the running stages, then let go of the run locks: nothing is left to stop."""
        for run_id in list(self._running):
            self.cancel(run_id)
        for processes, fd in self._claims.items():
            processes.unlink(missing_ok=True)
            os.close(fd)  # closing lets go of the lock
        self._claims.clear()

    def _reap(self) -> None:
        for run_id, process in list(self._running.items()):
            limit = process.request.timeout_seconds
            ran = time.monotonic() - process.started
            if limit is not None and ran > limit:
                _stop(process.popen)
                self._close(run_id)
                self._events.append(
                    RunFailed(
                        run_id,
                        "DeadlineExceeded",
                        f"ran longer than {limit:.0f}s",
                        duration_seconds=ran,
                    )
                )
                continue
            code = process.popen.poll()
            if code is None:
                continue
            self._close(run_id)
            outcome = self._outcome(process, code)
            if isinstance(outcome, RunFailed):
                outcome = replace(outcome, duration_seconds=ran)
            self._events.append(outcome)

    def _close(self, run_id: str) -> None:
        process = self._running.pop(run_id)
        process.log.close()
        self._finished.add(run_id)

    def _outcome(self, process: _Process, code: int) -> Observation:
        run_id = process.request.run_id
        message = process.message_path.read_text() if process.message_path.exists() else ""
        if code == 0:
            try:
                return RunSucceeded(run_id, _record(message, process.request))
            except (KompaktorError, ValidationError, ValueError) as error:
                return RunFailed(run_id, "NoResult", f"finished but left no result: {error}")
        try:
            failure = RunFailure.model_validate_json(message)
            return RunFailed(run_id, failure.reason, failure.message, failure.retryable)
        except ValidationError:
            tail = _tail(process.log_path)
            return RunFailed(
                run_id, "StageCrashed", f"exit code {code}: {tail}", retryable=code != EXIT_INVALID
            )


def artifacts_root(output_uri: str) -> str:
    """The artifact root of a run's output URI, `<root>/runs/<name>` (plan.keys.output_uri)."""
    root, runs, _ = output_uri.rstrip("/").rpartition("/runs/")
    return root if runs else output_uri


def _record(message: str, request: RunRequest) -> RunRecord:
    """The summary from the termination message, or result.json when the summary was cut."""
    try:
        return RunRecord.model_validate_json(message)
    except ValidationError:
        full = open_store(request.output_uri).get_bytes(RESULT_FILE)
        return RunRecord.model_validate_json(full)


def _tail(path: Path, lines: int = 5) -> str:
    text = path.read_text(errors="replace").strip().splitlines() if path.exists() else []
    return " | ".join(text[-lines:]) or "no output"


def _stop(popen: subprocess.Popen[bytes]) -> None:
    """SIGTERM the run's process group, then SIGKILL if it does not go within the grace."""
    if popen.poll() is not None:
        return
    try:
        os.killpg(popen.pid, signal.SIGTERM)
        popen.wait(timeout=STOP_GRACE_SECONDS)
    except subprocess.TimeoutExpired:
        os.killpg(popen.pid, signal.SIGKILL)
        popen.wait()
    except ProcessLookupError:
        pass


def _refusal(job: str, artifacts_uri: str, lock: Path) -> str:
    """Why a second run of the job to the root is refused, naming the run that holds it."""
    holder: dict[str, object] = {}
    for _ in range(20):  # the holder writes its name just after it takes the lock
        with contextlib.suppress(OSError, ValueError):
            holder = json.loads(lock.read_text() or "{}")
        if holder:
            break
        time.sleep(0.05)
    pid = holder.get("pid")
    who = f"pid {pid} (started {holder.get('started')})" if pid else "(starting up)"
    return (
        f"job {job} is already running to {artifacts_uri.rstrip('/')}: `kompaktor run` {who} "
        f"holds {lock}; wait for it to finish, or stop it (Ctrl-C in its terminal, or "
        f"kill {pid or 'its pid'}) and run this command again to resume where it stopped"
    )


def process_start_time(pid: int) -> int | None:
    """When the process started (clock ticks after boot, /proc/<pid>/stat), which tells it from
    a later process given the same pid; None when it has ended (a zombie has) or there is no
    /proc to ask (not Linux: then nothing left behind is stopped)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rpartition(")")[2].split()  # after the command name, which may hold spaces
    return None if fields[0] in ("Z", "X") else int(fields[19])


def _left_behind(processes: Path) -> dict[int, tuple[int, str]]:
    """The recorded stage processes that still run: pid -> (start time, run id)."""
    try:
        lines = processes.read_text().splitlines()
    except FileNotFoundError:
        return {}
    left: dict[int, tuple[int, str]] = {}
    for line in lines:
        with contextlib.suppress(ValueError, KeyError, TypeError):
            record = json.loads(line)
            pid, start = int(record["pid"]), record["start"]
            if start is not None and process_start_time(pid) == start:
                left[pid] = (start, str(record["run"]))
    return left


def _stop_left(processes: Path) -> list[str]:
    """Stop each recorded stage process that still runs, its process group as `_stop` does
    (waiting by polling: they are not our children); their run ids."""
    left = _left_behind(processes)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        deadline = time.monotonic() + STOP_GRACE_SECONDS
        for pid in [pid for pid, (start, _) in left.items() if process_start_time(pid) == start]:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, sig)
        while time.monotonic() < deadline and any(
            process_start_time(pid) == start for pid, (start, _) in left.items()
        ):
            time.sleep(POLL_INTERVAL)
    return [run_id for _, run_id in left.values()]
