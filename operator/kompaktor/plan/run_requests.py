"""What a run is keyed by, and what an executor is asked to run: the same for a stage's own
run, a pool's run and an hpo trial."""

from __future__ import annotations

from typing import Any

from kompaktor.api.spec import StageSpec
from kompaktor.plan.keys import output_uri, run_id, run_key
from kompaktor.plan.state import StepState
from kompaktor.plan.types import RunRequest
from kompaktor.stages.base import registry


def run_key_for(
    work: StepState, stage: StageSpec, params: dict[str, Any], input_digest: str, pool: str | None
) -> str:
    """The run's cache key. A stage that measures its hardware (a benchmark) is keyed by
    its pool too: another pool's figures are not this one's; one that chooses by the job's
    maxDrop (quantize's `fallback: auto`) by maxDrop: a tighter bound is another output."""
    impl = registry()[stage.type]()
    if impl.chooses_by_max_drop(impl.Params.model_validate(params)):
        params = {**params, "maxDrop": work.spec.objective.max_drop}
    if pool is not None and impl.multi_pool:
        params = {**params, "pool": pool}
    return run_key(
        input_digest=input_digest,
        stage_type=stage.type,
        params=params,
        dataset_digest=work.status.dataset_digest or "",
        metric=work.spec.objective.metric,
        seed=work.spec.seed,
    )


def run_request(
    work: StepState,
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
    spec, stage = work.spec, work.spec.stages[index]
    return RunRequest(
        run_id=run_id(stage.name, key, attempt, trial),
        job=work.ctx.name,
        stage=stage.name,
        stage_type=stage_type,
        params=params,
        key=key,
        input_uri=input_uri,
        dataset_uri=spec.dataset.uri,
        output_uri=output_uri(work.ctx.artifacts_uri, stage_type, key),
        reference_uri=spec.model.uri,
        metric=spec.objective.metric,
        task=spec.dataset.task,
        seed=spec.seed,
        attempt=attempt,
        pool=pool,
        timeout_seconds=stage.timeout_seconds,
        trial=trial,
        trial_context=trial_context,
        input_digest=work.stages[index].input_digest,
        reference_digest=work.status.input_digest,
        max_drop=spec.objective.max_drop,
    )
