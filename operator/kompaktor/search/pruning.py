"""Optuna pruners for trials that run as separate processes (pods, local subprocesses).

A trial cannot share a live study with the others, so the plan hands it the finished trials'
validation curves (`TrialContext`). The trial rebuilds an in-memory study from them, joins it as
a running trial under its own number, reports each curve point with `Trial.report` and asks the
pruner (`Trial.should_prune`). Median and percentile pruners only read the curves of complete
trials; successive halving and Hyperband also keep per-rung marks on every trial, so their
history is replayed point by point through the same pruner, which sets those marks exactly as
a live study would have. The study name is fixed because Hyperband picks a trial's bracket from
the study name and the trial number.

Steps count curve points from 1 (the resource a trial has used, as Optuna's rungs expect), and
no trial is judged at its last point: its training is over there, so a stop saves nothing and
would only throw a finished run away. Every rung therefore falls before a trial's last point,
so a bad trial is stopped while epochs are still left to save.
"""

from __future__ import annotations

import warnings

import optuna
from optuna.trial import TrialState

from kompaktor.api.run import PrunerSpec, TrialContext, TrialPoint

STUDY_NAME = "kompaktor-hpo"
_STATEFUL = ("successiveHalving", "hyperband")


def make_pruner(spec: PrunerSpec) -> optuna.pruners.BasePruner:
    """The Optuna pruner a `PrunerSpec` names (steps are curve points, counted from 1).

    Median and percentile judge a step once `warmup_steps` points came before it. Hyperband's
    most patient bracket starts its rungs at `max_resource`; it gets one point less than the
    most a trial reports, so that bracket too can stop a trial before its last point.
    """
    if spec.name in ("median", "percentile"):
        return optuna.pruners.PercentilePruner(
            50.0 if spec.name == "median" else spec.percentile,
            n_startup_trials=spec.startup_trials,
            n_warmup_steps=spec.warmup_steps + 1,
        )
    if spec.name == "successiveHalving":
        return optuna.pruners.SuccessiveHalvingPruner(
            min_resource=spec.min_resource, reduction_factor=spec.reduction_factor
        )
    if spec.name == "hyperband":
        return optuna.pruners.HyperbandPruner(
            min_resource=spec.min_resource,
            max_resource=max(spec.max_resource - 1, spec.min_resource),
            reduction_factor=spec.reduction_factor,
        )
    raise ValueError(f"no Optuna pruner named {spec.name!r}")


def rebuild_for_pruning(context: TrialContext) -> optuna.Study:
    """An in-memory study holding trials 0 .. number-1: the finished ones from `history`
    with their curves, every other number as a failed placeholder (it says nothing)."""
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study = optuna.create_study(
        study_name=STUDY_NAME,
        direction="maximize" if context.maximize else "minimize",
        pruner=make_pruner(context.pruner),
        sampler=optuna.samplers.RandomSampler(seed=0),
    )
    finished = {point.number: point for point in context.history}
    replay = context.pruner.name in _STATEFUL
    for number in range(context.number):
        point = finished.get(number)
        if point is None or (point.state == "Complete" and _final(point) is None):
            study.add_trial(optuna.trial.create_trial(state=TrialState.FAIL))
        elif replay:
            _replay(study, point)
        else:
            study.add_trial(_frozen(point))
    return study


def _final(point: TrialPoint) -> float | None:
    if point.value is not None:
        return point.value
    return point.curve[-1] if point.curve else None


def _frozen(point: TrialPoint) -> optuna.trial.FrozenTrial:
    state = TrialState.COMPLETE if point.state == "Complete" else TrialState.PRUNED
    return optuna.trial.create_trial(
        state=state, value=_final(point), intermediate_values=dict(enumerate(point.curve, 1))
    )


def _replay(study: optuna.Study, point: TrialPoint) -> None:
    """Run a finished trial's curve through the pruner again, for the marks it leaves."""
    trial = study.ask()
    for step, value in enumerate(point.curve, 1):
        trial.report(value, step)
        trial.should_prune()
    if point.state == "Complete":
        study.tell(trial, _final(point))
    else:
        study.tell(trial, state=TrialState.PRUNED)


class TrialPruner:
    """This trial inside the rebuilt study: `report(value)` adds a point and answers whether
    the pruner stops the trial there (never at its last point)."""

    def __init__(self, context: TrialContext) -> None:
        self.study = rebuild_for_pruning(context)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            self.trial = self.study.ask()
        assert self.trial.number == context.number
        self.last = context.points or context.pruner.max_resource
        self.steps = 0

    def report(self, value: float) -> bool:
        """Report the next curve point; True when the pruner prunes the trial here."""
        self.steps += 1
        self.trial.report(value, self.steps)
        return self.steps < self.last and bool(self.trial.should_prune())
