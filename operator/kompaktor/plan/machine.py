"""The pipeline as a pure state machine: (job, status, observations, now) -> (status, actions).

Both executors drive this one function: the local runner with processes, the controller with
batch Jobs. It never does I/O; what it needs to know it asks for with an action (probe the
inputs, probe the cache) and learns from the next step's observations.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from kompaktor.api.run import RunRecord
from kompaktor.api.spec import OptimizationJobSpec, StageSpec
from kompaktor.api.status import (
    EnergyMethod,
    JobResult,
    OptimizationJobStatus,
    PoolRun,
    RunSlot,
    StagePhase,
    StageStatus,
    TrialRecord,
)
from kompaktor.errors import JobSpecError
from kompaktor.metrics.energy import attempt_joules, joint_method
from kompaktor.plan import trials as trial_flow
from kompaktor.plan.conditions import conditions_for
from kompaktor.plan.keys import file_uri, map_model_refs, output_uri, run_id, run_key
from kompaktor.plan.types import (
    Action,
    CacheProbed,
    CancelRun,
    EmitEvent,
    EnsureRun,
    InputsProbed,
    ModelFile,
    Observation,
    ProbeCache,
    ProbeFailed,
    ProbeInputs,
    Requeue,
    RunFailed,
    RunRequest,
    RunStarted,
    RunSucceeded,
    StepResult,
    WriteRecord,
)
from kompaktor.stages.base import registry
from kompaktor.stages.validate import validate_job

TERMINAL = ("Succeeded", "Failed", "Cancelled")
#: A run's place: its stage's index, and the pool run's index in it (None: the stage's own run).
Slot = tuple[int, int | None]
#: Retry n waits base * 2**(n-1) seconds, capped.
MAX_BACKOFF_SECONDS = 600.0
#: The message of a trial the job's failure stopped: it ended Failed, but did not fail.
CANCELLED = "cancelled"


@dataclass(frozen=True)
class JobContext:
    """The job as the plan sees it: spec plus what the operator or runner configured."""

    name: str
    spec: OptimizationJobSpec
    artifacts_uri: str
    generation: int = 1
    namespace: str | None = None
    default_pool: str | None = None
    pool_prices: Mapping[str, float] = field(default_factory=dict)
    #: Each pool's full-load draw, for the energy of failed attempts (they leave no reading).
    pool_watts: Mapping[str, float] = field(default_factory=dict)
    retry_base_seconds: float = 10.0


def model_files(spec: OptimizationJobSpec) -> tuple[ModelFile, ...]:
    """Every model file stage params name by URI, each with the field that names it."""
    return tuple(
        ModelFile(f"{stage.where(index)}: {path}.uri", uri)
        for index, stage in enumerate(spec.stages)
        for path, uri in _file_refs(stage.params)
    )


def _file_refs(params: Mapping[str, Any]) -> list[tuple[str, str]]:
    found: list[tuple[str, str]] = []

    def note(path: str, ref: dict[str, Any]) -> dict[str, Any]:
        if (uri := file_uri(ref)) is not None:
            found.append((path, uri))
        return ref

    map_model_refs(params, note)
    return found


def cancelled(trial: TrialRecord) -> bool:
    """Whether the job's failure stopped `trial` (it is Failed, but its run did not fail)."""
    return trial.state == "Failed" and trial.message == CANCELLED


def iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_iso(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)


