"""The walk down the spec's stages: probe the inputs until every digest is known, key each
stage by what it reads, keep or reset its record (and its pool runs), and drive the first
stage not done. Records that leave status are stopped and paid for."""

from __future__ import annotations

from typing import Any

from kompaktor.api.model_refs import file_uri, map_model_refs, stage_model_files
from kompaktor.api.spec import OptimizationJobSpec, StageSpec
from kompaktor.api.status import PoolRun, StageStatus
from kompaktor.plan.pool_runs import summed
from kompaktor.plan.run_requests import run_key_for
from kompaktor.plan.stage_runs import drive_stage, drop_run
from kompaktor.plan.state import StepState
from kompaktor.plan.trial_runs import drive_hpo, drop_trials
from kompaktor.plan.types import ModelFile, ProbeInputs


def model_files(spec: OptimizationJobSpec) -> tuple[ModelFile, ...]:
    """Every model file stage params name by URI, each with the field that names it."""
    return tuple(ModelFile(where, uri) for where, uri in stage_model_files(spec))


def walk(work: StepState, params: list[Any]) -> None:
    """Each stage takes the previous one's output; the first one not done is driven, and the
    ones after it wait with no key (their input is not known yet)."""
    files = model_files(work.spec)
    known = work.status.model_file_digests or {}
    if (
        work.status.input_digest is None
        or work.status.dataset_digest is None
        or any(file.uri not in known for file in files)
    ):
        work.actions.append(ProbeInputs(work.spec.model.uri, work.spec.dataset.uri, files))
        return
    input_digest, input_uri = work.status.input_digest, work.spec.model.uri
    drop_removed_stages(work)
    blocked = False
    for index, stage in enumerate(work.spec.stages):
        if blocked:
            reset_stage(work, index, stage, key=None)
            continue
        resolved = resolve_params(work, stage)
        several = len(stage.pool_names) > 1
        pool = None if several else work.pool_for(stage)
        key = run_key_for(work, stage, resolved, input_digest, pool)
        rec = ensure_record(work, index, stage, key, input_digest)
        if several:
            rec = ensure_pool_runs(work, index, stage, resolved, input_digest)
        if rec.phase == "Succeeded" and rec.output is not None:
            input_digest, input_uri = rec.output.digest, rec.output.uri
            continue
        blocked = True
        work.status = work.status.model_copy(update={"stage": stage.name})
        if stage.type == "hpo":
            # Trials take their base from the resolved params: a teacher from an earlier
            # stage reaches every trial's run and key.
            hpo_params = type(params[index]).model_validate(resolved)
            drive_hpo(work, index, stage, hpo_params, key, input_uri)
        else:
            drive_stage(work, index, stage, resolved, input_uri)


def resolve_params(work: StepState, stage: StageSpec) -> dict[str, Any]:
    """Params as the stage run gets them, every model they name (a teacher, also in an hpo
    stage's base) with its digest, so the run key follows its content: a file's from the
    input probe, an earlier stage's output with its URI too."""
    digests = work.status.model_file_digests or {}

    def fill(path: str, ref: dict[str, Any]) -> dict[str, Any]:
        uri = file_uri(ref)
        if uri is not None:
            return {**ref, "digest": digests[uri]} if uri in digests else ref
        name = ref.get("fromStage")
        source = next((s for s in work.stages if name and s.name == name), None)
        if source is None or source.output is None:
            return ref
        return {**ref, "uri": source.output.uri, "digest": source.output.digest}

    return map_model_refs(stage.params, fill)


def ensure_record(
    work: StepState, index: int, stage: StageSpec, key: str, input_digest: str
) -> StageStatus:
    rec = work.stages[index] if index < len(work.stages) else None
    if rec is None or rec.name != stage.name or rec.type != stage.type or rec.key != key:
        return reset_stage(work, index, stage, key=key, input_digest=input_digest)
    return rec


def ensure_pool_runs(
    work: StepState, index: int, stage: StageSpec, params: dict[str, Any], input_digest: str
) -> StageStatus:
    """One run per pool the stage names, each keyed by its pool; runs of pools still
    named with the same key are kept, those of pools no longer named are cancelled."""
    rec = work.stages[index]
    kept: dict[tuple[str | None, str | None], PoolRun | None] = {
        (run.pool, run.key): run for run in rec.pools or []
    }
    runs = []
    for pool in stage.pool_names:
        key = run_key_for(work, stage, params, input_digest, pool)
        runs.append(kept.pop((pool, key), None) or PoolRun(pool=pool, key=key))
    for left in kept.values():
        if left is not None:
            drop_run(work, rec.name, left, f"pool {left.pool} is no longer named")
    if runs != rec.pools:
        work.stages[index] = summed(rec, runs)
    return work.stages[index]


def reset_stage(
    work: StepState,
    index: int,
    stage: StageSpec,
    *,
    key: str | None,
    input_digest: str | None = None,
) -> StageStatus:
    """A fresh record for the stage at `index` (the one there before leaves status), unless
    it already waits with no key."""
    old = work.stages[index] if index < len(work.stages) else None
    if old is not None and old.key == key and old.name == stage.name and key is None:
        return old
    if old is not None:
        drop_stage(work, old, index, "the spec or its inputs changed")
    fresh = StageStatus(
        name=stage.name,
        type=stage.type,
        key=key,
        input_digest=input_digest,
        pool=None if len(stage.pool_names) > 1 else work.pool_for(stage),
    )
    if index < len(work.stages):
        work.stages[index] = fresh
    else:
        work.stages.append(fresh)
    return fresh


def drop_stage(work: StepState, old: StageStatus, index: int, why: str) -> None:
    """A stage record that leaves status: its runs (an hpo stage's are its trials)."""
    if old.type != "hpo":
        for _, run in work.slots(index):
            drop_run(work, old.name, run, why)
    drop_trials(work, old.name)


def drop_removed_stages(work: StepState) -> None:
    """Records of stages an edit took off the end of the list go, paid for: one left over
    kept the job from ever finishing (it waited for a stage no longer named)."""
    for index in range(len(work.stages) - 1, len(work.spec.stages) - 1, -1):
        drop_stage(work, work.stages[index], index, "the stage is no longer in the spec")
        del work.stages[index]
