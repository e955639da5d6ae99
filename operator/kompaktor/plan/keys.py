"""Cache keys, run ids and output locations: pure functions of what a run depends on.

A run's key digests everything that decides its output, so the same key in the artifact store
means the same work was already done and can be reused.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from typing import Any

#: Bump when a stage's output for the same inputs changes (2: packed weight sharing,
#: validation metrics and curves in every result), so older cached runs are not reused.
KEY_VERSION = 2


def run_key(
    *,
    input_digest: str,
    stage_type: str,
    params: dict[str, Any],
    dataset_digest: str,
    metric: str,
    seed: int,
) -> str:
    """sha256 over the canonical JSON of the run's inputs."""
    payload = {
        "v": KEY_VERSION,
        "input": input_digest,
        "type": stage_type,
        "params": params,
        "dataset": dataset_digest,
        "metric": metric,
        "seed": seed,
    }
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


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


def run_id(stage: str, key: str, attempt: int, trial: int | None = None) -> str:
    """A DNS-friendly, deterministic name: the same run always gets the same id."""
    trial_part = "" if trial is None else f"-t{trial}"
    return f"{stage}{trial_part}-{key[:10]}-a{attempt}"


def output_uri(artifacts_uri: str, stage_type: str, key: str) -> str:
    """Where a run with this key keeps its model, log and result.json."""
    return f"{artifacts_uri.rstrip('/')}/runs/{stage_type}-{key[:24]}"
