"""The search behind the `hpo` stage: Optuna studies rebuilt from trial records, grid and
CMA-ES replays, Pareto selection. Pure functions: no I/O, nothing kept between calls."""

from kompaktor.search.grid import grid_points
from kompaktor.search.pareto import dominates, pareto_front
from kompaktor.search.study import Observed, ask, rebuild, sampler_for

__all__ = [
    "Observed",
    "ask",
    "dominates",
    "grid_points",
    "pareto_front",
    "rebuild",
    "sampler_for",
]
