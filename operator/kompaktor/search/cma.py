"""CMA-ES rebuilt from records: the optimizer is replayed generation by generation.

Optuna's CmaEsSampler keeps its optimizer pickled inside the study, which a study rebuilt from
status records does not have; replaying the finished trials, `population` at a time in record
order, through the `cmaes` library gives the same kind of search with nothing kept. Numeric
dimensions live in [0, 1] (log-scaled where asked); categorical ones are drawn at random.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

from kompaktor.search.study import Observed

Numeric = FloatDistribution | IntDistribution


def population_size(dimensions: int) -> int:
    """CMA-ES's usual default, 4 + 3 ln(n)."""
    return 4 + math.floor(3 * math.log(max(dimensions, 1)))


def propose(
    distributions: Mapping[str, BaseDistribution],
    observed: Sequence[Observed],
    count: int,
    seed: int,
    maximize: bool,
) -> list[dict[str, Any]]:
    try:
        from cmaes import CMA  # type: ignore[import-untyped]
    except ModuleNotFoundError:  # pragma: no cover - depends on the install
        raise ValueError(
            "the cmaes sampler needs the `cmaes` package (pip install cmaes)"
        ) from None
    numeric = {n: d for n, d in distributions.items() if isinstance(d, Numeric)}
    popsize = population_size(len(numeric))
    optimizer = CMA(
        mean=np.full(max(len(numeric), 1), 0.5),
        sigma=1 / 6,
        bounds=np.tile([0.0, 1.0], (max(len(numeric), 1), 1)),
        seed=seed,
        population_size=popsize,
    )
    done = [o for o in observed if o.state == "Complete" and o.values and _fits(numeric, o.params)]
    for start in range(0, len(done) - popsize + 1, popsize):
        solutions = []
        for item in done[start : start + popsize]:
            assert item.values is not None
            loss = -item.values[0] if maximize else item.values[0]
            solutions.append((_encode(numeric, item.params), float(loss)))
        optimizer.tell(solutions)
    rng = np.random.default_rng(seed)
    points = []
    for _ in range(count):
        x = optimizer.ask()
        point: dict[str, Any] = {}
        for name, dist in distributions.items():
            if isinstance(dist, CategoricalDistribution):
                point[name] = dist.choices[int(rng.integers(len(dist.choices)))]
        for i, (name, dist) in enumerate(numeric.items()):
            point[name] = _decode(dist, float(x[i]))
        points.append({name: point[name] for name in distributions})
    return points


def _fits(numeric: Mapping[str, Numeric], params: Mapping[str, Any]) -> bool:
    return all(
        isinstance(params.get(n), int | float) and d.low <= params[n] <= d.high
        for n, d in numeric.items()
    )


def _encode(numeric: Mapping[str, Numeric], params: Mapping[str, Any]) -> np.ndarray:
    x = [_unit(d, float(params[n])) for n, d in numeric.items()]
    return np.array(x or [0.5])


def _unit(dist: Numeric, value: float) -> float:
    low, high, v = float(dist.low), float(dist.high), value
    if dist.log:
        low, high, v = math.log(low), math.log(high), math.log(v)
    return 0.5 if high == low else (v - low) / (high - low)


def _decode(dist: Numeric, unit: float) -> float | int:
    low, high = float(dist.low), float(dist.high)
    unit = min(max(unit, 0.0), 1.0)
    value = (
        math.exp(math.log(low) + unit * (math.log(high) - math.log(low)))
        if dist.log
        else low + unit * (high - low)
    )
    if dist.step is not None:
        value = low + round((value - low) / dist.step) * dist.step
    value = min(max(value, low), high)
    return round(value) if isinstance(dist, IntDistribution) else value
