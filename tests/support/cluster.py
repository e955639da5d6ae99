"""A cluster for operator tests: emulator over HTTP, kubeconfig, operator processes.

The emulator lives in the test's loop; each operator replica is its own process
(`start_operator`), which can be killed at any point and started again, as a crashed pod
would be. Several replicas with peering make the HA setup.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import kmock
import yaml

from kompaktor.config import PRIORITY_ENV
from tests.support.emulator import CRD_PATH, ClusterEmulator

ROOT = Path(__file__).resolve().parents[2]
OJ = "kompaktor.io/v1alpha1/optimizationjobs"
JOBS = "batch/v1/jobs"


def write_kubeconfig(path: Path, server: str, token: str = "test") -> Path:
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {"name": "emulator", "cluster": {"server": server, "insecure-skip-tls-verify": True}}
        ],
        "users": [{"name": "tester", "user": {"token": token}}],
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


class OperatorProcess:
    """One operator replica: `python -m tests.support.operator_process` with its own log."""

    def __init__(self, workdir: Path, config_path: Path, server: str, index: int, *,
                 standalone: bool, stub_inputs: bool, priority: int | None,
                 metrics_port: int | None = None) -> None:  # fmt: skip
        self.token = f"replica-{index}"  # the emulator's `writes` tell replicas apart by it
        kubeconfig = write_kubeconfig(workdir / f"kubeconfig-{index}", server, self.token)
        self.log_path = workdir / f"operator-{index}.log"
        self.ready_file = workdir / f"operator-{index}.ready"
        self.argv = [
            sys.executable, "-m", "tests.support.operator_process",
            "--config", str(config_path), "--ready-file", str(self.ready_file),
        ]  # fmt: skip
        if standalone:
            self.argv.append("--standalone")
        if stub_inputs:
            self.argv.append("--stub-inputs")
        if metrics_port is not None:
            self.argv += ["--metrics-port", str(metrics_port)]
        self.env = dict(os.environ, PYTHONPATH=str(ROOT), KUBECONFIG=str(kubeconfig))
        if priority is not None:
            self.env[PRIORITY_ENV] = str(priority)
        self.process: asyncio.subprocess.Process | None = None

    async def start(self, timeout: float = 60) -> None:
        self.ready_file.unlink(missing_ok=True)
        with self.log_path.open("ab") as log:
            self.process = await asyncio.create_subprocess_exec(
                *self.argv, stdout=log, stderr=asyncio.subprocess.STDOUT, env=self.env,
                start_new_session=True,
            )  # fmt: skip
        deadline = time.monotonic() + timeout
        while not self.ready_file.exists():
            if self.process.returncode is not None or time.monotonic() > deadline:
                await self.kill()
                raise AssertionError(f"the operator did not become ready:\n{self.log_tail()}")
            await asyncio.sleep(0.05)

    async def kill(self) -> None:
        """SIGKILL, as a crashed pod: nothing graceful is relied upon."""
        process, self.process = self.process, None
        if process is not None and process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            await process.wait()

    def log_tail(self, size: int = 4000) -> str:
        return self.log_path.read_bytes()[-size:].decode(errors="replace")


class Cluster:
    """Emulator + server + kubeconfig (set as $KUBECONFIG while entered) + operator."""

    def __init__(
        self, workdir: Path, operator_config: Mapping[str, Any], *, stub_inputs: bool = False
    ) -> None:
        self.workdir = workdir
        self.emulator = ClusterEmulator()
        self.emulator.install_defaults()
        crd = yaml.safe_load((ROOT / CRD_PATH).read_text())
        self.oj = self.emulator.install_crd(crd)
        self.config_path = workdir / "operator.yaml"
        self.config_path.write_text(yaml.safe_dump(dict(operator_config)))
        self._server = kmock.Server(self.emulator)
        self.stub_inputs = stub_inputs
        self.operators: list[OperatorProcess] = []
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

    async def start_operator(
        self, *, standalone: bool = True, priority: int | None = None,
        metrics_port: int | None = None,
    ) -> OperatorProcess:  # fmt: skip
        """A new operator replica, returned once kopf reports it ready."""
        operator = OperatorProcess(
            self.workdir, self.config_path, self.url, len(self.operators), standalone=standalone,
            stub_inputs=self.stub_inputs, priority=priority, metrics_port=metrics_port,
        )  # fmt: skip
        self.operators.append(operator)
        await operator.start()
        return operator

    async def kill_operator(self) -> None:
        """Kill every live replica (SIGKILL)."""
        for operator in self.operators:
            await operator.kill()

    def operator_logs(self) -> str:
        return "\n".join(f"--- {o.log_path.name}\n{o.log_tail()}" for o in self.operators)

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
        self.emulator.patch_object(self.oj, namespace, name, {"spec": dict(spec_patch)})

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
            raise AssertionError(
                f"{error}; status: {self.status(name)}\n{self.operator_logs()}"
            ) from None
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
