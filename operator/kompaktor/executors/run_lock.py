"""The run lock: one `kompaktor run` of a job to an artifact root at a time, whatever its
`--logs` and whichever machine it runs on (two runs would share the status file and start each
stage run twice). The lock lives in the root itself, beside the job's status file.

In a file root the lock is a file held with flock, which the OS lets go of when its run dies. S3
has no locks, so there the lock is a lease object: created only where there is none
(If-None-Match), renewed every HEARTBEAT_SECONDS only while it is unchanged (If-Match on its
ETag), so a run whose lease another took notices at its next renewal and stops. Another run
takes a lease over once it has gone LEASE_EXPIRY_SECONDS without renewal (its machine died), or
at once when its holder was a process of this machine that has ended.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import socket
import sys
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

from kompaktor.artifacts import ArtifactError, FileStore, S3Store, open_store
from kompaktor.artifacts.s3 import PreconditionFailedError, Versioned
from kompaktor.errors import KompaktorError
from kompaktor.executors.leftovers import process_start_time

#: In the artifact root, beside the job's status.json: the lock a `kompaktor run` of the job holds
#: for its whole run (a file held with flock, or an S3 lease object), which names its holder.
RUN_LOCK_KEY = "jobs/{job}/run.lock"
#: How often a run renews its lease on an S3 root ...
HEARTBEAT_SECONDS = 15.0
#: ... and how long a lease goes without renewal before another run may take it over.
LEASE_EXPIRY_SECONDS = 60.0
#: How many times taking a lease is tried when another run wrote it in between.
LEASE_TRIES = 5


class RunInProgressError(KompaktorError):
    """Another `kompaktor run` of the job to the same artifact root is going."""


class RunLeaseLostError(KompaktorError):
    """Another `kompaktor run` took this run's lease on an S3 root, or it could not be renewed
    for as long as others wait before they take it over."""


class RunLock(Protocol):
    """A job's run lock as its run holds it."""

    #: The record of the run that held the lock before, if any (`_holder`).
    previous: dict[str, object]

    def check(self) -> None:
        """RunLeaseLostError once the lock is no longer this run's."""

    def release(self) -> None:
        """Let go of the lock, if it is still this run's."""


def take_run_lock(
    job: str,
    artifacts_uri: str,
    extra: dict[str, object],
    *,
    heartbeat: float = HEARTBEAT_SECONDS,
    expiry: float = LEASE_EXPIRY_SECONDS,
) -> RunLock:
    """The job's run lock in its artifact root, held, its record naming this run (and `extra`);
    RunInProgressError naming the run that holds it."""
    store = open_store(artifacts_uri)
    key = RUN_LOCK_KEY.format(job=job)
    if isinstance(store, S3Store):
        return _S3Lease.take(job, artifacts_uri, store, key, _holder(extra), heartbeat, expiry)
    if isinstance(store, FileStore):
        path = store.directory.joinpath(*key.split("/"))
        return _FileLock.take(job, artifacts_uri, path, _holder(extra))
    raise KompaktorError(f"job {job}: no run lock for the artifact root {artifacts_uri}")


def _holder(extra: dict[str, object]) -> dict[str, object]:
    """The record that names this process as a lock's holder: pid, host, start (the process's,
    which tells it from a later one given its pid) and when it took the lock."""
    pid = os.getpid()
    return {
        "pid": pid,
        "host": socket.gethostname(),
        "machine": _machine(),
        "start": process_start_time(pid),
        "started": _stamp(),
        **extra,
    }


