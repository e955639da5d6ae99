"""How much to prune at each step of an iterative schedule."""

from __future__ import annotations

from typing import Literal

Schedule = Literal["cubic", "linear"]


def sparsity_schedule(target: float, steps: int, kind: Schedule = "cubic") -> list[float]:
    """Cumulative sparsity after each of `steps` steps, ending exactly at `target`.

    cubic (Zhu & Gupta 2017) prunes most while the network still has slack and little near
    the end, when each removed weight costs more accuracy; linear spreads it evenly.
    """
    if steps < 1:
        raise ValueError("steps must be at least 1")
    fractions = [(k + 1) / steps for k in range(steps)]
    if kind == "linear":
        return [target * f for f in fractions]
    return [target * (1.0 - (1.0 - f) ** 3) for f in fractions]
