"""What goes into the plan (the job, observations) and what comes out (actions).

The plan is level-based like a Kubernetes controller: every step says which runs should be
active (`EnsureRun`, idempotent by `RunRequest.run_id`), so an executor that restarted simply
does what the latest step asks. Observations are facts the driver saw since the last step.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from kompaktor.api.run import RunRecord
from kompaktor.api.spec import OptimizationJobSpec
from kompaktor.api.status import OptimizationJobStatus

#: The phases a job, a stage or a run ends in.
TERMINAL = ("Succeeded", "Failed", "Cancelled")


@dataclass(frozen=True)
class JobContext:
    """The job as the plan sees it: spec plus what the operator or runner configured."""

    name: str
    spec: OptimizationJobSpec
    artifacts_uri: str
    generation: int = 1
    namespace: str | None = None
    default_pool: str | None = None
    pool_prices: Mapping[str, float] = field(default_factory=dict)
    #: Each pool's full-load draw, for the energy of failed attempts (they leave no reading).
    pool_watts: Mapping[str, float] = field(default_factory=dict)
    retry_base_seconds: float = 10.0


# ---------------------------------------------------------------------------- observations


@dataclass(frozen=True)
class InputsProbed:
    """Digests of the job's input model and dataset (the root of every cache key), and of each
    model file stage params name (`ProbeInputs.model_files`), by URI."""

    model_digest: str
    dataset_digest: str
    model_files: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class CacheProbed:
    """Whether a run key already has a finished output (`record`) in the artifact store."""

    key: str
    record: RunRecord | None


@dataclass(frozen=True)
class RunStarted:
    """A run's Job was seen (`job_uid`), or its pod placed on `node`: whichever is new."""

    run_id: str
    node: str | None = None
    pool: str | None = None
    #: The uid of the run's Job (batch Jobs only): once recorded, a Job missing was deleted.
    job_uid: str | None = None


@dataclass(frozen=True)
class RunSucceeded:
    run_id: str
    record: RunRecord


@dataclass(frozen=True)
class RunFailed:
    run_id: str
    reason: str
    message: str
    retryable: bool = True
    #: How long the failed attempt ran: it is paid for (cost) as a finished run is.
    duration_seconds: float = 0.0


@dataclass(frozen=True)
class ProbeFailed:
    """An input could not be read (missing model, unreadable bucket): the job cannot start."""

    reason: str
    message: str


Observation = InputsProbed | CacheProbed | RunStarted | RunSucceeded | RunFailed | ProbeFailed

# ---------------------------------------------------------------------------- actions


@dataclass(frozen=True)
class RunRequest:
    """Everything an executor needs to start one `kompaktor stage run` process or pod."""

    run_id: str  # deterministic: <stage>-<key prefix>-a<attempt>[-t<trial>]
    job: str
    stage: str
    stage_type: str
    params: dict[str, Any]
    key: str
    input_uri: str
    dataset_uri: str
    output_uri: str
    reference_uri: str
    metric: str
    task: str
    seed: int
    attempt: int
    pool: str | None = None
    timeout_seconds: float | None = None
    trial: int | None = None
    #: An HPO trial's pruning context (TrialContext), passed as `--trial JSON`.
    trial_context: dict[str, Any] | None = None
    #: The sha256 digests the plan keyed the run by: the stage checks the files it fetches.
    input_digest: str | None = None
    reference_digest: str | None = None
    #: The job's objective.maxDrop, for the stages that choose by it (`--max-drop`).
    max_drop: float | None = None

    def command(self) -> list[str]:
        """The stage command line, the same for a local process and a pod."""
        import json

        extra = []
        if self.trial_context is not None:
            extra = ["--trial", json.dumps(self.trial_context, separators=(",", ":"))]
        if self.input_digest is not None:
            extra += ["--input-digest", self.input_digest]
        if self.reference_digest is not None:
            extra += ["--reference-digest", self.reference_digest]
        if self.max_drop is not None:
            extra += ["--max-drop", repr(self.max_drop)]
        return [
            "kompaktor",
            "stage",
            "run",
            "--type",
            self.stage_type,
            "--params",
            json.dumps(self.params, sort_keys=True),
            "--input",
            self.input_uri,
            "--dataset",
            self.dataset_uri,
            "--output",
            self.output_uri,
            "--reference",
            self.reference_uri,
            "--metric",
            self.metric,
            "--task",
            self.task,
            "--seed",
            str(self.seed),
            *extra,
        ]


@dataclass(frozen=True)
class ModelFile:
    """A model file that stage params name by URI (a distill teacher). `where` is the field
    (`stage 'd' (spec.stages[0], distill): params.teacher.uri`), so an unreadable file is
    reported by it."""

    where: str
    uri: str


@dataclass(frozen=True)
class ProbeInputs:
    model_uri: str
    dataset_uri: str
    model_files: tuple[ModelFile, ...] = ()


@dataclass(frozen=True)
class ProbeCache:
    key: str
    output_uri: str


@dataclass(frozen=True)
class EnsureRun:
    request: RunRequest


@dataclass(frozen=True)
class CancelRun:
    run_id: str


@dataclass(frozen=True)
class WriteRecord:
    """Store a record under a run key (an HPO stage's chosen trial), so a re-run hits cache."""

    output_uri: str
    record: RunRecord


@dataclass(frozen=True)
class EmitEvent:
    type: Literal["Normal", "Warning"]
    reason: str
    message: str


@dataclass(frozen=True)
class Requeue:
    """Wake the driver after this many seconds even if nothing happens (backoff, budget)."""

    after_seconds: float


@dataclass(frozen=True)
class DeleteArtifacts:
    uri: str


Action = (
    ProbeInputs
    | ProbeCache
    | EnsureRun
    | CancelRun
    | WriteRecord
    | EmitEvent
    | Requeue
    | DeleteArtifacts
)


@dataclass(frozen=True)
class StepResult:
    status: OptimizationJobStatus
    actions: list[Action] = field(default_factory=list)

    @property
    def active(self) -> list[RunRequest]:
        return [a.request for a in self.actions if isinstance(a, EnsureRun)]
