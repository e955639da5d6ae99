"""The restricted Pod Security Standard, as a check over a pod spec.

Encodes the baseline and restricted rules of
https://kubernetes.io/docs/concepts/security/pod-security-standards/ (policy version 1.30)
that a pod spec can violate; returns the violations, empty when the spec complies.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

ALLOWED_VOLUMES = {
    "configMap", "csi", "downwardAPI", "emptyDir", "ephemeral",
    "persistentVolumeClaim", "projected", "secret",
}  # fmt: skip
BASELINE_CAPABILITIES = {
    "AUDIT_WRITE", "CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "MKNOD",
    "NET_BIND_SERVICE", "SETFCAP", "SETGID", "SETPCAP", "SETUID", "SYS_CHROOT",
}  # fmt: skip
SECCOMP_OK = {"RuntimeDefault", "Localhost"}


def _containers(spec: Mapping[str, Any]) -> list[tuple[str, Mapping[str, Any]]]:
    found = []
    for field in ("initContainers", "containers", "ephemeralContainers"):
        for c in spec.get(field) or []:
            found.append((f"{field}[{c.get('name')}]", c))
    return found


def restricted_violations(spec: Mapping[str, Any]) -> list[str]:
    """Every rule of the restricted profile that `spec` (a PodSpec) breaks."""
    problems: list[str] = []
    pod_sc = spec.get("securityContext") or {}
    # baseline
    for flag in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(flag):
            problems.append(f"spec.{flag} must not be true")
    for volume in spec.get("volumes") or []:
        kinds = set(volume) - {"name"}
        if not kinds <= ALLOWED_VOLUMES:
            problems.append(f"volume {volume.get('name')}: type {sorted(kinds)} is not allowed")
    if pod_sc.get("windowsOptions", {}).get("hostProcess"):
        problems.append("spec.securityContext.windowsOptions.hostProcess must not be true")
    for sysctl in pod_sc.get("sysctls") or []:
        if not str(sysctl.get("name", "")).startswith(("kernel.shm", "net.ipv4.ip_")):
            problems.append(f"sysctl {sysctl.get('name')} is not in the safe set")
    pod_non_root = pod_sc.get("runAsNonRoot") is True
    pod_seccomp = (pod_sc.get("seccompProfile") or {}).get("type")
    if pod_sc.get("runAsUser") == 0:
        problems.append("spec.securityContext.runAsUser must not be 0")
    if pod_seccomp is not None and pod_seccomp not in SECCOMP_OK:
        problems.append(
            "spec.securityContext.seccompProfile.type must be RuntimeDefault or Localhost"
        )
    for where, c in _containers(spec):
        sc = c.get("securityContext") or {}
        if sc.get("privileged"):
            problems.append(f"{where}: privileged must not be true")
        for port in c.get("ports") or []:
            if port.get("hostPort"):
                problems.append(f"{where}: hostPort must not be set")
        if sc.get("procMount", "Default") != "Default":
            problems.append(f"{where}: procMount must be Default")
        # restricted
        if sc.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{where}: allowPrivilegeEscalation must be false")
        non_root = sc.get("runAsNonRoot", pod_non_root if "runAsNonRoot" not in sc else None)
        if non_root is not True:
            problems.append(f"{where}: runAsNonRoot must be true (container or pod)")
        if sc.get("runAsUser") == 0:
            problems.append(f"{where}: runAsUser must not be 0")
        seccomp = (sc.get("seccompProfile") or {}).get("type") or pod_seccomp
        if seccomp not in SECCOMP_OK:
            problems.append(f"{where}: seccompProfile.type must be RuntimeDefault or Localhost")
        caps = sc.get("capabilities") or {}
        if "ALL" not in (caps.get("drop") or []):
            problems.append(f"{where}: capabilities must drop ALL")
        added = set(caps.get("add") or [])
        if added - {"NET_BIND_SERVICE"}:
            problems.append(
                f"{where}: capabilities may add only NET_BIND_SERVICE, not {sorted(added)}"
            )
        if added - BASELINE_CAPABILITIES:
            problems.append(
                f"{where}: capabilities {sorted(added - BASELINE_CAPABILITIES)} are not baseline"
            )
    return problems
