"""Every point of a discrete search space, in one fixed order.

A grid search is stateless this way: the points already tried are in the records, so the next
ones are simply the first untried points of a seeded permutation of the whole grid.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from typing import Any

from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

#: More points than this is not a grid anyone can run; the check says so early.
MAX_GRID = 100_000


def axis(distribution: BaseDistribution) -> list[Any] | None:
    """The values of one dimension, or None when it is continuous (float with no step)."""
    if isinstance(distribution, CategoricalDistribution):
        return list(distribution.choices)
    if isinstance(distribution, IntDistribution):
        return list(range(distribution.low, distribution.high + 1, distribution.step))
    if isinstance(distribution, FloatDistribution) and distribution.step is not None:
        count = math.floor((distribution.high - distribution.low) / distribution.step + 1e-9) + 1
        return [round(distribution.low + i * distribution.step, 12) for i in range(count)]
    return None


def grid_size(distributions: Mapping[str, BaseDistribution]) -> int:
    axes = [axis(d) for d in distributions.values()]
    return math.prod(len(a) for a in axes if a is not None)


def grid_points(distributions: Mapping[str, BaseDistribution]) -> list[dict[str, Any]]:
    """The full grid, keys in space order, each axis ascending (as given for choices)."""
    names = list(distributions)
    axes = [axis(distributions[n]) for n in names]
    if any(a is None for a in axes):
        raise ValueError("a grid needs a step or choices for every dimension")
    return [dict(zip(names, values, strict=True)) for values in itertools.product(*axes)]  # type: ignore[arg-type]
