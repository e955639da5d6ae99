"""Pareto sets over trial values, whatever each objective's direction."""

from __future__ import annotations

from collections.abc import Sequence


def dominates(a: Sequence[float], b: Sequence[float], maximize: Sequence[bool]) -> bool:
    """a is at least as good as b everywhere and better somewhere."""
    better = False
    for x, y, up in zip(a, b, maximize, strict=True):
        gain = x - y if up else y - x
        if gain < 0:
            return False
        better = better or gain > 0
    return better


def pareto_front(values: Sequence[Sequence[float]], maximize: Sequence[bool]) -> list[int]:
    """Indices of the points no other point dominates, in input order."""
    return [
        i
        for i, v in enumerate(values)
        if not any(dominates(w, v, maximize) for j, w in enumerate(values) if j != i)
    ]
