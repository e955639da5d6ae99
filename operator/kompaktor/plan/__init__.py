"""The pure pipeline plan: no kopf, no kubernetes, no I/O (DESIGN.md §1, §3)."""

from kompaktor.plan.job import result_of
from kompaktor.plan.machine import step
from kompaktor.plan.types import (
    Action,
    CacheProbed,
    CancelRun,
    EmitEvent,
    EnsureRun,
    InputsProbed,
    JobContext,
    ModelFile,
    Observation,
    ProbeCache,
    ProbeFailed,
    ProbeInputs,
    Requeue,
    RunFailed,
    RunRequest,
    RunStarted,
    RunSucceeded,
    StepResult,
    WriteRecord,
)

__all__ = [
    "Action",
    "CacheProbed",
    "CancelRun",
    "EmitEvent",
    "EnsureRun",
    "InputsProbed",
    "JobContext",
    "ModelFile",
    "Observation",
    "ProbeCache",
    "ProbeFailed",
    "ProbeInputs",
    "Requeue",
    "RunFailed",
    "RunRequest",
    "RunStarted",
    "RunSucceeded",
    "StepResult",
    "WriteRecord",
    "result_of",
    "step",
]
