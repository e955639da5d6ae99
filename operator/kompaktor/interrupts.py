"""SIGTERM and SIGHUP as Ctrl-C, for `kompaktor run` and for each stage process.

`timeout`, `kill`, a closed terminal, a pod deleted or evicted: each should stop the work the
way Ctrl-C does, through its cleanup (stages stopped and the status left resumable; a multipart
upload aborted and the temporary folder removed), not where it stands. Only the first signal
raises, so a second one cannot cut that cleanup short (SIGKILL is there for a stuck one).
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator


@contextlib.contextmanager
def termination_interrupts() -> Iterator[None]:
    """Within the block, the first SIGTERM or SIGHUP raises KeyboardInterrupt (its name as the
    message). Signal handlers belong to the main thread: elsewhere this changes nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    raised = False

    def interrupt(signum: int, frame: object) -> None:
        nonlocal raised
        if not raised:
            raised = True
            raise KeyboardInterrupt(signal.Signals(signum).name)

    caught = (signal.SIGTERM, signal.SIGHUP)
    previous = [signal.signal(signum, interrupt) for signum in caught]
    try:
        yield
    finally:
        for signum, handler in zip(caught, previous, strict=True):
            signal.signal(signum, handler)
