"""The hpo search's bound on a trial's metric (`AccuracyBound`): which way is worse for each
metric, the float tolerance at the edge, no bound, and a trial's own baseline."""

from __future__ import annotations

import math

import pytest

from kompaktor.api.status import TrialRecord
from kompaktor.evaluate import AccuracyBound
from kompaktor.stages.hpo_winner import no_winner


@pytest.mark.parametrize(
    ("metric", "baseline", "inside", "outside"),
    [
        # higher is better: may fall by maxDrop and rise freely; 0.8 - 0.1 is
        # 0.7000000000000001 in floats, yet the edge 0.7 itself is inside the bound
        ("accuracy", 0.8, [0.99, 0.75, 0.7], [0.699, 0.5]),
        ("fidelity", 0.8, [0.99, 0.75, 0.7], [0.699, 0.5]),
        # lower is better: may rise by maxDrop and fall freely; 0.7 + 0.1 is 0.7999999999999999
        ("mse", 0.7, [0.01, 0.75, 0.8], [0.801, 0.99]),
    ],
)
def test_a_metric_may_get_worse_by_max_drop_in_its_own_direction(
    metric: str, baseline: float, inside: list[float], outside: list[float]
) -> None:
    bound = AccuracyBound(metric, baseline, 0.1)
    assert [bound.admits(v) for v in inside] == [True] * len(inside)
    assert [bound.admits(v) for v in outside] == [False] * len(outside)


def test_a_zero_drop_admits_only_the_baseline_or_better() -> None:
    assert AccuracyBound("accuracy", 0.9, 0.0).admits(0.9)
    assert not AccuracyBound("accuracy", 0.9, 0.0).admits(0.8999)
    assert AccuracyBound("mse", 0.9, 0.0).admits(0.9)
    assert not AccuracyBound("mse", 0.9, 0.0).admits(0.9001)


@pytest.mark.parametrize("metric", ["accuracy", "mse"])
def test_no_max_drop_is_unbounded_and_no_baseline_admits_everything(metric: str) -> None:
    unbounded = AccuracyBound.of(metric, 0.5, None)
    assert unbounded.max_drop == math.inf and unbounded.unbounded
    assert unbounded.admits(-1e9) and unbounded.admits(1e9)
    bounded = AccuracyBound.of(metric, 0.5, 0.01)
    assert bounded.max_drop == 0.01 and not bounded.unbounded
    for baseline in (None, math.nan):
        assert AccuracyBound(metric, baseline, 0.0).admits(-1e9)
        assert AccuracyBound(metric, baseline, 0.0).admits(1e9)


def test_a_trials_own_baseline_replaces_the_bounds() -> None:
    """A trial ranked on validation rows is bounded by the input model on those rows."""
    bound = AccuracyBound("accuracy", 0.99, 0.01)
    assert not bound.admits(0.93)
    assert bound.admits(0.93, own_baseline=0.935)
    assert not bound.admits(0.93, own_baseline=0.95)
    assert not bound.admits(0.93, own_baseline=None)  # none of its own: the bound's
    assert AccuracyBound("accuracy", None, 0.01).admits(0.5, own_baseline=None)
    assert not AccuracyBound("accuracy", None, 0.01).admits(0.5, own_baseline=0.6)
    assert AccuracyBound("mse", 0.1, 0.01).admits(0.5, own_baseline=0.495)


def test_no_winner_names_the_bound_it_applied() -> None:
    pruned = [TrialRecord(stage="tune", number=0, params={}, state="Pruned")]
    assert no_winner(pruned, AccuracyBound("mse", 0.5, 0.02)) == (
        "NoTrialWithinBound: none of 1 trials (0 complete, 1 pruned, 0 failed) kept mse within "
        "maxDrop 0.02 of the input model"
    )
    assert no_winner(pruned, AccuracyBound.of("accuracy", None, None)).endswith(
        "0 failed) completed (the job sets no maxDrop: any complete trial would win)"
    )
