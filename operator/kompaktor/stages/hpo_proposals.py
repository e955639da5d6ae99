"""What to try next, and when the search is over: a trial's point depends on the seed, its
number and the trials before it only, so proposals come out the same whatever the timing,
the parallelism or a controller restart."""

from __future__ import annotations

import hashlib
import random
from collections.abc import Mapping, Sequence
from typing import Any

from optuna.distributions import BaseDistribution

from kompaktor.api.status import TrialRecord
from kompaktor.search import Observed, ask, cma, grid_points, rebuild, sampler_for
from kompaktor.search.grid import grid_size
from kompaktor.search.study import canonical
from kompaktor.stages.hpo_params import HpoParams, distributions, maximize

FINISHED = ("Complete", "Failed", "Pruned")


#: Samplers whose next point depends on how earlier trials scored.
LEARNING_SAMPLERS = ("tpe", "gp", "cmaes", "nsga2")


def history_end(params: HpoParams, number: int) -> int:
    """Trial `number` sees the trials numbered below this as finished: number - parallelism + 1.

    What a trial sees must not depend on which runs happened to finish first, so it is fixed by
    the trial's number: the trials at least `parallelism` places before it (which must have
    finished before it starts: `ready`); the ones in between are shown to it as running.
    """
    return number - params.parallelism + 1


def waits(params: HpoParams) -> bool:
    """Whether a trial waits for the trials it sees (`history_end`): it does when its point
    (a learning sampler) or its pruning context (a pruner) depends on how they ended."""
    return params.sampler in LEARNING_SAMPLERS or params.pruner != "none"


def ready(params: HpoParams, records: Sequence[TrialRecord], number: int) -> bool:
    """Trial `number` may be proposed: every trial it sees as finished has finished."""
    if not waits(params):
        return True
    end = history_end(params, number)
    return all(r.state in FINISHED for r in records if r.number < end)


def trial_seed(seed: int, number: int) -> int:
    """The sampler seed of trial `number`: a function of the search seed and the number only."""
    digest = hashlib.sha256(f"kompaktor-hpo/{seed}/{number}".encode()).digest()
    return int.from_bytes(digest[:4], "big")


def propose_trial(
    params: HpoParams,
    records: Sequence[TrialRecord],
    number: int,
    seed: int,
    *,
    metric_name: str = "accuracy",
) -> dict[str, Any] | None:
    """Trial `number`'s point (None when the budget or the grid is spent).

    Deterministic whatever the timing: the point depends on the seed, the number, the points of
    the trials numbered below it and the outcomes of those below `history_end` only (the caller
    checks `ready` first; the others are shown as running, so parallel trials spread apart).
    """
    if number >= params.trials:
        return None
    earlier = sorted((r for r in records if r.number < number), key=lambda r: r.number)
    spaces = distributions(params)
    taken = [r.params for r in earlier]
    if params.sampler == "grid":
        points = _grid(spaces, taken, 1, seed)
        return points[0] if points else None
    end = history_end(params, number) if params.sampler in LEARNING_SAMPLERS else 0
    observed = [_observed(r) if r.number < end else Observed(r.params, "Running") for r in earlier]
    own = trial_seed(seed, number)
    directions = maximize(params, metric_name)
    if params.sampler == "cmaes":
        return cma.propose(spaces, observed, 1, own, directions[0])[0]
    population = _population(params)
    sampler = sampler_for(params.sampler, own, startup=_startup(params), population=population)
    study = rebuild(spaces, observed, directions, sampler, population=population)
    return ask(study, spaces, 1, taken)[0]


def propose(
    params: HpoParams,
    records: Sequence[TrialRecord],
    count: int,
    seed: int,
    *,
    metric_name: str = "accuracy",
) -> list[dict[str, Any]]:
    """Up to `count` new points, for the trials numbered len(records) on (fewer when the
    budget or the grid runs out): each is `propose_trial`'s, the ones before it in the batch
    shown as running, so a batch gives the points the same trials get one at a time.
    """
    working = list(records)
    points: list[dict[str, Any]] = []
    for _ in range(max(0, min(count, params.trials - len(records)))):
        number = len(working)
        point = propose_trial(params, working, number, seed, metric_name=metric_name)
        if point is None:
            break
        points.append(point)
        working.append(TrialRecord(stage="", number=number, params=point, state="Running"))
    return points


def _grid(
    spaces: Mapping[str, BaseDistribution],
    taken: Sequence[Mapping[str, Any]],
    count: int,
    seed: int,
) -> list[dict[str, Any]]:
    """The first untried points of one seeded shuffle of the whole grid: no point twice."""
    points = grid_points(spaces)
    random.Random(seed).shuffle(points)
    used = {canonical(p) for p in taken}
    return [p for p in points if canonical(p) not in used][:count]


def _observed(record: TrialRecord) -> Observed:
    state = record.state if record.state in FINISHED else "Running"
    return Observed(record.params, state, record.values, record.curve)  # type: ignore[arg-type]


def _startup(params: HpoParams) -> int:
    """Random trials before a model-based sampler takes over: a third of the budget, 3..10."""
    return min(10, max(3, params.trials // 3))


def _population(params: HpoParams) -> int:
    """NSGA-II generation size: enough to cover the parallelism, small enough to evolve."""
    return max(params.parallelism, min(50, max(4, params.trials // 5)))


def budget(params: HpoParams) -> int:
    """Trials that will run: `trials`, or the grid's size when that is smaller."""
    if params.sampler == "grid":
        return min(params.trials, grid_size(distributions(params)))
    return params.trials


def is_done(params: HpoParams, records: Sequence[TrialRecord]) -> bool:
    """Every trial of the budget finished (complete, failed or pruned)."""
    return sum(r.state in FINISHED for r in records) >= budget(params)
