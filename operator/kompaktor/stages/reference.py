"""The params reference: each stage type's params as a job file writes them (name, type,
default, allowed values, description), read from the stages' Params models, so `kompaktor
params` and docs/stages.md say what validation accepts and cannot drift from it."""

from __future__ import annotations

import inspect
import re
import textwrap
import types
import typing
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import annotated_types
import yaml
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from kompaktor.stages.base import registry

#: Where the generated reference is kept (relative to the repository root).
REFERENCE_PATH = "docs/stages.md"
REGENERATE = f"kompaktor params --markdown -o {REFERENCE_PATH}"
_SCALARS: dict[Any, str] = {int: "integer", float: "number", str: "string", bool: "boolean"}
_BOUNDS = (
    (annotated_types.Gt, "gt", ">"),
    (annotated_types.Ge, "ge", ">="),
    (annotated_types.Lt, "lt", "<"),
    (annotated_types.Le, "le", "<="),
)


@dataclass(frozen=True)
class ParamDoc:
    """One param as the reference shows it; `name` is its path in `params:` (`teacher.uri`)."""

    name: str
    type: str
    default: str
    allowed: str
    description: str


def stage_types() -> list[str]:
    """The built-in stage types, sorted (a test's own stage types are not kompaktor's)."""
    return sorted(t for t, stage in registry().items() if stage.__module__.startswith("kompaktor."))


def summary(stage_type: str) -> str:
    """What the stage type does: the first sentence of its module's docstring."""
    module = inspect.getmodule(registry()[stage_type])
    first = (inspect.getdoc(module) or "").split("\n\n")[0].replace("\n", " ")
    text = re.sub(r"^`?[\w-]+`?: ", "", first)
    return text[:1].upper() + text[1:]


def param_docs(model: type[BaseModel], prefix: str = "") -> list[ParamDoc]:
    """The model's params in declaration order, each nested model's right after its field."""
    rows: list[ParamDoc] = []
    for name, info in model.model_fields.items():
        path = prefix + (info.alias or name)
        rows.append(
            ParamDoc(
                name=path,
                type=_type_name(info.annotation),
                default=_default(info),
                allowed=_allowed(info),
                description=info.description or "",
            )
        )
        for suffix, nested in _nested_models(info.annotation):
            rows += param_docs(nested, f"{path}{suffix}")
    return rows


def render_text(stage_types: list[str]) -> str:
    """The reference for a terminal: one block per type, one entry per param."""
    blocks = []
    for stage_type in stage_types:
        lines = [f"{stage_type}: {summary(stage_type)}"]
        for row in param_docs(registry()[stage_type].Params):
            facts = [row.type, f"default {row.default}", row.allowed]
            lines.append(f"  {row.name}: {', '.join(fact for fact in facts if fact)}")
            lines += textwrap.wrap(
                row.description, width=96, initial_indent=" " * 6, subsequent_indent=" " * 6
            )
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks) + "\n"


def render_markdown(stage_types: list[str]) -> str:
    """The reference as Markdown, a table per type (docs/stages.md: every built-in type)."""
    parts = [
        "# Stage params\n",
        f"Generated from the stages' params models by `{REGENERATE}`; a test fails when this "
        "file is stale, so change a param's description in its model, not here.\n",
        "A stage's `params:` take these names (camelCase, as a job file writes them; "
        "`kompaktor validate` refuses any other). `a.b` is field `b` of the mapping `a`, "
        "`a[].b` of each item of the list `a`, `a.<name>.b` of each entry of the mapping `a`. "
        "`kompaktor params TYPE` prints the same on a terminal.\n",
        "`kompaktor validate JOB` (and `kompaktor run` before it starts) checks a job against "
        "these, and that the models (the input, a distill teacher) and `.npz` dataset it "
        "names by path or `file://` exist "
        "(relative paths are relative to the job file's folder) and that the dataset has the "
        "arrays a run reads; `s3://` objects are not looked at. `objective.maxDrop` is a "
        "fraction for accuracy and fidelity: 0.01 is one point, and 1 or more is refused.\n",
    ]
    for stage_type in stage_types:
        parts.append(f"## {stage_type}\n\n{summary(stage_type)}\n")
        rows = param_docs(registry()[stage_type].Params)
        table = [
            "| param | type | default | allowed | description |",
            "| --- | --- | --- | --- | --- |",
        ]
        table += ["| " + " | ".join(_cell(cell) for cell in _cells(row)) + " |" for row in rows]
        parts.append("\n".join(table) + "\n")
    return "\n".join(parts)


def _cells(row: ParamDoc) -> tuple[str, ...]:
    code = "" if row.default in ("required", "unset") else "`"
    return (f"`{row.name}`", row.type, f"{code}{row.default}{code}", row.allowed, row.description)


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _type_name(annotation: Any) -> str:
    """The type in a YAML user's words: integer, number, string, boolean, list of …"""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is Annotated:
        return _type_name(args[0])
    if origin in (typing.Union, types.UnionType):
        names = list(dict.fromkeys(_type_name(a) for a in args if a is not type(None)))
        return "number" if set(names) == {"integer", "number"} else " or ".join(names)
    if origin is Literal:
        return "string" if all(isinstance(a, str) for a in args) else "value"
    if origin in (list, tuple, set, frozenset):
        return f"list of {_type_name(args[0])}" if args else "list"
    if origin is dict:
        return f"mapping of {_type_name(args[1])}" if len(args) == 2 else "mapping"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "mapping"
    return _SCALARS.get(annotation, "any")


def _default(info: FieldInfo) -> str:
    if info.is_required():
        return "required"
    value = info.get_default(call_default_factory=True)
    if isinstance(value, BaseModel):
        value = value.model_dump(by_alias=True, exclude_defaults=True)
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list | tuple | dict):
        data = list(value) if isinstance(value, tuple) else value
        return yaml.safe_dump(data, default_flow_style=True).strip()
    return str(value)


def _allowed(info: FieldInfo) -> str:
    """The values a param may take: its choices, and its bounds."""
    values = _literals(info.annotation)
    choices = f"one of {', '.join(str(value) for value in values)}" if values else ""
    bounds = [
        f"{sign} {getattr(item, attribute):g}"
        for item in info.metadata
        for kind, attribute, sign in _BOUNDS
        if isinstance(item, kind)
    ]
    return ", ".join(part for part in [choices, *bounds] if part)


def _literals(annotation: Any) -> list[Any]:
    """The choices a Literal allows, also inside `| None` and lists."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is Literal:
        return list(args)
    if origin in (typing.Union, types.UnionType, list, tuple, Annotated):
        return [value for arg in args for value in _literals(arg)]
    return []


def _nested_models(annotation: Any) -> Iterator[tuple[str, type[BaseModel]]]:
    """Models inside a field's type, with the path suffix that reaches their fields."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        yield ".", annotation
    elif origin in (typing.Union, types.UnionType, Annotated):
        for arg in args:
            yield from _nested_models(arg)
    elif origin in (list, tuple, set, frozenset) and args:
        yield from ((f"[]{suffix}", model) for suffix, model in _nested_models(args[0]))
    elif origin is dict and len(args) == 2:
        yield from ((f".<name>{suffix}", model) for suffix, model in _nested_models(args[1]))
