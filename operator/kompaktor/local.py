"""`kompaktor run job.yaml`: the engine driven by local processes, no cluster needed.

The same plan and stage command as in the cluster; only the executor differs. Status is
saved beside the artifacts after every step, so an interrupted run resumes where it stopped
(finished stages and HPO trials come back from the cache).
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from kompaktor.api.spec import OptimizationJob, OptimizationJobSpec, StageSpec
from kompaktor.api.status import OptimizationJobStatus
from kompaktor.artifacts import open_store
from kompaktor.engine import reconcile
from kompaktor.executors.local import LocalExecutor
from kompaktor.plan import CancelRun, EnsureRun, JobContext, Observation, Requeue
from kompaktor.plan.keys import file_uri, map_model_refs

STATUS_KEY = "jobs/{name}/status.json"
IDLE_WAKE_SECONDS = 1.0


def _absolute(uri: str, base: Path) -> str:
    """Relative paths in a job file are relative to the job file's folder."""
    if ":" in uri.split("/", 1)[0]:
        return uri
    path = Path(uri).expanduser()
    return (path if path.is_absolute() else (base / path).resolve()).as_uri()


def _absolute_model_files(stage: StageSpec, base: Path) -> StageSpec:
    """The stage with each model file its params name (a distill teacher's uri) made absolute
    against the job file's folder, as spec.model.uri is (the input probe digests them)."""

    def fill(path: str, ref: dict[str, Any]) -> dict[str, Any]:
        uri = file_uri(ref)
        return ref if uri is None else {**ref, "uri": _absolute(uri, base)}

    return stage.model_copy(update={"params": map_model_refs(stage.params, fill)})


def localize(job: OptimizationJob, job_dir: Path, artifacts: str | None) -> JobContext:
    """The job with every URI made absolute (stage params' model files too), its artifact
    root chosen, and its pools dropped: this machine is the one pool ("local"), so a benchmark
    on several pools runs once."""
    spec = job.spec
    model = spec.model.model_copy(update={"uri": _absolute(spec.model.uri, job_dir)})
    dataset = spec.dataset.model_copy(update={"uri": _absolute(spec.dataset.uri, job_dir)})
    stages = [
        _absolute_model_files(stage, job_dir).model_copy(update={"pool": None, "pools": None})
        for stage in spec.stages
    ]
    root = artifacts or spec.artifacts.uri or str(job_dir / "artifacts")
    resolved: OptimizationJobSpec = spec.model_copy(
        update={"model": model, "dataset": dataset, "stages": stages}
    )
    return JobContext(
        name=job.metadata.name,
        spec=resolved,
        artifacts_uri=_absolute(root, job_dir),
        default_pool="local",
        retry_base_seconds=2.0,
    )


@dataclass
class LocalRun:
    """One `kompaktor run`: owns the executor and the status file."""

    ctx: JobContext
    executor: LocalExecutor
    on_update: Callable[[OptimizationJobStatus, list[Any]], None] = lambda status, running: None

    @property
    def _status_key(self) -> str:
        return STATUS_KEY.format(name=self.ctx.name)

    def load_status(self) -> OptimizationJobStatus:
        """Earlier trials survive (the study is rebuilt from them); stages re-probe the cache."""
        store = open_store(self.ctx.artifacts_uri)
        if not store.exists(self._status_key):
            return OptimizationJobStatus()
        try:
            saved = OptimizationJobStatus.model_validate_json(store.get_bytes(self._status_key))
        except ValidationError:
            return OptimizationJobStatus()
        # A run reports what it spends: the finished trials it restores were paid for by the
        # run that made them (as a cached stage costs nothing), so they count 0 here.
        trials = [
            t.model_copy(update={"state": "Pending", "attempts": 0})
            if t.state == "Running"
            else t.model_copy(update={"cost_usd": 0.0, "energy_joules": 0.0})
            for t in saved.trials
        ]
        return OptimizationJobStatus(trials=trials)

    def save_status(self, status: OptimizationJobStatus) -> None:
        data = status.model_dump_json(by_alias=True, exclude_none=True, indent=1)
        open_store(self.ctx.artifacts_uri).put_bytes(self._status_key, data.encode())

    def run(self) -> OptimizationJobStatus:
        status = self.load_status()
        observations: list[Observation] = []
        try:
            while True:
                result = reconcile(self.ctx, status, observations, datetime.now(UTC))
                status = result.status
                self.save_status(status)
                wake = IDLE_WAKE_SECONDS
                for action in result.actions:
                    match action:
                        case EnsureRun():
                            self.executor.ensure(action.request)
                        case CancelRun():
                            self.executor.cancel(action.run_id)
                        case Requeue():
                            wake = min(wake, max(action.after_seconds, 0.05))
                self.on_update(status, self.executor.running)
                if status.phase in ("Succeeded", "Failed", "Cancelled", "Suspended"):
                    return status
                observations = self.executor.poll(wake)
        except KeyboardInterrupt:
            self.save_status(interrupted(status))
            raise
        finally:
            self.executor.shutdown()


def interrupted(status: OptimizationJobStatus) -> OptimizationJobStatus:
    """What an interrupted run leaves in its status file: nothing Running (nothing runs any
    more), the job Suspended with how to resume it."""
    stages = [
        s.model_copy(update={"phase": "Pending"}) if s.phase in ("Running", "Retrying") else s
        for s in status.stages
    ]
    trials = [
        t.model_copy(update={"state": "Pending"}) if t.state == "Running" else t
        for t in status.trials
    ]
    return status.model_copy(
        update={
            "phase": "Suspended",
            "stages": stages,
            "trials": trials,
            "message": "interrupted: run the same command to resume",
        }
    )


@contextlib.contextmanager
def termination_interrupts() -> Iterator[None]:
    """SIGTERM and SIGHUP (`timeout`, `kill`, a closed terminal) interrupt like Ctrl-C, so the
    run stops its stages (each in a session of its own, which the signal does not reach) and
    leaves its status resumable instead of orphaning them."""

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)

    caught = (signal.SIGTERM, signal.SIGHUP)
    previous = [signal.signal(signum, interrupt) for signum in caught]
    try:
        yield
    finally:
        for signum, handler in zip(caught, previous, strict=True):
            signal.signal(signum, handler)
