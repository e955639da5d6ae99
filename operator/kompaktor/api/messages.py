"""pydantic's validation errors as lines a user can act on: the field as the job file spells it
(`spec.objective.maxDrop`, a stage by its name: `stage 'prune' (spec.stages[1], prune):
timeout`) and a message in words, not pydantic's (no regular expressions, no error codes)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pydantic import ValidationError

from kompaktor.api.spec import DURATION, stage_label


def describe_errors(error: ValidationError, prefix: str = "", document: Any = None) -> list[str]:
    """One `where: what` line per problem. `prefix` is the path to what was validated
    (`spec.`, `stage … : params.`); `document` is what was validated, when stages in it should be
    named (their name and type are read from it)."""
    return [f"{_where(item['loc'], prefix, document)}: {message(item)}" for item in error.errors()]


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


def message(item: Any) -> str:
    """One pydantic error item in words."""
    kind, ctx = item["type"], item.get("ctx") or {}
    if kind == "literal_error":
        expected = str(ctx.get("expected", "")).replace("'", "").replace(" or ", ", ")
        return f"must be one of {expected} (got {item.get('input')!r})"
    if kind == "extra_forbidden":
        return "unknown field"
    if kind == "missing":
        return "required field is missing"
    if kind == "string_pattern_mismatch" and ctx.get("pattern") == DURATION:
        return f"must be a duration such as 90s, 30m, 2h or 1h30m (got {item.get('input')!r})"
    return str(item["msg"]).removeprefix("Value error, ")