class _Step:
    """One step's working state; `run()` walks the pipeline and collects actions."""

    def __init__(self, ctx: JobContext, status: OptimizationJobStatus, now: datetime) -> None:
        self.ctx, self.spec, self.now = ctx, ctx.spec, now
        self.stamp = iso(now)
        self.status = status
        self.phase_before = status.phase
        self.stages: list[StageStatus] = list(status.stages)
        self.trials: list[TrialRecord] = list(status.trials)
        self.actions: list[Action] = []

    # ----------------------------------------------------------------- helpers

    def event(self, reason: str, message: str, warning: bool = False) -> None:
        self.actions.append(EmitEvent("Warning" if warning else "Normal", reason, message))

    def update_stage(self, index: int, **changes: Any) -> StageStatus:
        self.stages[index] = self.stages[index].model_copy(update=changes)
        return self.stages[index]

    def slots(self, index: int) -> list[tuple[Slot, RunSlot]]:
        """The stage's runs: one per pool for a stage on several pools, else its own."""
        rec = self.stages[index]
        if rec.pools is None:
            return [((index, None), rec)]
        return [((index, number), run) for number, run in enumerate(rec.pools)]

    def slot(self, at: Slot) -> RunSlot:
        index, number = at
        rec = self.stages[index]
        return rec if number is None or rec.pools is None else rec.pools[number]

    def update_slot(self, at: Slot, **changes: Any) -> None:
        index, number = at
        rec = self.stages[index]
        if number is None or rec.pools is None:
            self.update_stage(index, **changes)
            return
        runs = list(rec.pools)
        runs[number] = runs[number].model_copy(update=changes)
        self.stages[index] = summed(rec, runs)

    def named(self, at: Slot) -> str:
        """How events and messages name a run: `stage bench`, or `stage bench on pool arm`."""
        rec = self.stages[at[0]]
        where = "" if at[1] is None else f" on pool {self.slot(at).pool}"
        return f"stage {rec.name}{where}"

    def pool_for(self, stage: StageSpec) -> str | None:
        return stage.pool_names[0] if stage.pool_names else self.ctx.default_pool

    def key_for(
        self, stage: StageSpec, params: dict[str, Any], input_digest: str, pool: str | None
    ) -> str:
        """The run's cache key. A stage that measures its hardware (a benchmark) is keyed by
        its pool too: another pool's figures are not this one's."""
        if pool is not None and registry()[stage.type].multi_pool:
            params = {**params, "pool": pool}
        return run_key(
            input_digest=input_digest,
            stage_type=stage.type,
            params=params,
            dataset_digest=self.status.dataset_digest or "",
            metric=self.spec.objective.metric,
            seed=self.spec.seed,
        )

    def cost(self, record: RunRecord, pool: str | None) -> float:
        return self.paid(record.duration_seconds, pool)

    def paid(self, seconds: float, pool: str | None) -> float:
        """USD for `seconds` on `pool` (a run, or a failed attempt)."""
        return seconds / 3600.0 * self.ctx.pool_prices.get(pool or "", 0.0)

    def attempt_price(self, pool: str | None, seconds: float) -> tuple[float, float]:
        """USD and joules of an attempt that ran `seconds` on `pool` and left no record (it
        failed, or the plan stopped it): both follow the time it ran (see `attempt_joules`)."""
        joules = attempt_joules(self.ctx.pool_watts.get(pool or ""), seconds)
        return self.paid(seconds, pool), joules

    def with_attempt(self, run: RunSlot, seconds: float) -> dict[str, Any]:
        """A run's cost and energy with such an attempt that ran `seconds` added."""
        cost, joules = self.attempt_price(run.pool, seconds)
        return {
            "cost_usd": (run.cost_usd or 0.0) + cost,
            "energy_joules": (run.energy_joules or 0.0) + joules,
            "energy_method": joint_method(run.energy_method, "estimate"),
        }

    def ran(self, since: str | None) -> float:
        """Seconds since an attempt was seen placed (`attempt_start_time`); 0 if it never was."""
        return 0.0 if since is None else max((self.now - parse_iso(since)).total_seconds(), 0.0)

    def stopped(self, run: RunSlot) -> dict[str, Any]:
        """What a running attempt the plan stops (a suspension, the job's end) adds to its run:
        the time since it was placed, paid for as a failed attempt is, so stopping work never
        hides what it spent from costUSD and maxCostUSD. Nothing when it was never placed."""
        if run.phase != "Running" or run.attempt_start_time is None:
            return {}
        return self.with_attempt(run, self.ran(run.attempt_start_time))

    def trial_pool(self, trial: TrialRecord) -> str | None:
        """The pool a trial runs on: its hpo stage's."""
        return self.pool_for(self.spec.stages[self.spec.stage_index(trial.stage)])

    def trial_ended(self, trial: TrialRecord, seconds: float | None, **update: Any) -> TrialRecord:
        """`trial` done running: what only a running trial keeps goes (records stay compact),
        and an attempt that left no record and ran `seconds` is paid for (None: it left one)."""
        if seconds is not None:
            cost, joules = self.attempt_price(self.trial_pool(trial), seconds)
            update = {"cost_usd": round(cost, 6), "energy_joules": round(joules, 1), **update}
        return trial.model_copy(update={"attempt_start_time": None, "job_uid": None, **update})

    def request(
        self,
        index: int,
        stage_type: str,
        params: dict[str, Any],
        key: str,
        input_uri: str,
        attempt: int,
        pool: str | None,
        trial: int | None = None,
        trial_context: dict[str, Any] | None = None,
    ) -> RunRequest:
        stage = self.spec.stages[index]
        return RunRequest(
            run_id=run_id(stage.name, key, attempt, trial),
            job=self.ctx.name,
            stage=stage.name,
            stage_type=stage_type,
            params=params,
            key=key,
            input_uri=input_uri,
            dataset_uri=self.spec.dataset.uri,
            output_uri=output_uri(self.ctx.artifacts_uri, stage_type, key),
            reference_uri=self.spec.model.uri,
            metric=self.spec.objective.metric,
            task=self.spec.dataset.task,
            seed=self.spec.seed,
            attempt=attempt,
            pool=pool,
            timeout_seconds=stage.timeout_seconds,
            trial=trial,
            trial_context=trial_context,
            input_digest=self.stages[index].input_digest,
            reference_digest=self.status.input_digest,
        )

    def gate(self, record: RunRecord) -> str | None:
        """Why a stage output fails the objective, or None when it is inside the bound."""
        metric, baseline = record.metrics.get("metric"), record.metrics.get("referenceMetric")
        if metric is None or baseline is None:
            return None
        objective = self.spec.objective
        drop = metric - baseline if objective.metric == "mse" else baseline - metric
        if drop <= objective.max_drop + 1e-9:
            return None
        direction = "above" if objective.metric == "mse" else "below"
        return (
            f"GateFailed: {objective.metric} {metric:.4f} is {drop:.4f} {direction} the input "
            f"model's {baseline:.4f} (maxDrop {objective.max_drop})"
        )

    # ------------------------------------------------------------ observations

    def observe(self, observations: Sequence[Observation]) -> None:
        for obs in observations:
            match obs:
                case InputsProbed():
                    self.status = self.status.model_copy(
                        update={
                            "input_digest": obs.model_digest,
                            "dataset_digest": obs.dataset_digest,
                            "model_file_digests": dict(obs.model_files) or None,
                        }
                    )
                case ProbeFailed():
                    self.fail(f"{obs.reason}: {obs.message}")
                case CacheProbed():
                    self.on_cache(obs)
                case RunStarted():
                    self.on_started(obs)
                case RunSucceeded():
                    self.on_succeeded(obs.run_id, obs.record)
                case RunFailed():
                    self.on_failed(obs)

    def _stage_by_run(self, rid: str) -> Slot | None:
        for index, rec in enumerate(self.stages):
            for at, run in self.slots(index):
                if (
                    run.phase == "Running"
                    and run.key
                    and rid == run_id(rec.name, run.key, run.attempts)
                ):
                    return at
        return None

    def _trial_by_run(self, rid: str) -> int | None:
        for index, trial in enumerate(self.trials):
            if (
                trial.state == "Running"
                and trial.key
                and rid == run_id(trial.stage, trial.key, trial.attempts, trial.number)
            ):
                return index
        return None

    def on_cache(self, obs: CacheProbed) -> None:
        for index, rec in enumerate(self.stages):
            for at, run in self.slots(index):
                if run.phase == "Pending" and run.key == obs.key:
                    if obs.record is not None:
                        self.stage_done(at, obs.record, cached=True)
                    else:  # a first attempt, or the next one after a suspension
                        self.start_attempt(at, run.attempts + 1)
                        self.event("StageStarted", f"{self.named(at)} ({rec.type}) started")
                    return
        for index, trial in enumerate(self.trials):
            if trial.state == "Pending" and trial.key == obs.key:
                if obs.record is not None:
                    # A cache hit costs nothing now, as a cached stage: its record's energy
                    # was the original run's, and counted then.
                    done = trial_flow.complete(trial, obs.record)
                    self.trials[index] = self.trial_ended(done, None, energy_joules=0.0)
                else:  # its Job and placement are learnt anew (a resumed local run's too)
                    self.trials[index] = trial.model_copy(
                        update={
                            "state": "Running",
                            "attempts": trial.attempts + 1,  # after a suspension: a new Job
                            "attempt_start_time": None,
                            "job_uid": None,
                        }
                    )
                return

    def start_attempt(self, at: Slot, attempt: int) -> None:
        """Run `attempt` of a slot. Its Job and node are the new attempt's, not learnt yet: a
        recorded one says the attempt's Job existed (see the controller's lost-Job check)."""
        run = self.slot(at)
        self.update_slot(
            at,
            phase="Running",
            attempts=attempt,
            start_time=run.start_time or self.stamp,
            next_retry_time=None,
            node=None,
            attempt_start_time=None,
            job_uid=None,
        )

    def on_started(self, obs: RunStarted) -> None:
        """Record what is new of a running attempt: its Job's uid, its placement (once)."""
        at = self._stage_by_run(obs.run_id)
        if at is not None:
            run = self.slot(at)
            changes = self.learnt(obs, run.job_uid, run.attempt_start_time)
            if "attempt_start_time" in changes:
                changes |= {"node": obs.node, "pool": obs.pool or run.pool}
            self.update_slot(at, **changes)
            return
        tindex = self._trial_by_run(obs.run_id)
        if tindex is not None:
            trial = self.trials[tindex]
            changes = self.learnt(obs, trial.job_uid, trial.attempt_start_time)
            self.trials[tindex] = trial.model_copy(update=changes)

    def learnt(self, obs: RunStarted, job_uid: str | None, placed: str | None) -> dict[str, Any]:
        """The fields `obs` sets that are not set yet: the Job's uid, when it was placed."""
        changes: dict[str, Any] = {}
        if obs.job_uid and not job_uid:
            changes["job_uid"] = obs.job_uid
        if obs.node and not placed:
            changes["attempt_start_time"] = self.stamp
        return changes

    def on_succeeded(self, rid: str, record: RunRecord) -> None:
        at = self._stage_by_run(rid)
        if at is not None:
            self.stage_done(at, record, cached=False)
            return
        tindex = self._trial_by_run(rid)
        if tindex is not None:
            trial = self.trials[tindex]
            done = trial_flow.complete(trial, record)
            # compact: hundreds of trials in status
            cost = round(self.cost(record, self.trial_pool(trial)), 6)
            self.trials[tindex] = self.trial_ended(done, None, cost_usd=cost)

    def stage_done(self, at: Slot, record: RunRecord, *, cached: bool) -> None:
        index = at[0]
        rec, run = self.stages[index], self.slot(at)
        pool = run.pool or self.pool_for(self.spec.stages[index])
        # A cached record's energy was its original run's, counted then; the estimates of
        # failed attempts before it stay.
        ran = 0.0 if cached else record.energy_joules
        before = run.energy_joules
        why = self.gate(record)
        self.update_slot(
            at,
            phase="Failed" if why else "Succeeded",
            cached=cached,
            output=record.output,
            metrics=record.metrics,
            completion_time=self.stamp,
            start_time=run.start_time or self.stamp,
            pool=pool,
            node=record.node or run.node,
            cost_usd=(run.cost_usd or 0.0) + (0.0 if cached else self.cost(record, pool)),
            energy_joules=None if before is None and ran is None else (before or 0) + (ran or 0),
            energy_method=joint_method(run.energy_method, record.energy_method),
            message=why,
        )
        named = self.named(at)
        if why:
            self.event("GateFailed", f"{named}: {why}", warning=True)
        elif cached:
            self.event("CacheHit", f"{named} ({rec.type}) reused {record.output.uri}")
        else:
            self.event("StageSucceeded", f"{named} ({rec.type}) succeeded")

    def on_failed(self, obs: RunFailed) -> None:
        at = self._stage_by_run(obs.run_id)
        if at is not None:
            run, named = self.slot(at), self.named(at)
            retries = self.spec.stages[at[0]].retries
            message = f"{obs.reason}: {obs.message}"
            self.update_slot(at, **self.with_attempt(run, obs.duration_seconds))
            failed = run.attempts - (run.interrupted or 0)  # suspended attempts spend no retry
            if obs.retryable and failed <= retries:
                delay = min(self.ctx.retry_base_seconds * 2 ** (failed - 1), MAX_BACKOFF_SECONDS)
                retry_at = iso(self.now + timedelta(seconds=delay))
                self.update_slot(at, phase="Retrying", next_retry_time=retry_at, message=message)
                self.event(
                    "StageRetrying",
                    f"{named} attempt {run.attempts} failed ({message}); retrying at {retry_at}",
                    warning=True,
                )
            else:
                self.update_slot(at, phase="Failed", message=message, completion_time=self.stamp)
                self.event("StageFailed", f"{named} failed: {message}", warning=True)
            return
        tindex = self._trial_by_run(obs.run_id)
        if tindex is not None:
            self.trials[tindex] = self.trial_ended(
                self.trials[tindex],
                obs.duration_seconds,
                state="Failed",
                message=f"{obs.reason}: {obs.message}",
            )

    def fail(self, message: str) -> None:
        self.status = self.status.model_copy(update={"phase": "Failed", "message": message})

    # ------------------------------------------------------------------ walk

    def run(self, params: list[Any]) -> None:
        files = model_files(self.spec)
        known = self.status.model_file_digests or {}
        if (
            self.status.input_digest is None
            or self.status.dataset_digest is None
            or any(file.uri not in known for file in files)
        ):
            self.actions.append(ProbeInputs(self.spec.model.uri, self.spec.dataset.uri, files))
            return
        input_digest, input_uri = self.status.input_digest, self.spec.model.uri
        self.drop_removed_stages()
        blocked = False
        for index, stage in enumerate(self.spec.stages):
            if blocked:
                self.reset_stage(index, stage, key=None)
                continue
            resolved = self.resolve_params(stage)
            several = len(stage.pool_names) > 1
            key = self.key_for(
                stage, resolved, input_digest, None if several else self.pool_for(stage)
            )
            rec = self.ensure_record(index, stage, key, input_digest)
            if several:
                rec = self.ensure_pool_runs(index, stage, resolved, input_digest)
            if rec.phase == "Succeeded" and rec.output is not None:
                input_digest, input_uri = rec.output.digest, rec.output.uri
                continue
            blocked = True
            self.status = self.status.model_copy(update={"stage": stage.name})
            if stage.type == "hpo":
                # Trials take their base from the resolved params: a teacher from an earlier
                # stage reaches every trial's run and key.
                hpo_params = type(params[index]).model_validate(resolved)
                self.drive_hpo(index, stage, hpo_params, key, input_uri)
            else:
                self.drive_stage(index, stage, resolved, input_uri)

    def resolve_params(self, stage: StageSpec) -> dict[str, Any]:
        """Params as the stage run gets them, every model they name (a teacher, also in an hpo
        stage's base) with its digest, so the run key follows its content: a file's from the
        input probe, an earlier stage's output with its URI too."""
        digests = self.status.model_file_digests or {}

        def fill(path: str, ref: dict[str, Any]) -> dict[str, Any]:
            uri = file_uri(ref)
            if uri is not None:
                return {**ref, "digest": digests[uri]} if uri in digests else ref
            name = ref.get("fromStage")
            source = next((s for s in self.stages if name and s.name == name), None)
            if source is None or source.output is None:
                return ref
            return {**ref, "uri": source.output.uri, "digest": source.output.digest}

        return map_model_refs(stage.params, fill)

    def ensure_record(
        self, index: int, stage: StageSpec, key: str, input_digest: str
    ) -> StageStatus:
        rec = self.stages[index] if index < len(self.stages) else None
        if rec is None or rec.name != stage.name or rec.type != stage.type or rec.key != key:
            return self.reset_stage(index, stage, key=key, input_digest=input_digest)
        return rec

    def ensure_pool_runs(
        self, index: int, stage: StageSpec, params: dict[str, Any], input_digest: str
    ) -> StageStatus:
        """One run per pool the stage names, each keyed by its pool; runs of pools still
        named with the same key are kept, those of pools no longer named are cancelled."""
        rec = self.stages[index]
        kept: dict[tuple[str | None, str | None], PoolRun | None] = {
            (run.pool, run.key): run for run in rec.pools or []
        }
        runs = []
        for pool in stage.pool_names:
            key = self.key_for(stage, params, input_digest, pool)
            runs.append(kept.pop((pool, key), None) or PoolRun(pool=pool, key=key))
        for left in kept.values():
            if left is not None:
                self.drop_run(rec.name, left, f"pool {left.pool} is no longer named")
        if runs != rec.pools:
            self.stages[index] = summed(rec, runs)
        return self.stages[index]

    def cancel_run(self, name: str, run: RunSlot, why: str) -> None:
        if run.phase == "Running" and run.key:
            rid = run_id(name, run.key, run.attempts)
            self.actions.append(CancelRun(rid))
            self.event("StageCancelled", f"stage {name}: run {rid} stopped: {why}")

    def drop_run(self, name: str, run: RunSlot, why: str) -> None:
        """A run that leaves status (an edit re-keyed its stage or no longer names its pool):
        stopped if it runs, and all it spent, the attempt in flight too, kept in `replaced_*`
        so that costUSD and maxCostUSD still count it."""
        self.cancel_run(name, run, why)
        paid = run.model_copy(update=self.stopped(run))
        self.replaced(paid.cost_usd, paid.energy_joules)

    def drop_stage(self, old: StageStatus, index: int, why: str) -> None:
        """A stage record that leaves status: its runs (an hpo stage's are its trials)."""
        if old.type != "hpo":
            for _, run in self.slots(index):
                self.drop_run(old.name, run, why)
        self.cancel_trials(old.name)

    def drop_removed_stages(self) -> None:
        """Records of stages an edit took off the end of the list go, paid for: one left over
        kept the job from ever finishing (it waited for a stage no longer named)."""
        for index in range(len(self.stages) - 1, len(self.spec.stages) - 1, -1):
            self.drop_stage(self.stages[index], index, "the stage is no longer in the spec")
            del self.stages[index]

    def reset_stage(
        self, index: int, stage: StageSpec, *, key: str | None, input_digest: str | None = None
    ) -> StageStatus:
        old = self.stages[index] if index < len(self.stages) else None
        if old is not None and old.key == key and old.name == stage.name and key is None:
            return old
        if old is not None:
            self.drop_stage(old, index, "the spec or its inputs changed")
        fresh = StageStatus(
            name=stage.name,
            type=stage.type,
            key=key,
            input_digest=input_digest,
            pool=None if len(stage.pool_names) > 1 else self.pool_for(stage),
        )
        if index < len(self.stages):
            self.stages[index] = fresh
        else:
            self.stages.append(fresh)
        return fresh

    def replaced(self, cost: float | None, energy: float | None) -> None:
        """Runs dropped from status (an edit re-keyed them) were still paid for."""
        if not cost and not energy:
            return
        before = self.status
        self.status = before.model_copy(
            update={
                "replaced_cost_usd": (before.replaced_cost_usd or 0.0) + (cost or 0.0),
                "replaced_energy_joules": (before.replaced_energy_joules or 0.0) + (energy or 0.0),
            }
        )

    def cancel_trials(self, stage: str) -> None:
        """Drop the trials of a re-keyed stage: those in flight stopped, all still paid for."""
        for trial in self.trials:
            if trial.stage == stage:
                if trial.state in ("Running", "Pending"):
                    trial = self.stop_trial(trial)
                self.replaced(trial.cost_usd, trial.energy_joules)
        self.trials = [t for t in self.trials if t.stage != stage]

    def drive_stage(
        self, index: int, stage: StageSpec, params: dict[str, Any], input_uri: str
    ) -> None:
        for at, _ in self.slots(index):
            self.drive_run(at, stage, params, input_uri)
        rec = self.stages[index]
        if rec.phase == "Failed":
            self.fail(f"stage {stage.name} failed: {rec.message}")

    def drive_run(self, at: Slot, stage: StageSpec, params: dict[str, Any], input_uri: str) -> None:
        run = self.slot(at)
        if run.key is None:
            return
        pool = run.pool or self.pool_for(stage)

        def request(attempt: int) -> RunRequest:
            return self.request(at[0], stage.type, params, run.key or "", input_uri, attempt, pool)

        match run.phase:
            case "Pending":
                self.actions.append(ProbeCache(run.key, request(1).output_uri))
            case "Running":
                self.actions.append(EnsureRun(request(max(run.attempts, 1))))
            case "Retrying":
                due = parse_iso(run.next_retry_time) if run.next_retry_time else self.now
                if self.now >= due:
                    self.start_attempt(at, run.attempts + 1)
                    self.actions.append(EnsureRun(request(run.attempts + 1)))
                else:
                    self.actions.append(Requeue((due - self.now).total_seconds()))

    def drive_hpo(
        self, index: int, stage: StageSpec, params: Any, key: str, input_uri: str
    ) -> None:
        rec = self.stages[index]
        out = output_uri(self.ctx.artifacts_uri, stage.type, key)
        if rec.phase == "Pending" and rec.attempts == 0:
            self.actions.append(ProbeCache(key, out))
            return
        if rec.phase == "Failed":
            self.fail(f"stage {stage.name} failed: {rec.message}")
            return
        # Trials the job's failure cancelled run again now it runs again (a finished local
        # run's rerun keeps them): as failures they would count in failedTrials, in "all N
        # trials failed" and in the sampler's history, though they never ran to an end.
        self.trials = [
            self.revived(t) if t.stage == stage.name and cancelled(t) else t for t in self.trials
        ]
        mine = [t for t in self.trials if t.stage == stage.name]
        outcome = trial_flow.advance(
            params=params,
            records=mine,
            input_digest=rec.input_digest or "",
            dataset_digest=self.status.dataset_digest or "",
            spec=self.spec,
            stage=stage,
        )
        self.trials = [t for t in self.trials if t.stage != stage.name] + outcome.records
        for trial in outcome.records:
            if trial.key is None:
                continue
            if trial.state not in ("Pending", "Running"):
                continue
            context = None
            if trial.state == "Running":
                context = trial_flow.context(
                    params, outcome.records, trial, self.spec.objective.metric
                )
            request = self.request(
                index, outcome.target, trial_flow.target_params(params, trial), trial.key,
                input_uri, max(trial.attempts, 1), self.pool_for(stage), trial.number, context,
            )  # fmt: skip
            if trial.state == "Pending":
                self.actions.append(ProbeCache(trial.key, request.output_uri))
            else:
                self.actions.append(EnsureRun(request))
        if outcome.best is not None:
            record = trial_flow.stage_record(params, outcome, out, self.spec)
            self.actions.append(WriteRecord(out, record))
            self.stage_done((index, None), record, cached=False)
            # The stage spent what its trials did; its message says why the winner won.
            why = self.stages[index].message or record.details["selection"]
            self.update_stage(index, message=why, **trial_flow.spent(outcome.records))
        elif outcome.failure is not None:
            self.update_stage(
                index, phase="Failed", message=outcome.failure, completion_time=self.stamp
            )
            self.fail(f"stage {stage.name} failed: {outcome.failure}")

    # ----------------------------------------------------------- job level

    def finish(self) -> None:
        phase = self.status.phase
        # Stages are only done for the keys of the inputs as probed: while the probe is asked
        # (again after an edit), the stages' old Succeeded says nothing about the job.
        probing = any(isinstance(action, ProbeInputs) for action in self.actions)
        if (
            phase not in TERMINAL
            and not probing
            and self.stages
            and all(s.phase == "Succeeded" for s in self.stages)
            and len(self.stages) == len(self.spec.stages)
        ):
            phase = "Succeeded"
            self.event("JobSucceeded", f"all {len(self.stages)} stages succeeded")
        elif phase == "Pending" and self.status.input_digest is not None:
            phase = "Running"
        elif phase == "Failed":
            self.cancel_active(f"the job failed: {self.status.message}")
            if self.phase_before != "Failed":
                self.event("JobFailed", self.status.message or "the job failed", warning=True)
        cost = self.spent()
        energy = (
            sum(s.energy_joules or 0.0 for s in self.stages if s.type != "hpo")
            + sum(t.energy_joules or 0.0 for t in self.trials)
            + (self.status.replaced_energy_joules or 0.0)
        )
        update: dict[str, Any] = {
            "phase": phase,
            "stages": self.stages,
            "trials": self.trials,
            "observed_generation": self.ctx.generation,
            "cost_usd": round(cost, 6),
            "energy_joules": round(energy, 3),
            "start_time": self.status.start_time or self.stamp,
            "result": result_of(self.stages),
        }
        if phase in TERMINAL and self.status.completion_time is None:
            update["completion_time"] = self.stamp
        self.status = self.status.model_copy(update=update)

    def cancel_active(self, why: str) -> None:
        self.actions[:] = [a for a in self.actions if not isinstance(a, EnsureRun | ProbeCache)]
        for index, rec in enumerate(self.stages):
            for at, run in self.slots(index):
                if run.phase in ("Pending", "Running", "Retrying"):  # Pending: never reached
                    if rec.type != "hpo":
                        self.cancel_run(rec.name, run, why)
                    self.update_slot(at, phase="Cancelled", **self.stopped(run))
        self.cancel_trials_in_flight()

    def suspend(self, why: str) -> None:
        """Stop the runs in flight so that resuming goes on where they were: a stopped run is
        Pending again with its attempts kept (its cache is probed, then its next attempt runs),
        and the attempt cut short is `interrupted`, not failed, so it spends no retry. A stage
        waiting to retry keeps waiting; an hpo stage goes on from its trials in status. What
        the stopped attempts ran is paid for: a stopped run's in its cost, a trial's in
        `replaced_*`."""
        for index, rec in enumerate(self.stages):
            for at, run in self.slots(index):
                if run.phase != "Running":
                    continue
                if rec.type == "hpo":
                    self.update_slot(at, phase="Pending", attempts=0)
                    continue
                self.cancel_run(rec.name, run, why)
                interrupted = (run.interrupted or 0) + 1
                self.update_slot(at, phase="Pending", interrupted=interrupted, **self.stopped(run))
        self.trials = [
            self.paused_trial(t) if t.state in ("Running", "Pending") else t for t in self.trials
        ]

    def paused_trial(self, trial: TrialRecord) -> TrialRecord:
        """A trial in flight that a suspension stops: Pending again with its number and params,
        so the search goes on as it would have (dropped, its number went to the next trial
        proposed, twice over when a later one had finished, and it never ran)."""
        return self.revived(self.stop_trial(trial))

    def revived(self, trial: TrialRecord) -> TrialRecord:
        """A stopped trial to run again as a new attempt: Pending with its number and params,
        what it ran kept in `replaced_*` (its next attempt's figures are its own)."""
        self.replaced(trial.cost_usd, trial.energy_joules)
        update = {"state": "Pending", "message": None, "cost_usd": None, "energy_joules": None}
        return trial.model_copy(update=update)

    def cancel_trials_in_flight(self) -> None:
        """Stop running trials; they and the pending ones end Failed, `cancelled` (they run
        again if the job does: `drive_hpo`)."""
        self.trials = [
            self.stop_trial(t) if t.state in ("Running", "Pending") else t for t in self.trials
        ]

    def stop_trial(self, trial: TrialRecord) -> TrialRecord:
        """A trial in flight, ended Failed `cancelled`: a running one's run is stopped and paid
        for the time since it was placed (as a stopped stage run is)."""
        ran = None
        if trial.key and trial.state == "Running":
            rid = run_id(trial.stage, trial.key, trial.attempts, trial.number)
            self.actions.append(CancelRun(rid))
            ran = self.ran(trial.attempt_start_time) if trial.attempt_start_time else None
        return self.trial_ended(trial, ran, state="Failed", message=CANCELLED)

    def spent(self) -> float:
        """USD so far: every stage run plus every HPO trial (an HPO stage only sums its trials)."""
        runs = sum(s.cost_usd or 0.0 for s in self.stages if s.type != "hpo")
        trials = sum(t.cost_usd or 0.0 for t in self.trials)
        return runs + trials + (self.status.replaced_cost_usd or 0.0)

    def check_budget(self) -> None:
        budget = self.spec.budget
        start = self.status.start_time
        if budget.max_duration_seconds is not None and start is not None:
            deadline = parse_iso(start) + timedelta(seconds=budget.max_duration_seconds)
            if self.now >= deadline:
                self.fail(f"BudgetExceeded: ran longer than maxDuration {budget.max_duration}")
                self.event("BudgetExceeded", self.status.message or "", warning=True)
                return
            self.actions.append(Requeue((deadline - self.now).total_seconds()))
        spent = self.spent() - (self.status.cost_before_rerun_usd or 0.0)
        if budget.max_cost_usd is not None and spent > budget.max_cost_usd:
            since = " since the edit that ran it again" if self.status.cost_before_rerun_usd else ""
            self.fail(
                f"BudgetExceeded: cost {spent:.2f} USD{since} is over maxCostUSD "
                f"{budget.max_cost_usd}; raise spec.budget.maxCostUSD to run on"
            )
            self.event("BudgetExceeded", self.status.message or "", warning=True)


