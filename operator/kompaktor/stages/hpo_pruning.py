"""Pruning across processes: each trial's curve (its stride and length) and what it is started
with to rebuild the pruner, fixed by its number so every process judges a curve alike."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import ValidationError

from kompaktor.api.run import MAX_CURVE, PrunerSpec, TrialContext, TrialPoint
from kompaktor.api.run import curve_stride as epochs_per_point
from kompaktor.api.status import TrialRecord
from kompaktor.stages.hpo_params import PRUNER_OPTIONS, HpoParams, maximize, trial_params
from kompaktor.stages.hpo_proposals import history_end
from kompaktor.stages.hpo_target import extremes, point_params, target_stage

#: Most bytes of finished trials a trial's context carries (a command-line argument).
MAX_CONTEXT_BYTES = 64 * 1024


def pruner_spec(params: HpoParams) -> PrunerSpec | None:
    """What a trial needs to rebuild the pruner (None: no pruning)."""
    if params.pruner == "none":
        return None
    options = {option: getattr(params, option) for option in PRUNER_OPTIONS}
    return PrunerSpec(
        name=params.pruner,
        max_resource=curve_points(params),
        **{**options, "startup_trials": startup_trials(params)},
    )


def startup_trials(params: HpoParams) -> int:
    """Complete trials a median or percentile pruner waits for: as set, else a quarter of the
    budget, 2 to 5 (Optuna's 5 would leave a small search nothing to prune)."""
    if params.startup_trials is not None:
        return params.startup_trials
    return min(5, max(2, params.trials // 4))


def max_epochs(params: HpoParams) -> int:
    """The most training epochs a trial can run: the target at the high end of the space."""
    target = target_stage(params)
    point: dict[str, Any] = {}
    for key, ends in extremes(params).items():
        numbers = [v for v in ends if isinstance(v, int | float) and not isinstance(v, bool)]
        point[key] = max(numbers) if numbers else ends[0]
    try:
        return target().epochs(point_params(params, target, point))
    except ValidationError:
        return MAX_CURVE


def curve_stride(params: HpoParams) -> int:
    """Epochs per curve point, the same for every trial, so curves compare point by point."""
    return epochs_per_point(max_epochs(params))


def curve_points(params: HpoParams) -> int:
    """The most curve points a trial reports (Hyperband's maximum resource)."""
    return max(1, max_epochs(params) // curve_stride(params))


def trial_curve_points(params: HpoParams, suggested: Mapping[str, Any]) -> int:
    """The curve points the trial at this point reports: one every `curve_stride` epochs of
    its own (a searched epochs gives trials of different lengths)."""
    target = target_stage(params)
    try:
        model = point_params(params, target, suggested)
    except ValidationError:
        return curve_points(params)
    return max(1, min(MAX_CURVE, target().epochs(model) // curve_stride(params)))


def trial_key_params(params: HpoParams, suggested: Mapping[str, Any]) -> dict[str, Any]:
    """What a trial's cache key covers: its target params, plus the pruner when there is one
    (a pruned result must not stand in for a run that nothing would have stopped)."""
    spec = pruner_spec(params)
    point = trial_params(params, suggested)
    return point if spec is None else {**point, "hpoPruner": spec.model_dump(mode="json")}


def trial_context(
    params: HpoParams,
    records: Sequence[TrialRecord],
    number: int,
    suggested: Mapping[str, Any],
    *,
    metric_name: str,
) -> TrialContext | None:
    """What trial `number` (at point `suggested`) is started with when the search prunes: the
    pruner, the curve stride, its own curve length, and the finished trials it sees (numbered
    below `history_end`: which trials finished first must not change what prunes it), newest
    first up to MAX_CONTEXT_BYTES."""
    spec = pruner_spec(params)
    if spec is None:
        return None
    end = history_end(params, number)
    history: list[TrialPoint] = []
    size = 0
    for record in sorted(records, key=lambda r: -r.number):
        if record.number >= end or record.state not in ("Complete", "Pruned"):
            continue
        if record.state == "Pruned" and not record.curve:
            continue
        value = record.values[0] if record.state == "Complete" and record.values else None
        point = TrialPoint(
            number=record.number,
            state=record.state,  # type: ignore[arg-type]
            value=value,
            curve=list(record.curve or []),
        )
        size += len(point.model_dump_json(by_alias=True)) + 1
        if size > MAX_CONTEXT_BYTES:
            break
        history.append(point)
    return TrialContext(
        number=number,
        maximize=maximize(params, metric_name)[0],
        stride=curve_stride(params),
        points=trial_curve_points(params, suggested),
        pruner=spec,
        history=sorted(history, key=lambda p: p.number),
    )
