"""Which trial wins: by the `select` rule among complete trials within the job's maxDrop, why
(in words), the Pareto set of a multi-objective search, and why none does when no trial
qualifies."""

from __future__ import annotations

from collections.abc import Sequence

from kompaktor.api.status import TrialRecord
from kompaktor.evaluate import AccuracyBound
from kompaktor.search import pareto_front
from kompaktor.stages.hpo_params import HpoParams, maximize
from kompaktor.stages.hpo_scoring import metric_rows, ranked


def pareto_set(
    params: HpoParams, records: Sequence[TrialRecord], *, metric_name: str
) -> list[TrialRecord]:
    """The complete trials no other complete trial beats on every objective."""
    scored = [r for r in records if r.state == "Complete" and r.values is not None]
    front = pareto_front([list(r.values or []) for r in scored], maximize(params, metric_name))
    return [scored[i] for i in front]


def no_winner(records: Sequence[TrialRecord], bound: AccuracyBound) -> str:
    """Why a finished search has no best trial: every trial failed (say why, once per distinct
    reason: a setup error fails them all alike), or none kept the metric within the bound."""
    failed = [r.message or "no message" for r in records if r.state == "Failed"]
    if records and len(failed) == len(records):
        reasons = list(dict.fromkeys(failed))
        more = f" (and {len(reasons) - 2} other reasons)" if len(reasons) > 2 else ""
        listed = "; ".join(reasons[:2])
        return f"NoTrialSucceeded: all {len(records)} trials failed: {listed}{more}"
    complete = sum(r.state == "Complete" for r in records)
    pruned = sum(r.state == "Pruned" for r in records)
    kept = (
        "completed (the job sets no maxDrop: any complete trial would win)"
        if bound.unbounded
        else f"kept {bound.metric} within maxDrop {bound.max_drop:g} of the input model"
    )
    return (
        f"NoTrialWithinBound: none of {len(records)} trials ({complete} complete, {pruned} "
        f"pruned, {len(failed)} failed) {kept}"
    )


#: The status figure each `select` rule other than best-metric ranks the eligible trials by.
SELECT_KEYS: dict[str, str] = {
    "fastest-within-drop": "latencyMs",
    "smallest-within-drop": "sizeBytes",
}


def select_best(
    params: HpoParams, records: Sequence[TrialRecord], bound: AccuracyBound
) -> TrialRecord | None:
    """The winner by `select` among complete trials within the bound; None when no trial is.
    Ties go to the better metric, then to the earlier trial.

    Trials are ranked and bounded on validation rows (`ranked`) when they have them, against
    the input model's figure on the same rows; the bound's baseline stands in when a record has
    none. A trial's standing depends on its own record only, so a trial that is not the winner
    now never becomes it later (the plan keeps only the leader's output in status).
    """
    eligible = _eligible(params, records, bound)
    if not eligible:
        return None
    sign = bound.sign
    key = SELECT_KEYS.get(params.select)
    if key is not None:
        return min(eligible, key=lambda rv: (rv[0].metrics[key], -sign * rv[1], rv[0].number))[0]
    return min(eligible, key=lambda rv: (-sign * rv[1], rv[0].number))[0]


def _eligible(
    params: HpoParams, records: Sequence[TrialRecord], bound: AccuracyBound
) -> list[tuple[TrialRecord, float]]:
    """The complete trials `select` chooses among, each with the figure it is ranked by: within
    the bound, and measured on what the rule ranks by."""
    key = SELECT_KEYS.get(params.select)
    eligible = []
    for r in records:
        figure = ranked(r)
        if r.state != "Complete" or figure is None or (key is not None and key not in r.metrics):
            continue
        value, own = figure
        if bound.admits(value, own):
            eligible.append((r, value))
    return eligible


def selection_reason(
    params: HpoParams, records: Sequence[TrialRecord], best: TrialRecord, bound: AccuracyBound
) -> str:
    """Why `best` won, in words: the rule, the figure it won by, among which trials, and (for
    several objectives) whether it is on the Pareto set."""
    count = len(_eligible(params, records, bound))
    among = (
        f"the {count} complete trials"
        if bound.unbounded
        else f"the {count} complete trials within maxDrop {bound.max_drop:g} of the input model"
    )
    key = SELECT_KEYS.get(params.select)
    if key is None:
        figure = ranked(best)
        value = "" if figure is None else f" ({figure[0]:.4g})"
        won = f"the best {bound.metric} on {metric_rows(best)} rows{value}"
    else:
        won = f"the lowest {key} ({best.metrics[key]:.4g})"
    reason = f"trial {best.number} has {won} of {among} (select: {params.select})"
    if len(params.objectives) < 2:
        return reason
    front = [r.number for r in pareto_set(params, records, metric_name=bound.metric)]
    place = "on" if best.number in front else "not on"
    return f"{reason}; it is {place} the Pareto set of {len(front)} trials {front}"
