"""pydantic's validation errors as lines a user can act on: the field as the job file spells it
(`spec.objective.maxDrop`, a stage by its name: `stage 'prune' (spec.stages[1], prune):
timeout`) and a message in words, not pydantic's (no regular expressions, no error codes), with
the value it got and, for an unknown field, the names it may have meant."""

from __future__ import annotations

import difflib
import re
import types
import typing
from collections.abc import Iterable, Sequence
from typing import Annotated, Any

from pydantic import BaseModel, ValidationError

from kompaktor.api.spec import DURATION, OptimizationJobSpec, stage_label

#: How much of a value a message quotes.
QUOTE_LIMIT = 60


def describe_errors(
    error: ValidationError,
    prefix: str = "",
    document: Any = None,
    model: type[BaseModel] | None = None,
    owner: str | None = None,
) -> list[str]:
    """One `where: what` line per problem. `prefix` is the path to what was validated
    (`spec.`, `stage … : params.`); `document` is what was validated, when stages in it should be
    named (their name and type are read from it); `model` is the model it was validated
    against, so an unknown field gets the names it may have meant, and `owner` the stage type
    whose params `model` holds (`train has no param 'learningRate'`)."""
    return [
        f"{_where(item['loc'], prefix, document)}: {message(item, model, owner)}"
        for item in error.errors()
    ]


def spec_problems(error: ValidationError, spec: Any) -> str:
    """A cluster object's invalid spec in one line (admission refuses it, reconcile reports
    it): every problem, an unknown field with the names it may have meant."""
    return "; ".join(describe_errors(error, "spec.", spec, model=OptimizationJobSpec))


def _where(loc: Sequence[int | str], prefix: str, document: Any) -> str:
    path = prefix.rstrip(".")
    node = document
    for number, part in enumerate(loc):
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path = f"{path}.{part}" if path else part
        node = _child(node, part)
        if path.endswith(f"stages[{part}]") and isinstance(node, dict):
            name, kind = node.get("name"), node.get("type")
            if isinstance(name, str) and isinstance(kind, str) and isinstance(part, int):
                label = stage_label(name, part, kind)
                rest = ".".join(str(p) for p in loc[number + 1 :])
                return f"{label}: {rest}" if rest else label
    return path or "document"


def _child(node: Any, part: int | str) -> Any:
    if isinstance(node, dict):
        return node.get(part)
    if isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
        return node[part]
    return None


def message(item: Any, model: type[BaseModel] | None = None, owner: str | None = None) -> str:
    """One pydantic error item in words; `model` and `owner` as for `describe_errors`."""
    kind, ctx = item["type"], item.get("ctx") or {}
    if kind == "literal_error":
        expected = str(ctx.get("expected", "")).replace("'", "").replace(" or ", ", ")
        return f"must be one of {expected} (got {item.get('input')!r})"
    if kind == "extra_forbidden":
        return _unknown_field(item["loc"], model, owner)
    if kind == "missing":
        return "required field is missing"
    if kind == "string_pattern_mismatch" and ctx.get("pattern") == DURATION:
        return f"must be a duration such as 90s, 30m, 2h or 1h30m (got {item.get('input')!r})"
    text = str(item["msg"]).removeprefix("Value error, ")
    return text if "(got " in text else text + _got(item)  # our validators say it themselves


def _got(item: Any) -> str:
    """` (got 'two')` when the error is about one value (not a mapping or list, where the
    message says what is wrong with the whole), so the user sees what was read."""
    if "input" not in item:
        return ""
    value = item["input"]
    if not isinstance(value, str | int | float | bool | None):
        return ""
    text = repr(value)
    if len(text) > QUOTE_LIMIT:
        text = text[: QUOTE_LIMIT - 1] + "…"
    return f" (got {text})"


def _unknown_field(
    loc: Sequence[int | str], model: type[BaseModel] | None, owner: str | None
) -> str:
    """What an unknown key is, with the names of the model it was given to (when known)."""
    parent = None if model is None else _model_at(model, loc[:-1])
    if parent is None:
        return "unknown field"
    names = field_names(parent)
    if parent is model and owner is not None:
        return unknown_name(str(loc[-1]), names, owner)
    return unknown_name(str(loc[-1]), names)


def field_names(model: type[BaseModel]) -> list[str]:
    """The model's fields as a job file writes them (camelCase), sorted."""
    return sorted(info.alias or name for name, info in model.model_fields.items())


def unknown_name(key: str, names: Iterable[str], owner: str | None = None) -> str:
    """`train has no param 'learningRate'; did you mean 'lr'? (its params: batchSize, …)`, or
    without an owner `unknown field; did you mean 'maxDrop'? (known fields: maxDrop, metric)`."""
    known = sorted(set(names))
    guess = closest_name(key, known)
    hint = f"; did you mean {guess!r}?" if guess is not None else ""
    if owner is None:
        return f"unknown field{hint} (known fields: {', '.join(known)})"
    return f"{owner} has no param {key!r}{hint} (its params: {', '.join(known)})"


def closest_name(key: str, names: Iterable[str]) -> str | None:
    """The name a user most likely meant by `key`: the same name in another spelling
    (`batch_size`, `batchsize`), one whose initials `key` is or has (`learningRate` for `lr`,
    `bs` for `batchSize`), else the closest by difflib."""
    folded = {_fold(name): name for name in names}
    if _fold(key) in folded:
        return folded[_fold(key)]
    for short, name in folded.items():
        if _initials(key) == short or _initials(name) == _fold(key):
            return name
    close = difflib.get_close_matches(_fold(key), list(folded), n=1, cutoff=0.6)
    return folded[close[0]] if close else None


def _fold(name: str) -> str:
    return name.replace("_", "").replace("-", "").lower()


def _initials(name: str) -> str | None:
    """`learningRate` and `learning_rate` → `lr`; None for a one-word name."""
    words = re.findall(r"[A-Z]?[a-z0-9]+|[A-Z]+(?![a-z])", name)
    return "".join(word[0] for word in words).lower() if len(words) > 1 else None


def _model_at(model: type[BaseModel], loc: Sequence[int | str]) -> type[BaseModel] | None:
    """The model that validated the value at `loc` (field names, list indexes and mapping keys
    from `model` down), or None when it is no model (a free-form mapping such as params)."""
    node: Any = model
    for part in loc:
        node = _unwrap(node)
        args = typing.get_args(node)
        if isinstance(node, type) and issubclass(node, BaseModel) and isinstance(part, str):
            node = next(
                (
                    info.annotation
                    for name, info in node.model_fields.items()
                    if part in (name, info.alias)
                ),
                None,
            )
        elif typing.get_origin(node) in (list, tuple, set, frozenset) and isinstance(part, int):
            node = args[0] if args else None
        elif typing.get_origin(node) is dict and len(args) == 2:
            node = args[1]
        else:
            return None
    node = _unwrap(node)
    return node if isinstance(node, type) and issubclass(node, BaseModel) else None


def _unwrap(annotation: Any) -> Any:
    """`X` for `Annotated[X, …]` and `X | None`."""
    origin = typing.get_origin(annotation)
    if origin is Annotated:
        return _unwrap(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        options = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
        return _unwrap(options[0]) if len(options) == 1 else annotation
    return annotation
