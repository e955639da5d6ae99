"""The stage protocol: one subclass per technique, registered by its `type` name.

A stage gets a `StageContext` (its validated params, the input model, the dataset, a scratch
folder) and returns a `StageResult` (the output model and what the technique knows about it).
Everything else — fetching, evaluating, uploading, result.json — is the runner's job, so a
technique file holds only the technique.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationInfo, field_validator
from pydantic.alias_generators import to_camel

from kompaktor.api.run import MAX_CURVE, curve_stride, round_point
from kompaktor.api.spec import refuse_bool_for_number
from kompaktor.data import Dataset
from kompaktor.models import LoadedModel, ModelFormat


class StageParams(BaseModel):
    """Base for every stage's params: camelCase in job files, unknown keys rejected."""

    # allow_inf_nan: `lr: .inf` passed `gt=0` and diverged at run time; no param means infinity.
    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        frozen=True,
        allow_inf_nan=False,
    )

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_for_number(cls, value: Any, info: ValidationInfo) -> Any:
        """`epochs: true` is a mistake, not one epoch (pydantic's lax mode would read 1)."""
        return refuse_bool_for_number(cls, value, info)


P = TypeVar("P", bound=StageParams)
SparseLayers = Literal["run", "fine-tune", "densify"]
#: How a model's weights are stored: float32 until a quantize stage changes that.
Precision = Literal["float32", "int8", "fp16", "bf16"]


class Curve:
    """The validation curve a training stage reports, epoch by epoch.

    A stage calls `after_epoch` after each training epoch; a point is scored (the job's metric
    on validation rows) every `stride` epochs, at most MAX_CURVE points. In an HPO trial with a
    pruner, `prune(value)` is the study's verdict on the new point; once it says stop, the
    stage ends its training there and the run is recorded as pruned.
    """

    def __init__(
        self,
        *,
        stride: int | None = None,
        prune: Callable[[float], bool] | None = None,
        maximize: bool = True,
        log: Callable[[str], None] | None = None,
    ) -> None:
        self.stride = stride
        self.prune = prune
        self.maximize = maximize
        self.log = log
        self.points: list[float] = []
        self.pruned = False

    def due(self, epoch: int, epochs: int) -> bool:
        """Whether epoch `epoch` (from 1) of `epochs` gets a curve point."""
        stride = self.stride or curve_stride(epochs)
        return epoch % stride == 0 and len(self.points) < MAX_CURVE and not self.pruned

    def after_epoch(self, epoch: int, epochs: int, score: Callable[[], float]) -> bool:
        """Score the epoch when a point is due; True means stop training (pruned)."""
        if not self.due(epoch, epochs):
            return self.pruned
        value = score()
        if value != value or abs(value) == float("inf"):  # a diverged run: the worst value
            value = -1e30 if self.maximize else 1e30
        value = round_point(value)
        self.points.append(value)
        if self.prune is not None and self.prune(value):
            self.pruned = True
        if self.log is not None:
            verdict = ": pruned, training stops" if self.pruned else ""
            self.log(f"validation point {len(self.points)} (epoch {epoch}): {value:.6g}{verdict}")
        return self.pruned


@dataclass
class StageContext(Generic[P]):
    """What a stage run sees. `resolve` turns an artifact URI into a local file; `curve` takes
    the validation points of a stage that trains in epochs; `max_drop` is the job's objective
    bound when the caller gave it (a standalone hpo run)."""

    params: P
    model: LoadedModel
    dataset: Dataset
    work_dir: Path
    seed: int
    metric: str
    reference: LoadedModel
    resolve: Callable[[str], Path]
    log: Callable[[str], None] = print
    report: Callable[[int, float], None] = lambda step, value: None
    curve: Curve = field(default_factory=Curve)
    max_drop: float | None = None


@dataclass
class StageResult:
    """The output model (a torch module to export, or a file already written) and its facts.

    `metrics` are numbers (sparsity, ranks kept, …) merged into result.json's metrics;
    `details` is anything else worth keeping (per-layer ranks, chosen params, …).
    """

    module: Any = None
    path: Path | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)
    output_format: ModelFormat | None = None


@dataclass(frozen=True)
class PlanContext:
    """What validation knows before any work starts: the model format each stage will get,
    and whether an earlier stage quantized it (`quantized_by` names that stage)."""

    stage_name: str
    input_format: ModelFormat
    earlier_stages: tuple[str, ...]
    task: str
    input_precision: Precision = "float32"
    quantized_by: str | None = None


class Stage(ABC, Generic[P]):
    """A technique. Subclasses set `type`, `Params`, and the formats they accept/produce."""

    Params: ClassVar[type[StageParams]]
    type: ClassVar[str]
    accepts: ClassVar[frozenset[ModelFormat]] = frozenset({"pt2", "torchscript"})
    #: None: the output has the input's format.
    produces: ClassVar[ModelFormat | None] = "pt2"
    multi_pool: ClassVar[bool] = False
    #: The stage trains in epochs and reports a validation curve (`StageContext.curve`), so an
    #: HPO pruner can stop its trials early.
    reports_curve: ClassVar[bool] = False
    #: What the stage does with layers its input runs on kompaktor_kernels' sparse kernels
    #: (prune's `runtime: sparse`), whose weights are CSR buffers: "run" them as they are,
    #: "fine-tune" them (dense while the stage runs, zero weights held at zero, sparse again in
    #: its output), or "densify" them for good (`kompaktor.stages.sparse_layers`).
    sparse_layers: ClassVar[SparseLayers] = "densify"

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "type" in cls.__dict__:
            _REGISTRY[cls.type] = cls

    def output_format(self, input_format: ModelFormat, params: P) -> ModelFormat:
        """The format this stage writes for a given input (quantize writes ONNX, …). A module
        it changes stays TorchScript when it came so: torch.export cannot take a ScriptModule."""
        if self.produces == "pt2" and input_format == "torchscript":
            return "torchscript"
        return self.produces or input_format

    def format_cause(self, input_format: ModelFormat, params: P, output: ModelFormat) -> str | None:
        """For a refusal by the next stage: which of the params make this stage write `output`
        models, when its output format depends on a choice it makes (None: it does not)."""
        return None

    def output_precision(self, input_precision: Precision, params: P) -> Precision:
        """How the output's weights are stored: as the input's unless the stage quantizes
        (train, prune, … keep a bf16 model bf16)."""
        return input_precision

    def check(self, params: P, plan: PlanContext) -> None:
        """Reject what cannot work before any work starts; raise ValueError with the field."""

    def preflight(self, params: P) -> None:
        """The checks that need no plan, made by `kompaktor stage run` before it loads anything;
        raise ValueError with the field."""

    def chooses_by_max_drop(self, params: P) -> bool:
        """Whether the output depends on the job's maxDrop (quantize's `fallback: auto` keeps
        layers float until it is met): the plan then keys its runs by maxDrop too."""
        return False

    def epochs(self, params: P) -> int:
        """Training epochs a run with these params reports curve points for (0: none)."""
        return 0

    @abstractmethod
    def run(self, ctx: StageContext[P]) -> StageResult:
        """Do the technique's work."""


_REGISTRY: dict[str, type[Stage[Any]]] = {}

#: Types the design names; listed so a job using one that is not built yet says so plainly.
RESERVED_TYPES = ("train", "hpo", "prune", "distill", "compress", "quantize", "benchmark")


def registry() -> dict[str, type[Stage[Any]]]:
    """Every registered stage type (importing kompaktor.stages registers the built-ins)."""
    return dict(_REGISTRY)
