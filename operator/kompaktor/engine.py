"""The one pipeline engine: the pure plan plus the artifact-store reads it asks for.

Both executors call `reconcile`; it answers the plan's probes (input digests, cache lookups)
against the artifact store until only executor work is left (start or stop runs, events,
requeue). Keeping probes here means the local runner and the controller share every decision
and every store access pattern.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from pydantic import ValidationError

from kompaktor.api.run import RESULT_FILE, RunRecord
from kompaktor.api.status import OptimizationJobStatus
from kompaktor.artifacts import open_store, split_uri
from kompaktor.data import dataset_digest
from kompaktor.errors import KompaktorError
from kompaktor.plan import (
    Action,
    CacheProbed,
    EnsureRun,
    InputsProbed,
    JobContext,
    Observation,
    ProbeCache,
    ProbeFailed,
    ProbeInputs,
    Requeue,
    StepResult,
    WriteRecord,
    step,
)

#: A job has at most 32 stages and each probe resolves one; this bounds a runaway loop.
MAX_ROUNDS = 256


def probe_inputs(action: ProbeInputs) -> Observation:
    """Digest the input model, the dataset and every model file stage params name (a teacher),
    or say plainly which one cannot be read, by the field that names it."""
    try:
        model = model_digest(action.model_uri)
    except KompaktorError as error:
        return ProbeFailed("ModelUnreadable", f"spec.model.uri {action.model_uri}: {error}")
    try:
        data = dataset_digest(action.dataset_uri)
    except KompaktorError as error:
        return ProbeFailed("DatasetUnreadable", f"spec.dataset.uri {action.dataset_uri}: {error}")
    files: dict[str, str] = {}
    for file in action.model_files:
        if file.uri in files:  # one teacher for several stages is read once
            continue
        try:
            files[file.uri] = model_digest(file.uri)
        except KompaktorError as error:
            return ProbeFailed("ModelUnreadable", f"{file.where} {file.uri}: {error}")
    return InputsProbed(model, data, files)


def model_digest(uri: str) -> str:
    """The "sha256:<hex>" of a model file: the one the store recorded, or computed."""
    store, key = split_uri(uri)
    return store.digest(key)


def probe_cache(action: ProbeCache) -> Observation:
    """A finished run leaves result.json last, so its presence means the output was whole;
    it is reused only while it still is: a record that does not parse, or whose model is gone
    or changed, is removed and the run made again (it would hand on a model it does not
    describe)."""
    store = open_store(action.output_uri)
    if not store.exists(RESULT_FILE):
        return CacheProbed(action.key, None)
    try:
        record = RunRecord.model_validate_json(store.get_bytes(RESULT_FILE))
    except ValidationError:
        record = None
    if record is None or not _intact(record):
        store.delete_prefix(RESULT_FILE)
        return CacheProbed(action.key, None)
    return CacheProbed(action.key, record)


def _intact(record: RunRecord) -> bool:
    try:
        return model_digest(record.output.uri) == record.output.digest
    except KompaktorError:  # gone, or unreadable
        return False


def write_record(action: WriteRecord) -> None:
    data = action.record.model_dump_json(by_alias=True, exclude_none=True, indent=2)
    open_store(action.output_uri).put_bytes(RESULT_FILE, data.encode())


def reconcile(
    ctx: JobContext,
    status: OptimizationJobStatus,
    observations: Sequence[Observation],
    now: datetime,
) -> StepResult:
    """Step the plan, answering its store probes, until only executor actions remain.

    Events and cancellations happen once, so they are kept from every round; which runs
    should exist (EnsureRun) and when to wake (Requeue) are levels: the last round says it.
    """
    pending: list[Observation] = list(observations)
    edges: list[Action] = []
    for _ in range(MAX_ROUNDS):
        result = step(ctx, status, pending, now)
        status, pending = result.status, []
        levels: list[Action] = []
        for action in result.actions:
            match action:
                case ProbeInputs():
                    pending.append(probe_inputs(action))
                case ProbeCache():
                    pending.append(probe_cache(action))
                case WriteRecord():
                    write_record(action)
                case EnsureRun() | Requeue():
                    levels.append(action)
                case _:
                    edges.append(action)
        if not pending:
            return StepResult(status, edges + levels)
    raise KompaktorError(f"job {ctx.name}: the plan did not settle after {MAX_ROUNDS} rounds")
