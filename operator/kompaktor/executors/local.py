"""Runs each stage as a local subprocess of the same `kompaktor stage run` command a pod runs.

`claim` takes the job's run lock in its artifact root (`run_lock`: one `kompaktor run` of a job
to a root at a time, whatever its `--logs` and whichever machine) and stops the stage processes
that a run killed outright left going on this machine (`leftovers`).
"""

from __future__ import annotations

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
from kompaktor.executors.leftovers import STOP_GRACE_SECONDS, process_start_time, stop_left
from kompaktor.executors.run_lock import (
    HEARTBEAT_SECONDS,
    LEASE_EXPIRY_SECONDS,
    RunLock,
    left_by,
    take_run_lock,
)
from kompaktor.plan import Observation, RunFailed, RunRequest, RunStarted, RunSucceeded

POLL_INTERVAL = 0.1
#: In each artifact root's logs folder: the root's URI, which the folder's name only abbreviates.
ROOT_FILE = "ARTIFACTS"
#: Beside it: the lock the root's runs hold exclusively while they time a model and shared while
#: they train or evaluate (KOMPAKTOR_TIMING_LOCK, kompaktor.timing_lock), so a parallel HPO
#: trial times alone.
TIMING_LOCK_FILE = "timing.lock"
#: Beside it, per job (`<job><suffix>`): the stage processes a `kompaktor run` of the job started
#: on this machine, one JSON line each: pid, start time, run id.
PROCESSES_SUFFIX = ".processes"
_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


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

    def __init__(
        self,
        logs_dir: Path,
        *,
        threads_per_run: int | None = None,
        heartbeat_seconds: float = HEARTBEAT_SECONDS,
        lease_expiry_seconds: float = LEASE_EXPIRY_SECONDS,
    ) -> None:
        self.logs_dir = logs_dir
        self.threads_per_run = threads_per_run
        self.heartbeat_seconds = heartbeat_seconds
        self.lease_expiry_seconds = lease_expiry_seconds
        self._running: dict[str, _Process] = {}
        self._finished: set[str] = set()
        self._events: list[Observation] = []
        self._claims: dict[Path, RunLock] = {}  # processes file -> the run lock held for it
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
        """The job's processes file in the root's logs folder."""
        return self.logs_for(artifacts_uri) / f"{_SAFE.sub('_', job)}{suffix}"

    def claim(self, job: str, artifacts_uri: str) -> list[str]:
        """Hold the job's run lock in the root until `shutdown` (RunInProgressError naming the
        run that holds it), then stop the stage processes a killed run of the job left on this
        machine, in this logs folder and in the one the lock's last holder used; their run ids."""
        processes = self.job_file(artifacts_uri, job, PROCESSES_SUFFIX)
        lock = take_run_lock(
            job,
            artifacts_uri,
            {"processes": str(processes)},
            heartbeat=self.heartbeat_seconds,
            expiry=self.lease_expiry_seconds,
        )
        try:
            left = [processes, *left_by(lock.previous, processes)]
            stopped = [run_id for path in left for run_id in stop_left(path)]
            processes.write_text("")
        except BaseException:
            lock.release()
            raise
        self._claims[processes] = lock
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
        """What happened to the runs; RunLeaseLostError once this run's lease is another's."""
        deadline = time.monotonic() + timeout
        while True:
            for lock in self._claims.values():
                lock.check()
            self._reap()
            if self._events or time.monotonic() >= deadline:
                events, self._events = self._events, []
                return events
            time.sleep(min(POLL_INTERVAL, max(deadline - time.monotonic(), 0.0)))

    def shutdown(self) -> None:
        """Stop the running stages, then let go of the run locks: nothing is left to stop."""
        for run_id in list(self._running):
            self.cancel(run_id)
        for processes, lock in self._claims.items():
            processes.unlink(missing_ok=True)
            lock.release()
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
