"""The target stage's params model read by name: the names a job file may give its params,
and whether a param is an int or a float, so a search space is checked and typed against it."""

from __future__ import annotations

import builtins
import types
import typing
from typing import Any, Literal

from kompaktor.stages.base import Stage, StageParams


def params_model(stage: builtins.type[Stage[Any]]) -> builtins.type[StageParams]:
    """The target's params model (typed here: `Stage.type` shadows `type` in Stage's body)."""
    model: builtins.type[StageParams] = stage.Params
    return model


def param_names(model: type[StageParams]) -> set[str]:
    names = set()
    for name, info in model.model_fields.items():
        names |= {name, info.alias or camel(name)}
    return names


def canonical_name(model: type[StageParams], key: str) -> str:
    for name, info in model.model_fields.items():
        if key in (name, info.alias, camel(name)):
            return name
    return key


def camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


def number_kind(model: type[StageParams], key: str) -> Literal["float", "int"] | None:
    """int or float when the model's param `key` is of that type (or that type or None)."""
    field = model.model_fields.get(canonical_name(model, key))
    if field is None:
        return None
    kind = field.annotation
    if typing.get_origin(kind) in (typing.Union, types.UnionType):
        rest = [a for a in typing.get_args(kind) if a is not type(None)]
        kind = rest[0] if len(rest) == 1 else None
    return "int" if kind is int else "float" if kind is float else None
