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
from typing import Any, ClassVar, Generic, TypeVar

from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel

from kompaktor.data import Dataset
from kompaktor.models import LoadedModel, ModelFormat


class StageParams(BaseModel):
    """Base for every stage's params: camelCase in job files, unknown keys rejected."""

    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True
    )


P = TypeVar("P", bound=StageParams)


@dataclass
class StageContext(Generic[P]):
    """What a stage run sees. `resolve` turns an artifact URI into a local file."""

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
    """What validation knows before any work starts: the model format each stage will get."""

    stage_name: str
    input_format: ModelFormat
    earlier_stages: tuple[str, ...]
    task: str


class Stage(ABC, Generic[P]):
    """A technique. Subclasses set `type`, `Params`, and the formats they accept/produce."""

    Params: ClassVar[type[StageParams]]
    type: ClassVar[str]
    accepts: ClassVar[frozenset[ModelFormat]] = frozenset({"pt2", "torchscript"})
    #: None: the output has the input's format.
    produces: ClassVar[ModelFormat | None] = "pt2"
    multi_pool: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "type" in cls.__dict__:
            _REGISTRY[cls.type] = cls

    def output_format(self, input_format: ModelFormat, params: P) -> ModelFormat:
        """The format this stage writes for a given input (quantize writes ONNX, …)."""
        return self.produces or input_format

    def check(self, params: P, plan: PlanContext) -> None:
        """Reject what cannot work before any work starts; raise ValueError with the field."""

    @abstractmethod
    def run(self, ctx: StageContext[P]) -> StageResult:
        """Do the technique's work."""


_REGISTRY: dict[str, type[Stage[Any]]] = {}

#: Types the design names; listed so a job using one that is not built yet says so plainly.
RESERVED_TYPES = ("train", "hpo", "prune", "distill", "compress", "quantize", "benchmark")


def registry() -> dict[str, type[Stage[Any]]]:
    """Every registered stage type (importing kompaktor.stages registers the built-ins)."""
    return dict(_REGISTRY)
