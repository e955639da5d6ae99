"""The stage processes a `kompaktor run` killed outright (SIGKILL, power loss) left going on this
machine: they run in sessions of their own, so that Ctrl-C reaches only `kompaktor run`, and
would otherwise go on writing the outputs of the runs the resumed run starts again. Each run
records its stage processes (pid and start time, which tells a process from a later one given
the same pid), and the next run of the job stops those still running.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from pathlib import Path

#: How long a stopped stage gets to clean up after SIGTERM (its upload, its temporary folder).
STOP_GRACE_SECONDS = 5.0
#: How often a stopped process is looked at again.
POLL_SECONDS = 0.1


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


def left_behind(processes: Path) -> dict[int, tuple[int, str]]:
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


def stop_left(processes: Path) -> list[str]:
    """Stop each recorded stage process that still runs, its process group as the executor stops
    its own (waiting by polling: they are not our children); their run ids."""
    left = left_behind(processes)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        deadline = time.monotonic() + STOP_GRACE_SECONDS
        for pid in [pid for pid, (start, _) in left.items() if process_start_time(pid) == start]:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, sig)
        while time.monotonic() < deadline and any(
            process_start_time(pid) == start for pid, (start, _) in left.items()
        ):
            time.sleep(POLL_SECONDS)
    return [run_id for _, run_id in left.values()]
