"""The job as a whole at the end of a step: its phase, what it spent and drew, its result."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from kompaktor.api.status import JobPhase, JobResult, StageStatus
from kompaktor.plan import spending
from kompaktor.plan.state import StepState
from kompaktor.plan.stopping import cancel_active
from kompaktor.plan.types import TERMINAL, ProbeInputs


def finish(work: StepState) -> None:
    """Write the job's phase, totals and result into status."""
    phase = _phase(work)
    update: dict[str, Any] = {
        "phase": phase,
        "stages": work.stages,
        "trials": work.trials,
        "observed_generation": work.ctx.generation,
        "cost_usd": round(spending.spent(work), 6),
        "energy_joules": round(spending.drawn(work), 3),
        "start_time": work.status.start_time or work.stamp,
        "result": result_of(work.stages),
    }
    if phase in TERMINAL and work.status.completion_time is None:
        update["completion_time"] = work.stamp
    work.status = work.status.model_copy(update=update)


def _phase(work: StepState) -> JobPhase:
    """The job's phase after this step: Succeeded when every stage is, Running once its
    inputs are probed; a failed job's runs are cancelled."""
    phase = work.status.phase
    # Stages are only done for the keys of the inputs as probed: while the probe is asked
    # (again after an edit), the stages' old Succeeded says nothing about the job.
    probing = any(isinstance(action, ProbeInputs) for action in work.actions)
    if (
        phase not in TERMINAL
        and not probing
        and work.stages
        and all(s.phase == "Succeeded" for s in work.stages)
        and len(work.stages) == len(work.spec.stages)
    ):
        phase = "Succeeded"
        work.event("JobSucceeded", f"all {len(work.stages)} stages succeeded")
    elif phase == "Pending" and work.status.input_digest is not None:
        phase = "Running"
    elif phase == "Failed":
        cancel_active(work, f"the job failed: {work.status.message}")
        if work.phase_before != "Failed":
            work.event("JobFailed", work.status.message or "the job failed", warning=True)
    return phase


def result_of(stages: Sequence[StageStatus]) -> JobResult | None:
    """The job's headline: the last output, its metric against the input, the benchmark."""
    done = [s for s in stages if s.phase == "Succeeded" and s.output is not None]
    if not done:
        return None
    last = done[-1]
    bench = next((s for s in reversed(done) if s.type == "benchmark"), None)
    figures = bench.metrics if bench else {}
    return JobResult(
        uri=last.output.uri if last.output else None,
        metric=last.metrics.get("metric"),
        baseline_metric=last.metrics.get("referenceMetric"),
        speedup=figures.get("speedup"),
        size_ratio=figures.get("sizeRatio"),
        latency_ms=figures.get("latencyMs") or last.metrics.get("latencyMs"),
    )
