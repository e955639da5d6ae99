"""Stage runs as batch Jobs: pool placement, ownership, security profile, names, pool checks."""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from tests.support.pools import operator_config
from tests.support.pss import restricted_violations

from kompaktor.api.spec import OptimizationJobSpec
from kompaktor.config import check_pools, parse_config
from kompaktor.errors import JobSpecError
from kompaktor.executors.kubernetes import ANNOTATION_RUN, MAX_NAME, job_manifest, job_name, stuck
from kompaktor.plan import RunRequest

OWNER = {"metadata": {"name": "digits", "namespace": "ml", "uid": "u-1"}}


def request(
    pool: str | None, *, trial: int | None = None, timeout: float | None = 600
) -> RunRequest:
    return RunRequest(
        run_id="prune-0123456789-a1",
        job="digits",
        stage="prune",
        stage_type="prune",
        params={"sparsity": 0.5},
        key="0123456789abcdef",
        input_uri="s3://b/in.pt2",
        dataset_uri="sklearn:digits",
        output_uri="s3://b/out",
        reference_uri="s3://b/in.pt2",
        metric="accuracy",
        task="classification",
        seed=0,
        attempt=1,
        pool=pool,
        timeout_seconds=timeout,
        trial=trial,
    )


@pytest.fixture
def config(tmp_path: Path) -> Any:
    return parse_config(operator_config(tmp_path))