def _stamp() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _machine() -> str | None:
    """What tells this machine's pids from another's with the same host name (a container that
    shares it): the boot and the pid namespace; None where there is no /proc to ask."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        return f"{boot} {Path('/proc/self/ns/pid').readlink()}"
    except OSError:
        return None


def _ended_here(holder: dict[str, object]) -> bool:
    """Whether the holder was a process of this machine that has ended (or whose pid another
    process has since)."""
    pid, start, machine = holder.get("pid"), holder.get("start"), _machine()
    return (
        machine is not None
        and holder.get("machine") == machine
        and holder.get("host") == socket.gethostname()
        and isinstance(pid, int)
        and start is not None
        and process_start_time(pid) != start
    )


def left_by(previous: dict[str, object], own: Path) -> list[Path]:
    """The processes file of the lock's last holder when it ran on this machine with another
    logs folder than `own`, so a killed run's stages are stopped whatever `--logs` the next run
    has; none otherwise."""
    where = previous.get("processes")
    same = previous.get("machine") == _machine() and previous.get("host") == socket.gethostname()
    return [Path(where)] if same and isinstance(where, str) and Path(where) != own else []


def _parse(data: bytes | str) -> dict[str, object]:
    """A lock's record; {} for none, or one cut short or not ours."""
    with contextlib.suppress(ValueError):
        record = json.loads(data or "{}")
        if isinstance(record, dict):
            return record
    return {}


def _refusal(job: str, artifacts_uri: str, holder: dict[str, object], lock: str) -> str:
    """Why a second run of the job to the root is refused, naming the run that holds `lock`."""
    pid, host = holder.get("pid"), holder.get("host")
    who = f"pid {pid} (started {holder.get('started')}) on {host}" if pid else "(starting up)"
    kill = f"kill {pid} on {host}" if pid else "kill its pid"
    return (
        f"job {job} is already running to {artifacts_uri.rstrip('/')}: `kompaktor run` {who} "
        f"holds {lock}; wait for it to finish, or stop it (Ctrl-C in its terminal, or {kill}) "
        f"and run this command again to resume where it stopped"
    )


@dataclass
class _FileLock:
    """The run lock of a file root: a file there held with flock, which the OS lets go of when
    its process dies, so a lock is never left behind; it names its holder for a refused run."""

    fd: int
    previous: dict[str, object]

    @classmethod
    def take(cls, job: str, artifacts_uri: str, path: Path, holder: dict[str, object]) -> _FileLock:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)  # not inherited by stage processes
        except OSError as error:
            raise KompaktorError(
                f"job {job}: cannot create its run lock {path} in the artifact root: "
                f"{error.strerror}; choose a writable root with --artifacts"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise RunInProgressError(
                _refusal(job, artifacts_uri, _file_holder(path), str(path))
            ) from None
        try:
            previous = _parse(os.pread(fd, 1 << 16, 0))
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(holder).encode(), 0)
        except BaseException:
            os.close(fd)
            raise
        return cls(fd, previous)

    def check(self) -> None:
        """Always held: the OS takes a flock from no live process."""

    def release(self) -> None:
        os.close(self.fd)  # closing lets go of the lock


def _file_holder(path: Path) -> dict[str, object]:
    """The record of the run that holds the lock file, which writes it just after it takes it."""
    holder: dict[str, object] = {}
    for _ in range(20):
        with contextlib.suppress(OSError):
            holder = _parse(path.read_text())
        if holder:
            break
        time.sleep(0.05)
    return holder


