"""Model references in stage params: a mapping with `uri` (a file) or `fromStage` (an earlier
stage's output), such as a distill teacher, also inside an hpo stage's base. One walk serves the
plan's run keys and input probes, `kompaktor run`'s paths and validation."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from kompaktor.api.spec import OptimizationJobSpec

#: A model reference in stage params (a distill teacher, also inside an hpo stage's base):
#: a mapping with one of these keys.
REF_KEYS = ("uri", "fromStage")
#: Fills a model reference, given its path ("params.teacher") and the mapping as written.
RefFill = Callable[[str, dict[str, Any]], dict[str, Any]]


def map_model_refs(
    params: Mapping[str, Any], fill: RefFill, path: str = "params"
) -> dict[str, Any]:
    """A copy of `params` with every model reference replaced by `fill(path, ref)`.

    A model a stage reads besides its input decides its output as much as the input does, so
    the plan writes its digest into the reference (a file's from the input probe, an earlier
    stage's from its output), and the run key follows the model's content.
    """
    if any(key in params for key in REF_KEYS):
        return fill(path, dict(params))
    return {key: _map_value(value, fill, f"{path}.{key}") for key, value in params.items()}


def file_uri(ref: Mapping[str, Any]) -> str | None:
    """The URI of a model reference that names a file (not an earlier stage's output)."""
    uri = ref.get("uri")
    return uri if isinstance(uri, str) and ref.get("fromStage") is None else None


def _map_value(value: Any, fill: RefFill, path: str) -> Any:
    if isinstance(value, Mapping):
        return map_model_refs(value, fill, path)
    if isinstance(value, list | tuple):
        return [_map_value(item, fill, f"{path}.{index}") for index, item in enumerate(value)]
    return value


def stage_model_files(spec: OptimizationJobSpec) -> list[tuple[str, str]]:
    """Every model file stage params name by URI, with the field that names it
    (`stage 'd' (spec.stages[0], distill): params.teacher.uri`)."""
    return [
        (f"{stage.where(index)}: {path}.uri", uri)
        for index, stage in enumerate(spec.stages)
        for path, uri in _file_refs(stage.params)
    ]


def _file_refs(params: Mapping[str, Any]) -> list[tuple[str, str]]:
    found: list[tuple[str, str]] = []

    def note(path: str, ref: dict[str, Any]) -> dict[str, Any]:
        if (uri := file_uri(ref)) is not None:
            found.append((path, uri))
        return ref

    map_model_refs(params, note)
    return found
