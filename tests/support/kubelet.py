"""A test kubelet (and Job controller): runs the controller's Jobs as local processes.

It watches batch Jobs in the emulator, makes the one pod a Job with backoffLimit 0 gets, runs
the container's command (`kompaktor stage run ...`, the real stage code) as a subprocess, and
writes pod and Job status back as a kubelet and the Job controller would, including the
termination message (read from the file KOMPAKTOR_TERMINATION_LOG points at) and
FallbackToLogsOnError. The process sees the pod's environment (env, envFrom Secrets), not the
test's. Jobs deleted mid-run get their process killed.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import signal
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support.emulator import ClusterEmulator, now_iso

JOBS = "batch/v1/jobs"
PODS = "v1/pods"
SECRETS = "v1/secrets"
HOST_ENV = ("PATH", "LANG", "LC_ALL", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "PYTHONHASHSEED")
MANAGED = ("app.kubernetes.io/managed-by", "kompaktor")
FALLBACK_LOG_BYTES = 2048


@dataclass
class _Run:
    namespace: str
    job: str
    pod: str
    process: asyncio.subprocess.Process
    message_path: Path
    log_path: Path
    started: float
    deadline: float | None


@dataclass
class TestKubelet:
    """`started` lists Job names in start order; `env` is added to every process; `runner`
    replaces the command's argv[0] (`kompaktor`)."""

    emulator: ClusterEmulator
    workdir: Path
    env: dict[str, str] = field(default_factory=dict)
    runner: list[str] = field(default_factory=lambda: [sys.executable, "-m", "kompaktor.cli"])
    paused: bool = False
    unpullable: dict[str, str] = field(default_factory=dict)
    """image -> waiting reason (e.g. ImagePullBackOff): such pods are created, never run."""
    started: list[str] = field(default_factory=list)
    _seen: set[str] = field(default_factory=set)
    _runs: dict[str, _Run] = field(default_factory=dict)
    _task: asyncio.Task[None] | None = None

    __test__ = False  # not a pytest class

    async def __aenter__(self) -> TestKubelet:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._task = asyncio.create_task(self._loop())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for run in list(self._runs.values()):
            await _kill(run.process)

    @property
    def running(self) -> list[str]:
        return [run.job for run in self._runs.values()]

    async def _loop(self) -> None:
        while True:
            if not self.paused:
                await self._start_new()
            await self._reap()
            await self.emulator.changed(0.05)

    # ------------------------------------------------------------------ start

    async def _start_new(self) -> None:
        for job in self.emulator.live(JOBS):
            meta = job["metadata"]
            labels = meta.get("labels") or {}
            if meta["uid"] in self._seen or labels.get(MANAGED[0]) != MANAGED[1]:
                continue
            self._seen.add(meta["uid"])
            await self._start(job)

    async def _start(self, job: dict[str, Any]) -> None:
        meta, template = job["metadata"], job["spec"]["template"]
        namespace, name = meta["namespace"], meta["name"]
        container = template["spec"]["containers"][0]
        node = "node-" + (meta.get("labels") or {}).get("kompaktor.io/pool", "default")
        pod_name = f"{name[:56]}-{uuid.uuid4().hex[:5]}"
        labels = dict(template["metadata"].get("labels") or {})
        labels["batch.kubernetes.io/job-name"] = name
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": pod_name,
                "namespace": namespace,
                "labels": labels,
                "annotations": dict(template["metadata"].get("annotations") or {}),
                "ownerReferences": [
                    {
                        "apiVersion": "batch/v1",
                        "kind": "Job",
                        "name": name,
                        "uid": meta["uid"],
                        "controller": True,
                    }
                ],
            },
            "spec": dict(template["spec"], nodeName=node),
        }
        self.emulator.create(PODS, pod)
        if (reason := self.unpullable.get(container["image"])) is not None:
            self.emulator.patch_object(PODS, namespace, pod_name, {"status": {
                "phase": "Pending",
                "containerStatuses": [{"name": container["name"], "ready": False, "state": {
                    "waiting": {"reason": reason, "message": f"cannot pull {container['image']}"}
                }}],
            }}, "status")  # fmt: skip
            return
        run_dir = self.workdir / name
        run_dir.mkdir(parents=True, exist_ok=True)
        message_path, log_path = run_dir / "termination-log", run_dir / "output.log"
        env = self._pod_env(namespace, container, node)
        env.update(TMPDIR=str(run_dir), HOME=str(run_dir), **self.env)
        env["KOMPAKTOR_TERMINATION_LOG"] = str(message_path)
        command = [*self.runner, *container["command"][1:]]
        with log_path.open("wb") as log:
            process = await asyncio.create_subprocess_exec(
                *command, stdout=log, stderr=asyncio.subprocess.STDOUT, env=env,
                start_new_session=True,
            )  # fmt: skip
        loop = asyncio.get_running_loop()
        limit = job["spec"].get("activeDeadlineSeconds")
        self._runs[meta["uid"]] = _Run(
            namespace, name, pod_name, process, message_path, log_path, loop.time(),
            loop.time() + limit if limit else None,
        )  # fmt: skip
        self.started.append(name)
        stamp = now_iso()
        self.emulator.patch_object(PODS, namespace, pod_name, {"status": {
            "phase": "Running", "startTime": stamp,
            "containerStatuses": [{"name": container["name"], "ready": True,
                                   "state": {"running": {"startedAt": stamp}}}],
        }}, "status")  # fmt: skip
        started = {"status": {"active": 1, "startTime": stamp}}
        self.emulator.patch_object(JOBS, namespace, name, started, "status")

    def _pod_env(self, namespace: str, container: dict[str, Any], node: str) -> dict[str, str]:
        """What the container would see: its own env and envFrom Secrets, not the host's
        (a few host variables only, so the process can run at all)."""
        env = {name: os.environ[name] for name in HOST_ENV if name in os.environ}
        for source in container.get("envFrom", []):
            ref = source.get("secretRef", {}).get("name")
            secret = self.emulator.get_live(SECRETS, namespace, ref) if ref else None
            for key, value in ((secret or {}).get("data") or {}).items():
                env[key] = base64.b64decode(value).decode()
        for item in container.get("env", []):
            if "value" in item:
                env[item["name"]] = item["value"]
            elif item.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == "spec.nodeName":
                env[item["name"]] = node
        return env

    # ------------------------------------------------------------------ finish

    async def _reap(self) -> None:
        loop = asyncio.get_running_loop()
        for uid, run in list(self._runs.items()):
            if self.emulator.get_live(JOBS, run.namespace, run.job) is None:
                await _kill(run.process)
                del self._runs[uid]
                continue
            if run.deadline is not None and loop.time() > run.deadline:
                await _kill(run.process)
                del self._runs[uid]
                self._finish(run, 137, "", deadline=True)
                continue
            if run.process.returncode is None:
                continue
            del self._runs[uid]
            message = run.message_path.read_text() if run.message_path.exists() else ""
            if not message and run.process.returncode != 0:
                message = run.log_path.read_bytes()[-FALLBACK_LOG_BYTES:].decode(errors="replace")
            self._finish(run, run.process.returncode, message)

    def _finish(self, run: _Run, code: int, message: str, *, deadline: bool = False) -> None:
        stamp = now_iso()
        ok = code == 0 and not deadline
        terminated = {"exitCode": code, "reason": "Completed" if ok else "Error",
                      "finishedAt": stamp, "message": message}  # fmt: skip
        self.emulator.patch_object(PODS, run.namespace, run.pod, {"status": {
            "phase": "Succeeded" if ok else "Failed",
            "containerStatuses": [{"name": "stage", "ready": False,
                                   "state": {"terminated": terminated}}],
        }}, "status")  # fmt: skip
        status: dict[str, object]
        if ok:
            condition = {"type": "Complete", "status": "True", "lastTransitionTime": stamp}
            status = {"active": None, "succeeded": 1, "completionTime": stamp}
        else:
            reason = "DeadlineExceeded" if deadline else "BackoffLimitExceeded"
            condition = {"type": "Failed", "status": "True", "reason": reason,
                         "message": "Job has reached the specified backoff limit",
                         "lastTransitionTime": stamp}  # fmt: skip
            status = {"active": None, "failed": 1}
        status["conditions"] = [condition]
        self.emulator.patch_object(JOBS, run.namespace, run.job, {"status": status}, "status")


async def _kill(process: asyncio.subprocess.Process) -> None:
    if process.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    await process.wait()
