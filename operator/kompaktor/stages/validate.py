"""Validate a job's stages before any work starts, with messages that name stage and field.

The same check runs at admission (controller), at reconcile, and in `kompaktor run`, so a bad
job file fails the same way everywhere: `stages[2] (quantize): params.mode: must be one of …`.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from kompaktor.api.spec import OptimizationJobSpec
from kompaktor.errors import JobSpecError
from kompaktor.models import ModelFormat, format_of
from kompaktor.stages.base import RESERVED_TYPES, PlanContext, StageParams, registry


def describe_errors(error: ValidationError, prefix: str = "") -> list[str]:
    """pydantic errors as `path: message` lines a user can act on."""
    lines = []
    for item in error.errors():
        path = ".".join(str(part) for part in item["loc"])
        where = f"{prefix}{path}" if path else prefix.rstrip(".") or "value"
        lines.append(f"{where}: {_message(item)}")
    return lines


def _message(item: Any) -> str:
    kind, ctx = item["type"], item.get("ctx") or {}
    if kind == "literal_error":
        expected = str(ctx.get("expected", "")).replace("'", "").replace(" or ", ", ")
        return f"must be one of {expected} (got {item.get('input')!r})"
    if kind == "extra_forbidden":
        return "unknown field"
    if kind == "missing":
        return "required field is missing"
    message = str(item["msg"])
    return message.removeprefix("Value error, ")


def parse_params(stage_type: str, params: dict[str, Any], where: str) -> StageParams:
    """The stage's typed params, or JobSpecError naming `where` and each bad field."""
    stage_cls = registry().get(stage_type)
    if stage_cls is None:
        raise JobSpecError(f"{where}: {_unknown_type(stage_type)}")
    try:
        return stage_cls.Params.model_validate(params)
    except ValidationError as error:
        raise JobSpecError("\n".join(describe_errors(error, f"{where}: params."))) from None


def _unknown_type(stage_type: str) -> str:
    known = ", ".join(sorted(registry()))
    if stage_type in RESERVED_TYPES:
        return f"type: {stage_type!r} is not available in this version (available: {known})"
    return f"type: unknown stage type {stage_type!r} (known: {known})"


def validate_job(spec: OptimizationJobSpec) -> list[StageParams]:
    """Every stage's parsed params, in order; raises JobSpecError listing every problem."""
    problems: list[str] = []
    parsed: list[StageParams] = []
    try:
        model_format: ModelFormat | None = format_of(spec.model.uri)
    except ValueError as error:
        problems.append(f"spec.model.uri: {error}")
        model_format = None
    earlier: list[str] = []
    for index, stage in enumerate(spec.stages):
        where = f"stages[{index}] ({stage.type})"
        try:
            params = parse_params(stage.type, stage.params, where)
        except JobSpecError as error:
            problems.append(str(error))
            earlier.append(stage.name)
            model_format = None
            continue
        parsed.append(params)
        impl = registry()[stage.type]()
        if len(stage.pool_names) > 1 and not impl.multi_pool:
            problems.append(f"{where}: pools: only benchmark stages run on several pools")
        if model_format is not None:
            if model_format not in impl.accepts:
                accepted = ", ".join(sorted(impl.accepts))
                problems.append(
                    f"{where}: cannot take a {model_format} model (it needs {accepted}; "
                    f"the stage before it or spec.model.uri gives {model_format})"
                )
            plan = PlanContext(stage.name, model_format, tuple(earlier), spec.dataset.task)
            try:
                impl.check(params, plan)
            except ValueError as error:
                problems.append(f"{where}: {error}")
                model_format = None  # what it would output is unknown too
            else:
                model_format = impl.output_format(model_format, params)
        earlier.append(stage.name)
    if problems:
        raise JobSpecError("\n".join(problems))
    return parsed