def summed(rec: StageStatus, runs: list[PoolRun]) -> StageStatus:
    """A stage on several pools, summed up from its pool runs: failed if one failed, done
    when all are; the first pool's figures and output (the model is the same on every pool),
    every pool's cost and energy."""
    phases = {run.phase for run in runs}
    phase: StagePhase = next(
        (p for p in ("Failed", "Running", "Retrying", "Cancelled", "Pending") if p in phases),
        "Succeeded",
    )
    first = runs[0] if runs else PoolRun()
    costs = [run.cost_usd for run in runs if run.cost_usd is not None]
    energies = [run.energy_joules for run in runs if run.energy_joules is not None]
    methods = {run.energy_method for run in runs if run.energy_method is not None}
    method: EnergyMethod | None = (
        None if not methods else methods.pop() if len(methods) == 1 else "estimate"
    )
    starts = [run.start_time for run in runs if run.start_time]
    ends = [run.completion_time for run in runs if run.completion_time]
    problems = [f"pool {run.pool}: {run.message}" for run in runs if run.message]
    return rec.model_copy(
        update={
            "pools": runs,
            "phase": phase,
            "attempts": sum(run.attempts for run in runs),
            "interrupted": sum(run.interrupted or 0 for run in runs) or None,
            "cached": bool(runs) and all(run.cached for run in runs),
            "output": first.output,
            "metrics": first.metrics,
            "node": None,
            "start_time": min(starts) if starts else None,
            "completion_time": max(ends) if phase in TERMINAL and ends else None,
            "next_retry_time": None,
            "cost_usd": sum(costs) if costs else None,
            "energy_joules": sum(energies) if energies else None,
            "energy_method": method,
            "message": "; ".join(problems) or None,
        }
    )


