"""An in-process cluster for operator tests: emulator over HTTP, kubeconfig, operator task.

The operator runs as an asyncio task in the test's loop (`start_operator`), and can be killed
(cancelled) and started again at any point, as a crashed pod would be.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import kmock
import yaml

from tests.support.emulator import CRD_PATH, ClusterEmulator

ROOT = Path(__file__).resolve().parents[2]
OJ = "kompaktor.io/v1alpha1/optimizationjobs"
JOBS = "batch/v1/jobs"


def write_kubeconfig(path: Path, server: str) -> Path:
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {"name": "emulator", "cluster": {"server": server, "insecure-skip-tls-verify": True}}
        ],
        "users": [{"name": "tester", "user": {"token": "test"}}],
        "contexts": [
            {
                "name": "emulator",
                "context": {"cluster": "emulator", "user": "tester", "namespace": "default"},
            }
        ],
        "current-context": "emulator",
    }
    path.write_text(yaml.safe_dump(config))
    return path


class _OperatorThread(threading.Thread):
    def __init__(self, config_path: str, standalone: bool) -> None:
        super().__init__(name="operator", daemon=True)
        self.config_path, self.standalone = config_path, standalone
        self.ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None

    def run(self) -> None:
        from kompaktor.controller import operate

        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            self._task = asyncio.current_task()  # type: ignore[assignment]
            await operate(self.config_path, standalone=self.standalone, ready_flag=self.ready)

        with contextlib.suppress(asyncio.CancelledError, Exception):
            asyncio.run(main())

    def kill(self) -> None:
        if self._loop is not None and self._task is not None:
            self._loop.call_soon_threadsafe(self._task.cancel)


class Cluster:
    """Emulator + server + kubeconfig (set as $KUBECONFIG while entered) + operator."""

    def __init__(self, workdir: Path, operator_config: Mapping[str, Any]) -> None:
        self.workdir = workdir
        self.emulator = ClusterEmulator()
        self.emulator.install_defaults()
        crd = yaml.safe_load((ROOT / CRD_PATH).read_text())
        self.oj = self.emulator.install_crd(crd)
        self.config_path = workdir / "operator.yaml"
        self.config_path.write_text(yaml.safe_dump(dict(operator_config)))
        self._server = kmock.Server(self.emulator)
        self._operator: _OperatorThread | None = None
        self._saved_env: dict[str, str | None] = {}
        self.url = ""

    async def __aenter__(self) -> Cluster:
        await self.emulator.__aenter__()
        await self._server.__aenter__()
        self.url = str(self._server.url).rstrip("/")
        kubeconfig = write_kubeconfig(self.workdir / "kubeconfig", self.url)
        for name, value in (
            ("KUBECONFIG", str(kubeconfig)),
            ("KOMPAKTOR_CONFIG", str(self.config_path)),
        ):
            self._saved_env[name] = os.environ.get(name)
            os.environ[name] = value
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.kill_operator()
        await self._server.__aexit__(None, None, None)
        await self.emulator.__aexit__(None, None, None)
        for name, value in self._saved_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value

    # ----------------------------------------------------------------- operator

    async def start_operator(self, *, standalone: bool = True) -> None:
        """The operator in its own thread and loop, as in its own process: kopf cancels every
        task of its loop when it stops, which must not hit the emulator or the kubelet."""
        self._operator = _OperatorThread(str(self.config_path), standalone)
        self._operator.start()
        if not await asyncio.to_thread(self._operator.ready.wait, 30):
            raise AssertionError("the operator did not become ready in 30 s")

    async def kill_operator(self) -> None:
        """Cancel the operator's main task: no graceful shutdown is relied upon."""
        thread, self._operator = self._operator, None
        if thread is not None:
            thread.kill()
            await asyncio.to_thread(thread.join, 30)

    # ----------------------------------------------------------------- objects

    def apply(self, body: Mapping[str, Any]) -> dict[str, Any]:
        return self.emulator.create(self.oj, dict(body))

    def job(self, name: str, namespace: str = "default") -> dict[str, Any]:
        found = self.emulator.get_live(self.oj, namespace, name)
        assert found is not None, f"OptimizationJob {name} is gone"
        return found

    def edit_spec(
        self, name: str, spec_patch: Mapping[str, Any], namespace: str = "default"
    ) -> None:
        self.emulator.patch(self.oj, namespace, name, {"spec": dict(spec_patch)})

    def status(self, name: str, namespace: str = "default") -> dict[str, Any]:
        return dict(self.job(name, namespace).get("status") or {})

    def jobs(self, namespace: str = "default") -> list[dict[str, Any]]:
        return self.emulator.live(JOBS, namespace)

    def job_creations(self) -> dict[str, int]:
        return self.emulator.creations(JOBS)

    async def wait_for(
        self, check: Callable[[], Any], timeout: float = 120, what: str = "condition"
    ) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            value = check()
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout}s waiting for {what}")
            await self.emulator.changed(0.1)

    async def wait_phase(
        self, name: str, phases: tuple[str, ...], timeout: float = 180
    ) -> dict[str, Any]:
        def done() -> dict[str, Any] | None:
            status = self.status(name)
            return status if status.get("phase") in phases else None

        try:
            found: dict[str, Any] = await self.wait_for(done, timeout, f"{name} in {phases}")
        except AssertionError as error:
            raise AssertionError(f"{error}; status: {self.status(name)}") from None
        return found


def optimization_job(
    name: str, spec: Mapping[str, Any], namespace: str = "default"
) -> dict[str, Any]:
    return {
        "apiVersion": "kompaktor.io/v1alpha1",
        "kind": "OptimizationJob",
        "metadata": {"name": name, "namespace": namespace},
        "spec": dict(spec),
    }
