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
    """The job's headline: the last output, its metric against the input, and the figures of
    the benchmark that timed that output (none when a later stage changed the model: a
    benchmark's speed-up describes the model it was given)."""
    done = [s for s in stages if s.phase == "Succeeded" and s.output is not None]
    if not done:
        return None
    last = done[-1]
    bench = result_benchmark(done)
    figures = last.metrics
    size = figures.get("sizeBytes")
    reference_size = figures.get("sizeBytesReference")
    own_ratio = size / reference_size if size is not None and reference_size else None
    return JobResult(
        uri=last.output.uri if last.output else None,
        metric=figures.get("metric"),
        baseline_metric=figures.get("referenceMetric"),
        speedup=bench.metrics.get("speedup") if bench else None,
        size_ratio=bench.metrics.get("sizeRatio") if bench else own_ratio,
        latency_ms=(bench.metrics.get("latencyMs") if bench else None) or figures.get("latencyMs"),
    )


def result_benchmark(stages: Sequence[StageStatus]) -> StageStatus | None:
    """The last succeeded benchmark if it timed the job's output (the last output's model),
    else None."""
    done = [s for s in stages if s.phase == "Succeeded" and s.output is not None]
    bench = next((s for s in reversed(done) if s.type == "benchmark"), None)
    if bench is None or bench.output is None or done[-1].output is None:
        return None
    return bench if bench.output.digest == done[-1].output.digest else None
