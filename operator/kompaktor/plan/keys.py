"""Cache keys, run ids and output locations: pure functions of what a run depends on.

A run's key digests everything that decides its output, so the same key in the artifact store
means the same work was already done and can be reused.
"""

from __future__ import annotations

import hashlib
import json
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


def run_id(stage: str, key: str, attempt: int, trial: int | None = None) -> str:
    """A DNS-friendly, deterministic name: the same run always gets the same id."""
    trial_part = "" if trial is None else f"-t{trial}"
    return f"{stage}{trial_part}-{key[:10]}-a{attempt}"


def output_uri(artifacts_uri: str, stage_type: str, key: str) -> str:
    """Where a run with this key keeps its model, log and result.json."""
    return f"{artifacts_uri.rstrip('/')}/runs/{stage_type}-{key[:24]}"
