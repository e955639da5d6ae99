"""The pools the operator tests configure: cpu (default), gpu (tainted), arm."""

from __future__ import annotations

from pathlib import Path
from typing import Any

POOLS: list[dict[str, Any]] = [
    {"name": "cpu", "pricePerHourUSD": 0.5, "watts": 60,
     "resources": {"requests": {"cpu": "2", "memory": "4Gi"}, "limits": {"memory": "4Gi"}}},
    {"name": "gpu", "pricePerHourUSD": 3.0, "watts": 300, "image": "kompaktor:gpu",
     "nodeSelector": {"nvidia.com/gpu.present": "true"},
     "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
     "resources": {"limits": {"nvidia.com/gpu": "1"}}},
    {"name": "arm", "pricePerHourUSD": 0.3, "watts": 40,
     "nodeSelector": {"kubernetes.io/arch": "arm64"}},
]  # fmt: skip


def operator_config(tmp: Path) -> dict[str, Any]:
    return {
        "pools": POOLS,
        "defaultPool": "cpu",
        "artifactsUri": (tmp / "store").as_uri(),
        "s3CredentialsSecret": "kompaktor-s3",
        "retryBaseSeconds": 0.2,
        # kopf refreshes a peer's record every max(1, lifetime - 5..10) s: with 6 s that is every
        # second, and a leader starved of CPU for up to 5 s (two busy cores running the suite)
        # still counts as alive, so a standby does not resume beside it. Failover takes ~6 s.
        "peering": {"lifetimeSeconds": 6},
        "podStartTimeoutSeconds": 2,
    }