class _S3Lease:
    """The run lock of an S3 root: a lease object, renewed from a thread of its own so that a
    busy or stalled run loop does not let it expire. Each write is conditional on the ETag
    this run last saw, so of two runs only one can hold it, and the one that lost it finds out
    at its next renewal (`check` then raises)."""

    def __init__(
        self,
        job: str,
        store: S3Store,
        key: str,
        record: dict[str, object],
        etag: str,
        previous: dict[str, object],
        heartbeat: float,
        expiry: float,
    ) -> None:
        self.job, self.store, self.key, self.record = job, store, key, record
        self.etag, self.previous = etag, previous
        self.heartbeat, self.expiry = heartbeat, expiry
        self._lost: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"lease {key}", daemon=True)
        self._thread.start()

    @classmethod
    def take(
        cls,
        job: str,
        artifacts_uri: str,
        store: S3Store,
        key: str,
        holder: dict[str, object],
        heartbeat: float,
        expiry: float,
    ) -> _S3Lease:
        """Create the lease, or take over one whose holder is gone; RunInProgressError naming
        a holder that is not. A take that loses a race to another run reads the lease again."""
        record = {**holder, "heartbeatSeconds": heartbeat, "expirySeconds": expiry}
        for _ in range(LEASE_TRIES):
            found = store.read_versioned(key)
            previous = {} if found is None else _parse(found.data)
            if found is not None and not _gone(found, previous, expiry):
                refusal = _lease_refusal(
                    job, artifacts_uri, store.uri(key), found, previous, expiry
                )
                raise RunInProgressError(refusal)
            etag = None if found is None else found.etag
            with contextlib.suppress(PreconditionFailedError):
                new = store.put_if(key, _beat_record(record), etag=etag)
                return cls(job, store, key, record, new, previous, heartbeat, expiry)
        raise RunInProgressError(
            f"job {job}: its lease {store.uri(key)} changed {LEASE_TRIES} times while this run "
            "tried to take it: other runs of it are starting; run this command again"
        )

    def renew(self) -> None:
        """Write a new heartbeat if the lease is still this run's (PreconditionFailedError if
        another run took it or it was removed)."""
        self.etag = self.store.put_if(self.key, _beat_record(self.record), etag=self.etag)

    def _beat(self) -> None:
        renewed = time.monotonic()
        while not self._stop.wait(self.heartbeat):
            tried = time.monotonic()
            try:
                self.renew()
                renewed = tried
            except PreconditionFailedError:
                self._lost = self._taken()
                return
            except ArtifactError as error:
                if time.monotonic() - renewed >= self.expiry:
                    self._lost = (
                        f"could not be renewed for {self.expiry:.0f}s ({error}), after which "
                        "another run may take it over"
                    )
                    return

    def _taken(self) -> str:
        """How the lease was lost, naming the run that holds it now (when it can be read)."""
        with contextlib.suppress(ArtifactError):
            found = self.store.read_versioned(self.key)
            if found is None:
                return "was removed by someone else"
            holder = _parse(found.data)
            return (
                f"was taken over by `kompaktor run` pid {holder.get('pid')} (started "
                f"{holder.get('started')}) on {holder.get('host')}"
            )
        return "was taken over by another run"

    def check(self) -> None:
        if self._lost is not None:
            raise RunLeaseLostError(
                f"job {self.job}: this run's lease {self.store.uri(self.key)} {self._lost}; so "
                "that two runs never run its stages at once, this run stops its stages and "
                "writes no more status; run this command again to resume once the other run "
                "has ended"
            )

    def release(self) -> None:
        """Stop renewing, then delete the lease unless another run holds it now."""
        self._stop.set()
        self._thread.join()
        if self._lost is not None:
            return
        try:
            self.store.delete_if(self.key, etag=self.etag)
        except PreconditionFailedError:
            pass
        except ArtifactError as error:
            print(
                f"warning: job {self.job}: its lease {self.store.uri(self.key)} was not removed "
                f"({error}); the next run of it takes it over at once on this machine, or "
                f"after {self.expiry:.0f}s on another",
                file=sys.stderr,
                flush=True,
            )


def _beat_record(record: dict[str, object]) -> bytes:
    return json.dumps({**record, "heartbeat": _stamp()}).encode()


def _expiry(holder: dict[str, object], default: float) -> float:
    """How long the lease lasts unrenewed: as its holder wrote it, else `default` (a record
    that is not readable)."""
    recorded = holder.get("expirySeconds")
    return float(recorded) if isinstance(recorded, int | float) else default


def _gone(found: Versioned, holder: dict[str, object], expiry: float) -> bool:
    """Whether the lease's holder is gone: not renewed for its expiry, or a process of this
    machine that has ended."""
    return found.age_seconds >= _expiry(holder, expiry) or _ended_here(holder)


def _lease_refusal(
    job: str,
    artifacts_uri: str,
    uri: str,
    found: Versioned,
    holder: dict[str, object],
    expiry: float,
) -> str:
    """`_refusal`, with the lease's last heartbeat and when it expires if no more come."""
    left = max(math.ceil(_expiry(holder, expiry) - found.age_seconds), 0)
    lock = f"its lease {uri} (last renewed {holder.get('heartbeat')})"
    return (
        f"{_refusal(job, artifacts_uri, holder, lock)}; if that run is gone without a word (its "
        f"machine died), the lease expires in {left}s and this command then takes over"
    )
