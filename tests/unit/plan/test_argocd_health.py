"""The chart's Argo CD health check (charts/kompaktor/files/argocd-health.lua), run by a real
Lua 5.1 (Argo CD's gopher-lua speaks 5.1) on jobs whose status the plan made in each phase."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from kompaktor.api.status import OptimizationJobStatus
from kompaktor.plan.conditions import conditions_for
from tests.unit.plan.phases import Obj, cluster_object, phases

lua51 = pytest.importorskip("lupa.lua51", reason="lupa (test extra) is not installed")

CHART = Path(__file__).resolve().parents[3] / "charts" / "kompaktor"
SCRIPT = CHART / "files" / "argocd-health.lua"
#: Argo CD opens only the base, table, package and a safe os library for health checks.
NOT_IN_ARGO = ("string", "math", "io", "debug", "coroutine", "python")


def health(obj: Obj) -> tuple[str, str]:
    """(hs.status, hs.message) as Argo CD gets them: `obj` is a global, the script returns hs."""
    lua = lua51.LuaRuntime(register_eval=False, register_builtins=False)
    env: Any = lua.globals()
    for name in NOT_IN_ARGO:
        env[name] = None
    env.obj = lua.table_from(obj, recursive=True)
    hs = lua.execute(SCRIPT.read_text())
    return str(hs.status), str(hs.message)


PHASES = phases()


@pytest.mark.parametrize(
    ("phase", "expected"),
    [
        ("new", ("Progressing", "Waiting for the Kompaktor operator to pick the job up")),
        ("pending", ("Progressing", "digesting the input model and dataset")),
        ("running", ("Progressing", "stage train is running")),
        ("retrying", ("Progressing", "stage train is retrying: OOMKilled: 137")),
        ("failed", ("Degraded", "stage train failed: InvalidInput: corrupt model")),
        ("succeeded", ("Healthy", "All stages succeeded")),
        ("suspended", ("Suspended", "The job is suspended (spec.suspend)")),
        ("edited", ("Progressing", "Waiting for the Kompaktor operator to see generation 2")),
    ],
)
def test_each_phase_has_its_health(phase: str, expected: tuple[str, str]) -> None:
    assert health(PHASES[phase]) == expected


def test_a_refused_spec_is_degraded_and_says_which_field() -> None:
    status, message = health(PHASES["invalid"])
    assert status == "Degraded"
    assert message.startswith("InvalidSpec: stage 't' (spec.stages[0], train): params.lr")


def test_a_cancelled_job_is_degraded() -> None:
    cancelled = OptimizationJobStatus(phase="Cancelled", observed_generation=1)
    cancelled = cancelled.model_copy(update={"conditions": conditions_for(cancelled, "t")})
    assert health(cluster_object(cancelled)) == ("Degraded", "The job is Cancelled")


def test_a_status_of_an_older_operator_without_reconciling_still_has_a_message() -> None:
    running = dict(PHASES["running"], status=dict(PHASES["running"]["status"], conditions=[]))
    assert health(running) == ("Progressing", "Running")


def test_an_unknown_phase_is_unknown_not_an_error() -> None:
    future = dict(PHASES["running"], status=dict(PHASES["running"]["status"], phase="Paused"))
    assert health(future) == ("Unknown", "Unknown phase Paused")
