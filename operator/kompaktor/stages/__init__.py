"""Stage types. Importing this package registers every built-in technique.

The registry is light: the control plane reads every stage's Params, formats and plan-time
checks without torch, ONNX or scikit-learn, so a technique module imports those (and its
helpers in kompaktor.surgery, .compression, .quant, .training) inside `run` and the functions
it calls (tests/unit/test_light_imports.py holds it to that).
"""

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