def result_of(stages: Sequence[StageStatus]) -> JobResult | None:
    """The job's headline: the last output, its metric against the input, the benchmark."""
    done = [s for s in stages if s.phase == "Succeeded" and s.output is not None]
    if not done:
        return None
    last = done[-1]
    bench = next((s for s in reversed(done) if s.type == "benchmark"), None)
    figures = bench.metrics if bench else {}
    return JobResult(
        uri=last.output.uri if last.output else None,
        metric=last.metrics.get("metric"),
        baseline_metric=last.metrics.get("referenceMetric"),
        speedup=figures.get("speedup"),
        size_ratio=figures.get("sizeRatio"),
        latency_ms=figures.get("latencyMs") or last.metrics.get("latencyMs"),
    )


def step(
    ctx: JobContext,
    status: OptimizationJobStatus,
    observations: Sequence[Observation],
    now: datetime,
) -> StepResult:
    """Advance the job by what was observed; say what should happen next."""
    new_generation = status.observed_generation != ctx.generation
    if status.phase in TERMINAL and not new_generation:
        # Nothing to run; the conditions still follow the phase, so a job that finished under
        # an older operator gains the ones added since (kstatus's Stalled for Flux).
        return StepResult(
            status.model_copy(update={"conditions": conditions_for(status, iso(now))})
        )
    if new_generation:
        # An edit is when a model replaced under the same URI can be noticed: the inputs are
        # digested again, so keys follow what the edited job reads, not what it read before.
        status = status.model_copy(
            update={"input_digest": None, "dataset_digest": None, "model_file_digests": None}
        )
    if new_generation and status.phase in TERMINAL:
        status = rerun(status)
    work = _Step(ctx, status, now)
    try:
        params = validate_job(ctx.spec)
    except JobSpecError as error:
        work.fail(f"InvalidSpec: {error}")
        work.event("InvalidSpec", str(error), warning=True)
        work.finish()
        return _finish(work)
    if ctx.spec.suspend:
        work.suspend("the job is suspended (spec.suspend)")
        work.finish()
        since = status.suspend_time if status.phase == "Suspended" else work.stamp
        work.status = work.status.model_copy(update={"phase": "Suspended", "suspend_time": since})
        return _finish(work)
    if status.phase == "Suspended":
        # The time budget counts time the job may run: the suspension moves its start on.
        start, since = status.start_time, status.suspend_time
        if start is not None and since is not None:
            start = iso(parse_iso(start) + (now - parse_iso(since)))
        work.status = work.status.model_copy(
            update={"phase": "Running", "start_time": start, "suspend_time": None}
        )
    work.observe(observations)
    if work.status.phase != "Failed":
        work.check_budget()
    if work.status.phase != "Failed":
        work.run(params)
    work.finish()
    return _finish(work)


