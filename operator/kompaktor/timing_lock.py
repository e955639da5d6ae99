"""Latency timing alone on a shared machine: a timing excludes its siblings' timings and pauses
their training and evaluation until it ends.

`kompaktor run` names one lock file per artifact root (`KOMPAKTOR_TIMING_LOCK`) for every stage
process. Heavy work (`working`) holds it shared and, every `YIELD_SECONDS`, lets go of it, passes
a turnstile (a file beside it, exclusive for an instant) and takes it shared again. A timing
(`timing_lock`) takes the turnstile exclusively, then the lock exclusively: work in flight stops
at its next pass, no work starts again until the timing ends, and a stream of workers cannot
starve it (writer preference). With no lock named nothing is opened or locked.

A stage process (`kompaktor stage run`) works for its whole run, so a timing also waits for the
stretches with no step to pause at (loading, exporting, saving): they end first. A process never
waits for the turnstile or the exclusive lock while it holds the lock shared: a timing first lets
go of its own process's shared hold and takes it again when it ends, and work nested inside a
timing, or inside other work, reuses what the process already holds. flock locks belong to open
files, so a second open of the same file in one process would otherwise wait on itself. The state
is per process: stages train, evaluate and time on one thread.
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from kompaktor.errors import KompaktorError

#: The lock file runs sharing a machine hold while they time a model, and hold shared while they
#: train or evaluate; `kompaktor run` names one per artifact root (executors/local.py).
TIMING_LOCK_ENV = "KOMPAKTOR_TIMING_LOCK"
#: Beside the lock: the file a timing holds first, so that no work starts while it waits.
TURNSTILE_SUFFIX = ".turnstile"
#: Most seconds of work between two passes of the turnstile: how long a timing waits at most for
#: a sibling's work in flight (a pass costs four system calls: negligible at this interval).
YIELD_SECONDS = 0.05

#: What work calls between two steps (a batch): pauses there while a sibling times a model.
Checkpoint = Callable[[], None]


@dataclass
class _Hold:
    """This process's shared hold on the lock while it works, however deeply nested."""

    lock_fd: int
    turnstile_fd: int
    depth: int = 1
    shared: bool = False
    #: When the next checkpoint passes the turnstile (time.monotonic).
    due: float = 0.0

    def rejoin(self) -> None:
        """Let a waiting timing go first: let go of the lock, pass the turnstile, take the lock
        shared again. Counts the seconds this took as paused."""
        global _paused
        started = time.monotonic()
        self.release()
        fcntl.flock(self.turnstile_fd, fcntl.LOCK_EX)
        fcntl.flock(self.turnstile_fd, fcntl.LOCK_UN)
        fcntl.flock(self.lock_fd, fcntl.LOCK_SH)
        self.shared = True
        now = time.monotonic()
        _paused += now - started
        self.due = now + YIELD_SECONDS

    def release(self) -> None:
        if self.shared:
            fcntl.flock(self.lock_fd, fcntl.LOCK_UN)
            self.shared = False


_hold: _Hold | None = None
#: How many timings this process is inside (work inside one checks nothing).
_timing = 0
#: Seconds this process's work spent passing the turnstile and retaking the lock.
_paused = 0.0


def paused_seconds() -> float:
    """Seconds this process's work has spent paused for sibling timings (0 with no lock named)."""
    return _paused


def _lock_path() -> Path | None:
    value = os.environ.get(TIMING_LOCK_ENV)
    return Path(value) if value else None


def _open_pair(lock: Path) -> tuple[int, int]:
    """File descriptors of the lock and its turnstile, created if missing; KompaktorError naming
    the variable when they cannot be opened."""
    fds: list[int] = []
    try:
        for path in (lock, lock.with_name(lock.name + TURNSTILE_SUFFIX)):
            fds.append(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o666))
    except OSError as error:
        for fd in fds:
            os.close(fd)
        raise KompaktorError(
            f"{TIMING_LOCK_ENV}={lock}: cannot open the timing lock ({error.strerror}): "
            "point it at a file in a writable folder, or unset it to time and train without a lock"
        ) from None
    return fds[0], fds[1]


def _nothing() -> None:
    """The checkpoint when no lock is named."""


def _checkpoint() -> None:
    """Pass the turnstile when due (or when a timing in this process let go of the lock)."""
    hold = _hold
    if hold is not None and not _timing and (not hold.shared or time.monotonic() >= hold.due):
        hold.rejoin()


@contextmanager
def working() -> Iterator[Checkpoint]:
    """Hold the lock shared while the caller trains or evaluates; yields the checkpoint to call
    between steps, where the work pauses while a sibling times a model. Without a lock named
    the checkpoint does nothing and no file is touched."""
    global _hold
    lock = _lock_path()
    if lock is None:
        yield _nothing
        return
    if _hold is None:
        _hold = _Hold(*_open_pair(lock))
    else:
        _hold.depth += 1
    hold = _hold
    try:
        _checkpoint()
        yield _checkpoint
    finally:
        hold.depth -= 1
        if not hold.depth:
            _hold = None
            os.close(hold.lock_fd)  # closing lets go of the lock
            os.close(hold.turnstile_fd)


@contextmanager
def timing_lock() -> Iterator[float | None]:
    """Hold the lock exclusively while the caller times a model, so processes sharing it
    (`kompaktor run`'s parallel trials) neither time nor train meanwhile. Yields the seconds
    waited for it; None when no lock is named (timing starts at once)."""
    global _timing
    lock = _lock_path()
    if lock is None:
        yield None
        return
    if _timing:  # already timing in this process: the lock is held
        _timing += 1
        try:
            yield 0.0
        finally:
            _timing -= 1
        return
    asked = time.monotonic()
    lock_fd, turnstile_fd = _open_pair(lock)
    try:
        if _hold is not None:
            _hold.release()  # never wait for the lock while holding it shared
        fcntl.flock(turnstile_fd, fcntl.LOCK_EX)
        fcntl.flock(lock_fd, fcntl.LOCK_EX)
        _timing = 1
        try:
            yield time.monotonic() - asked
        finally:
            _timing = 0
    finally:
        os.close(lock_fd)  # closing lets go of the lock, then of the turnstile
        os.close(turnstile_fd)
    if _hold is not None:  # the work around the timing (saving, the next load) holds it again
        _hold.rejoin()