def test_each_pool_places_and_sizes_the_pod(config: Any) -> None:
    gpu = job_manifest(request("gpu"), OWNER, config, namespace="ml")["spec"]["template"]["spec"]
    assert gpu["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert gpu["tolerations"] == [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
    ]
    assert gpu["containers"][0]["resources"] == {"limits": {"nvidia.com/gpu": "1"}}
    assert gpu["containers"][0]["image"] == "kompaktor:gpu"

    arm = job_manifest(request("arm"), OWNER, config, namespace="ml")["spec"]["template"]["spec"]
    assert arm["nodeSelector"] == {"kubernetes.io/arch": "arm64"}
    assert "tolerations" not in arm and "resources" not in arm["containers"][0]
    assert arm["containers"][0]["image"] == config.image

    default = job_manifest(request(None), OWNER, config, namespace="ml")["spec"]["template"]
    assert default["metadata"]["labels"]["kompaktor.io/pool"] == "cpu"
    assert default["spec"]["containers"][0]["resources"]["requests"] == {
        "cpu": "2",
        "memory": "4Gi",
    }
    env = {e["name"]: e for e in default["spec"]["containers"][0]["env"]}
    assert env["KOMPAKTOR_POOL_WATTS"]["value"] == "60.0"
    assert env["KOMPAKTOR_NODE_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "spec.nodeName"}}


def test_job_is_owned_labelled_and_runs_the_stage_command(config: Any) -> None:
    job = job_manifest(request("cpu", trial=3, timeout=600), OWNER, config, namespace="ml")
    meta, spec = job["metadata"], job["spec"]
    assert meta["name"] == "digits-prune-0123456789-a1"
    assert meta["labels"] == {
        "app.kubernetes.io/managed-by": "kompaktor",
        "kompaktor.io/job": "digits",
        "kompaktor.io/stage": "prune",
        "kompaktor.io/trial": "3",
        "kompaktor.io/pool": "cpu",
    }
    assert meta["ownerReferences"] == [
        {
            "apiVersion": "kompaktor.io/v1alpha1",
            "kind": "OptimizationJob",
            "name": "digits",
            "uid": "u-1",
            "controller": True,
            "blockOwnerDeletion": True,
        }
    ]
    assert spec["backoffLimit"] == 0
    assert spec["activeDeadlineSeconds"] >= 600
    pod = spec["template"]["spec"]
    container = pod["containers"][0]
    assert container["command"] == request("cpu", trial=3).command()
    assert container["envFrom"] == [{"secretRef": {"name": "kompaktor-s3"}}]
    assert container["terminationMessagePath"] == "/dev/termination-log"
    assert container["terminationMessagePolicy"] == "FallbackToLogsOnError"
    assert pod["restartPolicy"] == "Never"
    assert pod["automountServiceAccountToken"] is False
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert {v["name"]: v for v in pod["volumes"]}[mounts["/tmp"]]["emptyDir"] == {}
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["TMPDIR"] == env["HOME"] == "/tmp"
    assert (
        "activeDeadlineSeconds"
        not in job_manifest(request("cpu", timeout=None), OWNER, config, namespace="ml")["spec"]
    )


def test_pod_spec_passes_the_restricted_profile(config: Any) -> None:
    for pool in ("cpu", "gpu", "arm"):
        pod = job_manifest(request(pool), OWNER, config, namespace="ml")["spec"]["template"]["spec"]
        assert restricted_violations(pod) == []


@pytest.mark.parametrize(
    ("breakage", "complaint"),
    [
        (
            lambda c, p: c["securityContext"].pop("allowPrivilegeEscalation"),
            "allowPrivilegeEscalation",
        ),
        (lambda c, p: c["securityContext"]["capabilities"].update(drop=[]), "drop ALL"),
        (lambda c, p: c["securityContext"].update(runAsUser=0), "runAsUser"),
        (lambda c, p: c["securityContext"].update(privileged=True), "privileged"),
        (lambda c, p: p.update(hostNetwork=True), "hostNetwork"),
        (lambda c, p: p["volumes"].append({"name": "h", "hostPath": {"path": "/"}}), "hostPath"),
        (
            lambda c, p: (
                c["securityContext"].pop("seccompProfile"),
                p["securityContext"].pop("seccompProfile"),
            ),
            "seccompProfile",
        ),
        (
            lambda c, p: (
                c["securityContext"].pop("runAsNonRoot"),
                p["securityContext"].pop("runAsNonRoot"),
            ),
            "runAsNonRoot",
        ),
        (lambda c, p: c["securityContext"]["capabilities"].update(add=["SYS_ADMIN"]), "SYS_ADMIN"),
    ],
)
def test_restricted_check_rejects_a_bad_spec(config: Any, breakage: Any, complaint: str) -> None:
    pod = copy.deepcopy(job_manifest(request("cpu"), OWNER, config, namespace="ml"))
    spec = pod["spec"]["template"]["spec"]
    breakage(spec["containers"][0], spec)
    problems = restricted_violations(spec)
    assert any(complaint in p for p in problems), problems


def test_job_names_are_deterministic_dns_labels() -> None:
    assert job_name("digits", "prune-0123456789-a1") == "digits-prune-0123456789-a1"
    long = job_name("a" * 60, "distill-t12-0123456789-a2")
    assert len(long) <= MAX_NAME and long == job_name("a" * 60, "distill-t12-0123456789-a2")
    assert long != job_name("a" * 60, "distill-t12-0123456789-a3")


def test_unknown_pool_is_rejected_with_the_known_ones(config: Any) -> None:
    spec = OptimizationJobSpec.model_validate(
        {
            "model": {"uri": "s3://b/m.pt2"},
            "dataset": {"uri": "sklearn:digits"},
            "stages": [
                {"name": "p", "type": "prune", "pool": "cpu"},
                {"name": "b", "type": "benchmark", "pools": ["cpu", "tpu"]},
            ],
        }
    )
    with pytest.raises(JobSpecError) as caught:
        check_pools(spec, config)
    message = str(caught.value)
    assert (
        "stage 'b' (spec.stages[1], benchmark): pools: unknown pool" in message
        and "'tpu'" in message
    )
    assert "known pools: cpu, gpu, arm" in message


def _pod(created: str, *, waiting: str | None = None, unschedulable: bool = False) -> Any:
    status: dict[str, Any] = {"phase": "Pending"}
    if waiting:
        status["containerStatuses"] = [{"name": "stage", "state": {"waiting": {"reason": waiting}}}]
    if unschedulable:
        condition = {"type": "PodScheduled", "status": "False", "reason": "Unschedulable"}
        status["conditions"] = [dict(condition, message="0/3 nodes: no GPU")]
    return {"metadata": {"name": "p", "creationTimestamp": created}, "status": status}


@pytest.mark.parametrize(
    ("pod", "seconds_later", "reason", "retryable"),
    [
        (_pod("2026-01-01T00:00:00Z", waiting="InvalidImageName"), 1, "InvalidImageName", False),
        (_pod("2026-01-01T00:00:00Z", waiting="ImagePullBackOff"), 30, None, None),
        (_pod("2026-01-01T00:00:00Z", waiting="ImagePullBackOff"), 90, "ImagePullBackOff", True),
        (_pod("2026-01-01T00:00:00Z", unschedulable=True), 30, None, None),
        (_pod("2026-01-01T00:00:00Z", unschedulable=True), 90, "Unschedulable", True),
        (_pod("2026-01-01T00:00:00Z", waiting="ContainerCreating"), 900, None, None),
    ],
)
def test_a_pod_that_cannot_start_is_reported_after_the_timeout(
    pod: Any, seconds_later: int, reason: str | None, retryable: bool | None
) -> None:
    job = {"metadata": {"annotations": {ANNOTATION_RUN: "run-1"}}, "status": {"active": 1}}
    now = datetime(2026, 1, 1, tzinfo=UTC) + timedelta(seconds=seconds_later)
    found = stuck(job, [pod], now, timeout=60)
    if reason is None:
        assert found is None
    else:
        assert found is not None and found.reason == reason and found.retryable is retryable
        assert found.run_id == "run-1"
