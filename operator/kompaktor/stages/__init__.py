"""Stage types. Importing this package registers every built-in technique."""

from kompaktor.stages import builtin as _builtin  # noqa: F401  (registers the stages)
from kompaktor.stages.base import (
    RESERVED_TYPES,
    PlanContext,
    Stage,
    StageContext,
    StageParams,
    StageResult,
    registry,
)
from kompaktor.stages.validate import validate_job

__all__ = [
    "RESERVED_TYPES",
    "PlanContext",
    "Stage",
    "StageContext",
    "StageParams",
    "StageResult",
    "registry",
    "validate_job",
]
