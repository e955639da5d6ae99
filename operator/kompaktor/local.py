"""`kompaktor run job.yaml`: the engine driven by local processes, no cluster needed.

The same plan and stage command as in the cluster; only the executor differs. Status is
saved beside the artifacts whenever a step changes it, so an interrupted run resumes where it
stopped, as a suspended job does: its stages' attempts, its spending and the time it ran kept. A
store that cannot take the status for a while (an S3 outage) is a warning while stages run: the
write is retried on the next step, and the run fails only after STATUS_GRACE_SECONDS of failed
writes. One run of a job to an artifact root goes at a time, whatever its `--logs` and on
whichever machine (the lock is in the root), and it first stops the stage processes an earlier
run killed outright left going (LocalExecutor.claim); a run whose lease on an S3 root another
run took stops its stages and writes no more status.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from kompaktor.api.jobfile import job_relative_uri
from kompaktor.api.model_refs import file_uri, map_model_refs
from kompaktor.api.spec import OptimizationJob, OptimizationJobSpec, StageSpec
from kompaktor.api.status import OptimizationJobStatus, TrialRecord
from kompaktor.artifacts import ArtifactError, open_store
from kompaktor.engine import reconcile
from kompaktor.errors import JobSpecError
from kompaktor.executors.local import LocalExecutor
from kompaktor.plan import CancelRun, EnsureRun, JobContext, Observation, Requeue, step
from kompaktor.plan.clock import parse_iso
from kompaktor.plan.types import TERMINAL
from kompaktor.stages.validate import uri_problem

STATUS_KEY = "jobs/{name}/status.json"
IDLE_WAKE_SECONDS = 1.0
#: How long writes of status.json may fail in a row (a store outage) before the run gives up;
#: the stages go on meanwhile, and the final status is retried as long before the run fails.
STATUS_GRACE_SECONDS = 60.0
#: Pause between tries of the final status write.
STATUS_RETRY_SECONDS = 2.0
FINAL_PHASES = ("Succeeded", "Failed", "Cancelled", "Suspended")
INTERRUPTED = "interrupted: run the same command to resume"
#: How long an interrupted run waits for its last status write before it exits anyway.
EXIT_WRITE_SECONDS = 5.0


def _absolute_model_files(stage: StageSpec, base: Path) -> StageSpec:
    """The stage with each model file its params name (a distill teacher's uri) made absolute
    against the job file's folder, as spec.model.uri is (the input probe digests them)."""

    def fill(path: str, ref: dict[str, Any]) -> dict[str, Any]:
        uri = file_uri(ref)
        return ref if uri is None else {**ref, "uri": job_relative_uri(uri, base)}

    return stage.model_copy(update={"params": map_model_refs(stage.params, fill)})


def localize(job: OptimizationJob, job_dir: Path, artifacts: str | None) -> JobContext:
    """The job with every URI made absolute (stage params' model files too), its artifact
    root chosen, and its pools dropped: this machine is the one pool ("local"), so a benchmark
    on several pools runs once."""
    spec = job.spec
    model = spec.model.model_copy(update={"uri": job_relative_uri(spec.model.uri, job_dir)})
    dataset = spec.dataset.model_copy(update={"uri": job_relative_uri(spec.dataset.uri, job_dir)})
    stages = [
        _absolute_model_files(stage, job_dir).model_copy(update={"pool": None, "pools": None})
        for stage in spec.stages
    ]
    if artifacts is not None and (problem := uri_problem(artifacts)) is not None:
        raise JobSpecError(f"--artifacts: {problem}")  # spec.artifacts.uri is validate_job's
    root = artifacts or spec.artifacts.uri or str(job_dir / "artifacts")
    resolved: OptimizationJobSpec = spec.model_copy(
        update={"model": model, "dataset": dataset, "stages": stages}
    )
    return JobContext(
        name=job.metadata.name,
        spec=resolved,
        artifacts_uri=job_relative_uri(root, job_dir),
        default_pool="local",
        retry_base_seconds=2.0,
    )


@dataclass
class LocalRun:
    """One `kompaktor run`: owns the executor and the status file."""

    ctx: JobContext
    executor: LocalExecutor
    on_update: Callable[[OptimizationJobStatus, list[Any]], None] = lambda status, running: None
    grace_seconds: float = STATUS_GRACE_SECONDS
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep
    _saved: bytes | None = field(default=None, init=False, repr=False)  # last status written
    _failing_since: float | None = field(default=None, init=False, repr=False)

    @property
    def _status_key(self) -> str:
        return STATUS_KEY.format(name=self.ctx.name)

    def load_status(self) -> OptimizationJobStatus:
        """Where this run starts from. A finished job runs afresh (earlier trials survive, the
        study is rebuilt from them; they count 0 here, as a cached stage does), so a fully
        cached rerun spends nothing; an unfinished one (interrupted, or killed) goes on as a
        resumed suspension does (`resumed`)."""
        store = open_store(self.ctx.artifacts_uri)
        if not store.exists(self._status_key):
            return OptimizationJobStatus()
        try:
            saved = OptimizationJobStatus.model_validate_json(store.get_bytes(self._status_key))
        except ValidationError:
            return OptimizationJobStatus()
        if saved.phase in TERMINAL:
            return OptimizationJobStatus(trials=[_restored(t) for t in saved.trials])
        return resumed(self.ctx, saved)

    def save_status(self, status: OptimizationJobStatus) -> None:
        """Write the status file unless it already says this; ArtifactError if it cannot."""
        data = status.model_dump_json(by_alias=True, exclude_none=True, indent=1).encode()
        if data == self._saved:
            return
        open_store(self.ctx.artifacts_uri).put_bytes(self._status_key, data)
        self._saved = data
        if self._failing_since is not None:
            down = self.clock() - self._failing_since
            _warn(f"{self._status_uri} written again after {down:.0f}s of failed writes")
            self._failing_since = None

    @property
    def _status_uri(self) -> str:
        return f"{self.ctx.artifacts_uri.rstrip('/')}/{self._status_key}"

    def _failed_write(self, error: ArtifactError, what: str) -> float:
        """Note a failed status write (a warning once per outage); seconds it has lasted."""
        now = self.clock()
        if self._failing_since is None:
            self._failing_since = now
            _warn(
                f"cannot write {self._status_uri}: {error}; {what}, retrying for up to "
                f"{self.grace_seconds:.0f}s"
            )
        return now - self._failing_since

    def _save_running(self, status: OptimizationJobStatus) -> None:
        """A failed write while stages run is retried on the next step, until the grace
        period of failed writes has passed."""
        try:
            self.save_status(status)
        except ArtifactError as error:
            if self._failed_write(error, "the stages go on") >= self.grace_seconds:
                raise ArtifactError(
                    f"cannot write {self._status_uri} for {self.grace_seconds:.0f}s, stopping "
                    f"the run (run the same command to resume): {error}"
                ) from error

    def _save_final(self, status: OptimizationJobStatus) -> None:
        """The run's last status: retried for the grace period, then a clear error."""
        self._failing_since = None  # the final status gets a grace period of its own
        while True:
            try:
                self.save_status(status)
                return
            except ArtifactError as error:
                lasted = self._failed_write(error, f"the run is {status.phase}")
                if lasted >= self.grace_seconds:
                    why = f" ({status.message})" if status.message else ""
                    raise ArtifactError(
                        f"the run ended {status.phase}{why}, but its status could not be "
                        f"written to {self._status_uri} for {self.grace_seconds:.0f}s: {error}"
                    ) from error
                self.sleep(min(STATUS_RETRY_SECONDS, self.grace_seconds - lasted))

    def run(self) -> OptimizationJobStatus:
        """Run the job to its end, alone: RunInProgressError while another run of it to the same
        root goes on, RunLeaseLostError once another took its lease; the stage processes a
        killed run left are stopped first, and the lock is let go of however the run ends."""
        stopped = self.executor.claim(self.ctx.name, self.ctx.artifacts_uri)
        try:
            if stopped:
                _warn(
                    f"stopped {len(stopped)} stage process{'es' if len(stopped) > 1 else ''} "
                    f"left by an earlier run that was killed ({', '.join(stopped)})"
                )
            return self._run(self.load_status())
        finally:
            self.executor.shutdown()

    def _run(self, status: OptimizationJobStatus) -> OptimizationJobStatus:
        """Reconcile and act until a final phase; an interrupt leaves the status resumable."""
        observations: list[Observation] = []
        try:
            while True:
                result = reconcile(self.ctx, status, observations, datetime.now(UTC))
                status = result.status
                if status.phase in FINAL_PHASES:
                    self._save_final(status)
                else:
                    self._save_running(status)
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
                if status.phase in FINAL_PHASES:
                    return status
                observations = self.executor.poll(wake)
        except KeyboardInterrupt:
            # One try, none while the store is failing: an interrupted run should stop now, and
            # a resumed run copes with the Running status an earlier write left.
            if self._failing_since is not None:
                _warn(f"{self._status_uri} not updated on the way out: the store is failing")
            else:
                self._save_on_the_way_out(interrupted(self.ctx, status, datetime.now(UTC)))
            raise

    def _save_on_the_way_out(self, status: OptimizationJobStatus) -> None:
        """One write, waited for EXIT_WRITE_SECONDS at most: a store that hangs instead of
        refusing holds a call through all of the S3 client's retries (minutes), and Ctrl-C
        must stop the run now. The write left behind ends with the process."""
        failed: list[ArtifactError] = []

        def write() -> None:
            try:
                self.save_status(status)
            except ArtifactError as error:
                failed.append(error)

        writer = threading.Thread(target=write, name="status-on-exit", daemon=True)
        writer.start()
        writer.join(EXIT_WRITE_SECONDS)
        if writer.is_alive():
            _warn(
                f"{self._status_uri} not updated on the way out: the store did not answer in "
                f"{EXIT_WRITE_SECONDS:g}s"
            )
        elif failed:
            _warn(f"cannot write {self._status_uri} on the way out: {failed[0]}")


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr, flush=True)


