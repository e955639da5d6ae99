"""Tables for people (rich) and one JSON summary for scripts, from the same status."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from rich.table import Table

from kompaktor.api.status import OptimizationJobStatus, StageStatus, TrialRecord
from kompaktor.plan.clock import parse_iso
from kompaktor.plan.job import result_benchmark


def _duration(stage: StageStatus) -> str:
    if not stage.start_time:
        return ""
    if not stage.completion_time:
        return "…"
    seconds = (parse_iso(stage.completion_time) - parse_iso(stage.start_time)).total_seconds()
    return f"{seconds:.0f}s"


def _number(value: float | None, fmt: str) -> str:
    return "" if value is None else format(value, fmt)


def _size(value: float | None) -> str:
    if value is None:
        return ""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return ""


PHASE_STYLE = {"Succeeded": "green", "Failed": "red", "Running": "cyan", "Retrying": "yellow"}


def stage_table(name: str, status: OptimizationJobStatus, metric: str = "metric") -> Table:
    """Per stage: status, duration, the job's metric (the column named by it), size, latency,
    cache hit."""
    table = Table(title=f"OptimizationJob {name}: {status.phase}", title_justify="left")
    for column in ("stage", "type", "status", "time", metric, "size", "latency", "cached"):
        table.add_column(
            column, justify="right" if column in ("time", metric, "size", "latency") else "left"
        )
    for stage in status.stages:
        style = PHASE_STYLE.get(stage.phase, "")
        metrics = stage.metrics
        table.add_row(
            stage.name,
            stage.type,
            f"[{style}]{stage.phase}[/]" if style else stage.phase,
            _duration(stage),
            _number(metrics.get("metric"), ".4f"),
            _size(metrics.get("sizeBytes")),
            _number(metrics.get("latencyMs"), ".3f") + (" ms" if "latencyMs" in metrics else ""),
            "yes" if stage.cached else "",
        )
    return table


def result_lines(
    status: OptimizationJobStatus,
    searches: Mapping[str, Mapping[str, Any]] | None = None,
    *,
    metric: str = "metric",
    max_drop: float | None = None,
) -> list[str]:
    """What the run gave, after the table, a fact a line: the output, its metric against the
    input model and the bound it had to keep (`max_drop`), the speed-up at each batch size the
    benchmark timed, the size, each search's winner and Pareto set (`searches`: hpo stage name
    -> its result details; `metric`: the job's objective metric), cost and energy with how the
    energy was known, and why the job ended as it did."""
    lines = []
    result = status.result
    if result is not None and status.phase == "Succeeded":
        lines.append(f"output: {result.uri}")
        if result.metric is not None and result.baseline_metric is not None:
            bound = "" if max_drop is None else f", maxDrop {max_drop:g}"
            against = f"input {result.baseline_metric:.4f}{bound}"
            lines.append(f"{metric} {result.metric:.4f} ({against})")
        lines += _present(_speedup_line(status), _size_line(status))
        lines += _quantization_notes(status)
    for stage, details in (searches or {}).items():
        lines += _present(winner_line(stage, details))
        lines += pareto_lines(stage, details, metric)
    lines += _present(_spending_line(status))
    if status.message:
        lines.append(f"reason: {status.message}")
    return lines


def _present(*lines: str | None) -> list[str]:
    return [line for line in lines if line is not None]


def _speedup_line(status: OptimizationJobStatus) -> str:
    """The speed-up over the input model at every batch size the benchmark of the output timed
    (its `speedup@N` metrics; the headline batch-1 figure alone when there are none), or why
    there is none: a benchmark before the last model-changing stage timed another model."""
    bench = result_benchmark(status.stages)
    if bench is None:
        earlier = [s.name for s in status.stages if s.type == "benchmark"]
        why = (
            f"benchmark {earlier[-1]!r} timed the model before the stages after it; end the job "
            "with a benchmark stage"
            if earlier
            else "add a benchmark stage at the end of the job"
        )
        return f"speed-up over the input model: not measured ({why})"
    by_size = sorted(
        (int(key.partition("@")[2]), value)
        for key, value in bench.metrics.items()
        if key.startswith("speedup@") and key.partition("@")[2].isdigit()
    )
    figures = bench.metrics
    if not by_size and "speedup" in figures:
        by_size = [(int(figures.get("latencyBatch", 1)), figures["speedup"])]
    sizes = ", ".join(
        f"{_times(value, figures.get(f'speedupMax@{size}'))} at batch {size}"
        for size, value in by_size
    )
    return f"speed-up over the input model: {sizes or 'not measured'}"


def _times(speedup: float, fastest_block: float | None) -> str:
    """A speed-up as `2.50x`, saying `slower` when every timing block was (`0.77x` alone
    reads as a gain; one model against itself reads 0.98x and is not slower)."""
    slower = (speedup if fastest_block is None else fastest_block) < 1
    return f"{speedup:.2f}x" + (" (slower)" if slower else "")


def _quantization_notes(status: OptimizationJobStatus) -> list[str]:
    """Int8 that ran slower than the float ONNX it came from: the speed-up over a torch input
    is then the runtime's, not quantization's, and a float export would be faster still."""
    return [
        f"note: {s.name}'s int8 model runs at {s.metrics['speedupOverFloat']:.2f}x the speed of "
        "its float ONNX at batch 1: int8 costs time here, and any speed-up over a torch input "
        "is ONNX Runtime's"
        for s in status.stages
        if s.type == "quantize"
        and s.phase == "Succeeded"
        and s.metrics.get("speedupOverFloat", 1.0) < 1
    ]


def _size_line(status: OptimizationJobStatus) -> str | None:
    result = status.result
    if result is None or result.size_ratio is None:
        return None
    done = [s for s in status.stages if s.phase == "Succeeded" and "sizeBytes" in s.metrics]
    size = f"{_size(done[-1].metrics['sizeBytes'])}, " if done else ""
    return f"size: {size}{result.size_ratio:.3f}x of the input model"


def _spending_line(status: OptimizationJobStatus) -> str | None:
    """Cost (where a pool has a price: locally there is none) and energy, labelled with how
    it was known: most local figures are estimates from CPU time, not measurements."""
    if status.cost_usd is None and status.energy_joules is None:
        return None
    parts = [f"cost: {status.cost_usd:.4f} USD"] if status.cost_usd else []
    cached = bool(status.stages) and all(s.cached for s in status.stages)
    how = "every stage came from the cache" if cached else energy_method_label(status)
    parts.append(f"energy: {_joules(status.energy_joules or 0.0)}" + (f" ({how})" if how else ""))
    return ", ".join(parts)


def _joules(value: float) -> str:
    if value >= 1000:
        return f"{value / 1000:.1f} kJ"
    return f"{value:.0f} J" if value >= 10 else f"{value:.1f} J"


def energy_method_label(status: OptimizationJobStatus) -> str | None:
    """How the job's energy figure was known, from its stages' methods: an estimate says
    what it assumed (the watts per busy core this machine's runs use)."""
    from kompaktor.metrics.energy import cpu_count, pool_watts

    methods = {s.energy_method for s in status.stages if s.energy_method is not None}
    assumed = f"{pool_watts() / cpu_count():g} W per busy core x CPU time"
    if methods == {"estimate"}:
        return f"estimated: {assumed}"
    if "estimate" in methods:
        return f"partly estimated: {assumed}"
    if methods:
        return "measured: " + " + ".join(m.upper() for m in sorted(methods))
    return None


def winner_line(stage: str, details: Mapping[str, Any]) -> str | None:
    """A search's winning trial and its params, from the stage's result details."""
    best, params = details.get("bestTrial"), details.get("bestParams")
    if best is None or params is None:
        return None
    total = len(details.get("trials") or [])
    return f"{stage}: trial {best}{f' of {total}' if total else ''} won: {_params(params)}"


#: Most Pareto-set trials listed after the table (the stage's result.json has them all).
MAX_PARETO_LINES = 10


def pareto_lines(stage: str, details: Mapping[str, Any], metric: str) -> list[str]:
    """A multi-objective search's Pareto set, one trial a line (objective values, params), the
    selected trial marked `*`; nothing for one objective, whose winner the table shows."""
    front: list[dict[str, Any]] = details.get("paretoSet") or []
    if not front:
        return []
    best = details.get("bestTrial")
    size = f"{len(front)} trial{'s' if len(front) > 1 else ''}"
    rows = f", {metric} on {details['metricRows']} rows" if "metricRows" in details else ""
    where = "" if any(t["number"] == best for t in front) else ", which is not on it"
    lines = [f"{stage}: Pareto set of {size}{rows} (* selected: trial {best}{where})"]
    for trial in front[:MAX_PARETO_LINES]:
        mark = "*" if trial["number"] == best else " "
        values = ", ".join(_objective(k, v, metric) for k, v in trial["values"].items())
        lines.append(f"  {mark} trial {trial['number']}: {values}; {_params(trial['params'])}")
    if len(front) > MAX_PARETO_LINES:
        lines.append(f"    and {len(front) - MAX_PARETO_LINES} more in the stage's result.json")
    return lines


def _objective(name: str, value: float, metric: str) -> str:
    """An objective's value with its name and unit (the metric objective by the job's metric)."""
    if name == "latency":
        return f"latency {value:.3f} ms"
    if name == "size":
        return f"size {_size(value)}"
    return f"{metric} {value:.4f}"


def _params(params: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={_param(v)}" for k, v in params.items())


def _param(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


class ProgressLines:
    """`kompaktor run`'s progress where no live table can be drawn (a log file, a pipe): one
    plain line per event, found by comparing each status with the one before. Trials already
    finished when the run starts (a resumed or rerun job's) are not reported again, and stages
    already finished are said to be from an earlier run."""

    def __init__(self, metric: str = "metric") -> None:
        self._metric = metric
        self._phases: dict[str, str] = {}
        self._trials: dict[tuple[str, int], str] | None = None

    def __call__(self, status: OptimizationJobStatus) -> list[str]:
        """The events since the last call: trials first (a search's last trial ends before
        its stage does, in the same step), then the stages in job order."""
        lines = []
        seen, self._trials = self._trials, {(t.stage, t.number): t.state for t in status.trials}
        for trial in status.trials:
            if seen is not None and seen.get((trial.stage, trial.number)) != trial.state:
                lines += _present(_trial_event(trial, self._metric))
        for stage in status.stages:
            if self._phases.get(stage.name, "Pending") != stage.phase:
                lines += _present(_stage_event(stage, self._metric, earlier=seen is None))
            self._phases[stage.name] = stage.phase
        return lines


def _stage_event(stage: StageStatus, metric: str, *, earlier: bool = False) -> str | None:
    """A stage's new phase in words, a finished stage with its key figure; `earlier`: the
    phase was already in the status this run started from."""
    what = f"{stage.name} ({stage.type})"
    why = f": {stage.message}" if stage.message else ""
    match stage.phase:
        case "Running":
            again = f", attempt {stage.attempts}" if stage.attempts > 1 else ""
            return f"{what}: started{again}"
        case "Succeeded":
            how = _how_it_finished(stage, earlier)
            note = f" ({stage.message})" if stage.message else ""  # over the bound, not gated
            return f"{what}: succeeded{how}: {_key_figure(stage, metric)}{note}"
        case "Retrying":
            return f"{what}: attempt {stage.attempts} failed, retrying{why}"
        case "Failed" | "Cancelled":
            return f"{what}: {stage.phase.lower()}{why}"
    return None


def _how_it_finished(stage: StageStatus, earlier: bool) -> str:
    if stage.cached:  # this run's cache hits can be in the first status it shows
        return " (cached)"
    if earlier:
        return " in an earlier run"
    took = _duration(stage)
    return f" in {took}" if took else ""


def _key_figure(stage: StageStatus, metric: str) -> str:
    """What a finished stage is for: a benchmark's speed-up, a search's winner, else the
    output's metric and size."""
    figures = stage.metrics
    if stage.type == "benchmark" and "speedup" in figures:
        speedup = _times(figures["speedup"], figures.get("speedupMax"))
        return f"speed-up {speedup} at batch {figures.get('latencyBatch', 1):g}"
    shown = [f"{metric} {figures['metric']:.4f}"] if "metric" in figures else []
    if stage.type == "hpo" and "bestTrial" in figures:
        shown.insert(0, f"trial {figures['bestTrial']:g} won")
    if "sizeBytes" in figures:
        shown.append(_size(figures["sizeBytes"]))
    return ", ".join(shown)


def _trial_event(trial: TrialRecord, metric: str) -> str | None:
    """A trial that has just finished: how, its figure (or why it has none), its params."""
    if trial.state not in ("Complete", "Pruned", "Failed"):
        return None
    said = _trial_figure(trial, metric) if trial.state == "Complete" else trial.message
    how = f"{trial.state.lower()}: {said}" if said else trial.state.lower()
    return f"{trial.stage}: trial {trial.number} {how}; {_params(trial.params)}"


def _trial_figure(trial: TrialRecord, metric: str) -> str | None:
    """The figure a search ranks a trial by: on validation rows where it held some out."""
    figures = trial.metrics
    if "valMetric" in figures:
        return f"validation {metric} {figures['valMetric']:.4f}"
    return f"{metric} {figures['metric']:.4f}" if "metric" in figures else None


#: What `--json` gives of each search's result details: its winner and Pareto set.
SEARCH_KEYS = ("bestTrial", "bestParams", "selection", "paretoSet")


def summary(
    name: str,
    status: OptimizationJobStatus,
    artifacts: str,
    searches: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """The machine-readable outcome of a run (`kompaktor run --json`): what the text summary
    says, each search's winner (`searches`: hpo stage name -> its result details) included."""
    dumped = status.model_dump(by_alias=True, exclude_none=True, mode="json")
    return {
        "job": name,
        "phase": status.phase,
        "message": status.message,
        "artifacts": artifacts,
        "stages": dumped.get("stages", []),
        "trials": dumped.get("trials", []),
        "searches": {
            stage: {key: details[key] for key in SEARCH_KEYS if key in details}
            for stage, details in (searches or {}).items()
        },
        "result": dumped.get("result"),
        "costUSD": status.cost_usd,
        "energyJoules": status.energy_joules,
        "finishedAt": datetime.now().astimezone().isoformat(timespec="seconds"),
    }
