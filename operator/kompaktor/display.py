"""Tables for people (rich) and one JSON summary for scripts, from the same status."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from rich.table import Table

from kompaktor.api.status import OptimizationJobStatus, StageStatus
from kompaktor.plan.clock import parse_iso


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


def stage_table(name: str, status: OptimizationJobStatus) -> Table:
    """Per stage: status, duration, metric, size, latency, cache hit."""
    table = Table(title=f"OptimizationJob {name}: {status.phase}", title_justify="left")
    for column in ("stage", "type", "status", "time", "metric", "size", "latency", "cached"):
        table.add_column(
            column, justify="right" if column in ("time", "metric", "size", "latency") else "left"
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
) -> list[str]:
    """What the run gave, after the table: the output and its figures, each multi-objective
    search's Pareto set (`searches`: hpo stage name -> its result details; `metric`: the
    job's objective metric, which names the metric objective), cost and energy, and why the
    job ended as it did."""
    lines = []
    result = status.result
    if result is not None and status.phase == "Succeeded":
        lines.append(f"output: {result.uri}")
        if result.metric is not None and result.baseline_metric is not None:
            lines.append(f"metric: {result.metric:.4f} (input model {result.baseline_metric:.4f})")
        if result.speedup is not None:
            lines.append(f"speedup at batch 1: {result.speedup:.2f}x")
        if result.size_ratio is not None:
            lines.append(f"size: {result.size_ratio:.3f}x of the input model")
    for stage, details in (searches or {}).items():
        lines += pareto_lines(stage, details, metric)
    if status.cost_usd is not None or status.energy_joules is not None:
        lines.append(
            f"cost: {status.cost_usd or 0:.4f} USD, energy: {status.energy_joules or 0:.1f} J"
        )
    if status.message:
        lines.append(f"reason: {status.message}")
    return lines


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
        params = ", ".join(f"{k}={_param(v)}" for k, v in trial["params"].items())
        lines.append(f"  {mark} trial {trial['number']}: {values}; {params}")
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


def _param(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def summary(name: str, status: OptimizationJobStatus, artifacts: str) -> dict[str, Any]:
    """The machine-readable outcome of a run (`kompaktor run --json`)."""
    dumped = status.model_dump(by_alias=True, exclude_none=True, mode="json")
    return {
        "job": name,
        "phase": status.phase,
        "message": status.message,
        "artifacts": artifacts,
        "stages": dumped.get("stages", []),
        "result": dumped.get("result"),
        "costUSD": status.cost_usd,
        "energyJoules": status.energy_joules,
        "finishedAt": datetime.now().astimezone().isoformat(timespec="seconds"),
    }