def _restored(trial: TrialRecord) -> TrialRecord:
    """A finished job's trial as its rerun starts from: figures 0 (the run that made it paid),
    one still in flight to run again (the plan runs the ones its failure cancelled again)."""
    update: dict[str, Any] = {"cost_usd": 0.0, "energy_joules": 0.0}
    if trial.state in ("Running", "Pending"):
        update |= {"state": "Pending", "attempts": 0}
    return trial.model_copy(update=update)


def resumed(ctx: JobContext, saved: OptimizationJobStatus) -> OptimizationJobStatus:
    """An unfinished run's status as its resume starts from: suspended, as the interrupt left
    it, so each stage keeps its attempts (`interrupted` ones spend no retry), its spending and
    its backoff, stopped trials run again under their numbers, and maxDuration counts the time
    run before, not the time between (the plan moves startTime on by it, as for any suspension).
    A run killed before it could say so is suspended at the last moment its status records.
    The inputs are digested again: the job file or the model may have changed meanwhile."""
    if saved.phase != "Suspended":
        saved = interrupted(ctx, saved, last_recorded(saved))
    inputs = {"input_digest": None, "dataset_digest": None, "model_file_digests": None}
    return saved.model_copy(update={**inputs, "message": None})  # no longer INTERRUPTED


def last_recorded(status: OptimizationJobStatus) -> datetime:
    """The latest moment `status` records: when its run was last known to be going (no time
    after it is known to have been run, nor paid for)."""
    runs = [*status.stages, *(run for stage in status.stages for run in stage.pools or [])]
    stamps = [
        status.start_time,
        *(condition.last_transition_time for condition in status.conditions),
        *(t for run in runs for t in (run.start_time, run.completion_time, run.attempt_start_time)),
        *(trial.attempt_start_time for trial in status.trials),
    ]
    return max((parse_iso(stamp) for stamp in stamps if stamp), default=datetime.now(UTC))


def interrupted(
    ctx: JobContext, status: OptimizationJobStatus, now: datetime
) -> OptimizationJobStatus:
    """What an interrupted run leaves in its status file: the plan's suspension, with how to
    resume. So nothing is Running, and each stopped run is paid for the time it ran, as a
    suspended job's are (the resumed run carries that on); a finished job stays as it is."""
    if status.phase in TERMINAL:
        return status
    held = replace(ctx, spec=ctx.spec.model_copy(update={"suspend": True}))
    return step(held, status, [], now).status.model_copy(update={"message": INTERRUPTED})
