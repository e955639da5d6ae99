"""An Optuna study rebuilt in memory from trial records, then asked for new points.

The controller may restart between any two trials, so nothing of a study is kept: every call
replays the records (finished trials with their values, running ones as running, so samplers
that "lie" about them spread parallel proposals apart) into a fresh in-memory study. The
sampler's seed is given by the caller, so the same records always give the same proposals.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import optuna
from optuna.distributions import BaseDistribution
from optuna.trial import TrialState

ObservedState = Literal["Complete", "Failed", "Pruned", "Running"]
_STATES = {
    "Complete": TrialState.COMPLETE,
    "Failed": TrialState.FAIL,
    "Pruned": TrialState.PRUNED,
    "Running": TrialState.RUNNING,
}
#: GA samplers find a trial's generation in this system attribute (optuna's BaseGASampler key).
_GA_GENERATION = "NSGAIISampler:generation"


@dataclass(frozen=True)
class Observed:
    """A trial as the search sees it: its point, its state, (when complete) its values and its
    validation curve (the intermediate values TPE ranks pruned trials by)."""

    params: Mapping[str, Any]
    state: ObservedState
    values: Sequence[float] | None = None
    curve: Sequence[float] | None = None


def sampler_for(
    name: str, seed: int, *, startup: int, population: int
) -> optuna.samplers.BaseSampler:
    """The Optuna sampler for a `sampler` name (grid and cmaes are replayed elsewhere)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if name == "random":
            return optuna.samplers.RandomSampler(seed=seed)
        if name == "tpe":
            return optuna.samplers.TPESampler(
                seed=seed, n_startup_trials=startup, multivariate=True, constant_liar=True
            )
        if name == "gp":
            return optuna.samplers.GPSampler(seed=seed, n_startup_trials=startup)
        if name == "nsga2":
            return optuna.samplers.NSGAIISampler(seed=seed, population_size=population)
    raise ValueError(f"no Optuna sampler for {name!r}")


def rebuild(
    distributions: Mapping[str, BaseDistribution],
    observed: Iterable[Observed],
    maximize: Sequence[bool],
    sampler: optuna.samplers.BaseSampler,
    *,
    population: int = 1,
) -> optuna.Study:
    """A fresh in-memory study holding every observed trial that fits the space.

    A record whose point lies outside the space (the space was edited) is left out rather than
    failing the search. Generations are tagged by record order so NSGA-II finds its populations.
    """
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    directions: list[Literal["minimize", "maximize"]] = [
        "maximize" if up else "minimize" for up in maximize
    ]
    study = optuna.create_study(directions=directions, sampler=sampler)
    finished = 0
    for item in observed:
        if not _fits(distributions, item.params):
            continue
        values = list(item.values) if item.state == "Complete" and item.values else None
        if item.state == "Complete" and (values is None or len(values) != len(maximize)):
            continue  # a finished trial not scored yet says nothing to the sampler
        attrs = {_GA_GENERATION: finished // population} if item.state == "Complete" else {}
        finished += item.state == "Complete"
        curve = dict(enumerate(item.curve or [])) if len(maximize) == 1 else {}
        if item.state == "Pruned" and curve:
            values = [curve[len(curve) - 1]]  # what Optuna's tell records for a pruned trial
        study.add_trial(
            optuna.trial.create_trial(
                params=dict(item.params),
                distributions=dict(distributions),
                values=values,
                state=_STATES[item.state],
                system_attrs=attrs,
                intermediate_values=curve if item.state in ("Complete", "Pruned") else None,
            )
        )
    return study


def ask(
    study: optuna.Study,
    distributions: Mapping[str, BaseDistribution],
    count: int,
    taken: Iterable[Mapping[str, Any]],
    *,
    retries: int = 20,
) -> list[dict[str, Any]]:
    """`count` new points; a point already taken is asked again (a few times) before kept."""
    seen = {canonical(p) for p in taken}
    points: list[dict[str, Any]] = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        for _ in range(count):
            for attempt in range(retries + 1):
                point = {k: _plain(v) for k, v in study.ask(dict(distributions)).params.items()}
                if canonical(point) not in seen or attempt == retries:
                    break
            seen.add(canonical(point))
            points.append(point)
    return points


def canonical(point: Mapping[str, Any]) -> str:
    """One string per point, so points compare whatever their key order or number types."""
    return json.dumps({k: _plain(v) for k, v in sorted(point.items())}, sort_keys=True)


def _fits(distributions: Mapping[str, BaseDistribution], params: Mapping[str, Any]) -> bool:
    if set(params) != set(distributions):
        return False
    try:
        for name, dist in distributions.items():
            internal = dist.to_internal_repr(params[name])
            if not dist._contains(internal):
                return False
    except (ValueError, TypeError):
        return False
    return True


def _plain(value: Any) -> Any:
    """numpy scalars to Python numbers (trial params go to JSON)."""
    item = getattr(value, "item", None)
    return item() if callable(item) else value
