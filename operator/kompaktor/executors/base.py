"""What every executor offers the engine: make a run exist, stop one, report outcomes."""

from __future__ import annotations

from typing import Protocol

from kompaktor.plan import Observation, RunRequest


class Executor(Protocol):
    """Idempotent by run id: ensuring a run that exists (or finished) does nothing."""

    def ensure(self, request: RunRequest) -> None: ...

    def cancel(self, run_id: str) -> None: ...

    def poll(self, timeout: float) -> list[Observation]:
        """Wait up to `timeout` seconds for runs to start or end; return what happened."""
        ...

    def shutdown(self) -> None: ...
