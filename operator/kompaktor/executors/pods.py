"""The pod template of one stage run: the pool's placement plus the restricted security profile.

Every stage pod runs under the restricted Pod Security Standard (non-root, read-only root file
system, no privilege escalation, all capabilities dropped, RuntimeDefault seccomp) with no API
token: a stage only talks to the artifact store, never to the cluster.
"""

from __future__ import annotations

from typing import Any

from kompaktor.config import OperatorConfig, Pool
from kompaktor.plan import RunRequest

RUN_AS_USER = 65532
TERMINATION_LOG = "/dev/termination-log"
SCRATCH = "/tmp"
CONTAINER = "stage"


def container_security() -> dict[str, Any]:
    return {
        "runAsNonRoot": True,
        "runAsUser": RUN_AS_USER,
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def pod_security() -> dict[str, Any]:
    return {
        "runAsNonRoot": True,
        "runAsUser": RUN_AS_USER,
        "runAsGroup": RUN_AS_USER,
        "fsGroup": RUN_AS_USER,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def _env(request: RunRequest, pool: Pool, config: OperatorConfig) -> list[dict[str, Any]]:
    env: list[dict[str, Any]] = [
        {"name": "KOMPAKTOR_POOL", "value": pool.name},
        {"name": "KOMPAKTOR_POOL_WATTS", "value": str(pool.watts)},
        {"name": "KOMPAKTOR_RUN_ID", "value": request.run_id},
        {"name": "KOMPAKTOR_TERMINATION_LOG", "value": TERMINATION_LOG},
        {"name": "KOMPAKTOR_NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
        {"name": "TMPDIR", "value": SCRATCH},
        {"name": "HOME", "value": SCRATCH},
    ]
    if config.s3_endpoint_url:
        env.append({"name": "KOMPAKTOR_S3_ENDPOINT_URL", "value": config.s3_endpoint_url})
    return env


def pod_spec(request: RunRequest, pool: Pool, config: OperatorConfig) -> dict[str, Any]:
    """The pod spec of a run on `pool` (restartPolicy Never: retries belong to the plan)."""
    container: dict[str, Any] = {
        "name": CONTAINER,
        "image": pool.image or config.image,
        "imagePullPolicy": config.image_pull_policy,
        "command": request.command(),
        "env": _env(request, pool, config),
        "securityContext": container_security(),
        "terminationMessagePath": TERMINATION_LOG,
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "volumeMounts": [{"name": "scratch", "mountPath": SCRATCH}],
    }
    resources = {kind: amounts for kind, amounts in pool.resources.dump().items() if amounts}
    if resources:
        container["resources"] = resources
    if config.s3_credentials_secret:
        container["envFrom"] = [{"secretRef": {"name": config.s3_credentials_secret}}]
    spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": pod_security(),
        "containers": [container],
        "volumes": [{"name": "scratch", "emptyDir": {}}],
    }
    if pool.node_selector:
        spec["nodeSelector"] = dict(pool.node_selector)
    if pool.tolerations:
        spec["tolerations"] = [t.dump() for t in pool.tolerations]
    if config.service_account_name:
        spec["serviceAccountName"] = config.service_account_name
    return spec