def rerun(status: OptimizationJobStatus) -> OptimizationJobStatus:
    """A finished job that is edited runs again. Both budgets start over: maxDuration from a
    new startTime, maxCostUSD from what the job had spent (`cost_before_rerun_usd`). Stages that
    failed or were cancelled are tried again (the edit may have raised retries or changed the
    pool; a run that failed the gate is cached and judged again, unrun), their spending kept
    in `replaced_*`: costUSD is all the job spent, and never goes down."""
    again = ("Failed", "Cancelled")
    dropped = [s for s in status.stages if s.phase in again and s.type != "hpo"]
    return status.model_copy(
        update={
            "phase": "Running",
            "message": None,
            "start_time": None,
            "completion_time": None,
            "replaced_cost_usd": _total(status.replaced_cost_usd, [s.cost_usd for s in dropped]),
            "replaced_energy_joules": _total(
                status.replaced_energy_joules, [s.energy_joules for s in dropped]
            ),
            "cost_before_rerun_usd": status.cost_usd,
            "stages": [
                StageStatus(name=s.name, type=s.type) if s.phase in again else s
                for s in status.stages
            ],
        }
    )


def _total(base: float | None, parts: Sequence[float | None]) -> float | None:
    """`base` plus `parts`, None while all are None (status leaves unset figures out)."""
    known = [x for x in (base, *parts) if x is not None]
    return sum(known) if known else None


def _finish(work: _Step) -> StepResult:
    status = work.status.model_copy(update={"conditions": conditions_for(work.status, work.stamp)})
    return StepResult(status, work.actions)
