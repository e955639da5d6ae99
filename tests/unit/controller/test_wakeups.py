"""Job and child events wake the job's daemon from the event loop, invoked as kopf invokes them.

kopf runs a sync handler in a thread; an asyncio.Event set there does not wake the loop and can
leave the daemon's waiter done but never resumed.
"""

from __future__ import annotations

import asyncio
import threading
import types
from typing import Any

import pytest
from kopf._core.actions.invocation import invoke

from kompaktor.controller import handlers
from kompaktor.controller.handlers import Runtime, runtime


@pytest.mark.parametrize(
    ("handler", "kwargs"),
    [
        (handlers._job_changed, {"name": "pipe"}),
        (handlers._child_job_changed, {"labels": {"kompaktor.io/job": "pipe"}}),
        (handlers._child_pod_changed, {"labels": {"kompaktor.io/job": "pipe"}}),
    ],
)
async def test_an_event_wakes_the_daemon_from_the_loop_thread(
    handler: Any, kwargs: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    poked_from: list[int] = []
    poke = Runtime.poke

    def recording_poke(self: Runtime, namespace: str | None, name: str | None) -> None:
        poked_from.append(threading.get_ident())
        poke(self, namespace, name)

    monkeypatch.setattr(Runtime, "poke", recording_poke)
    memo = types.SimpleNamespace()
    wake = runtime(memo).wake("default", "pipe")
    waiter = asyncio.create_task(wake.wait())
    await asyncio.sleep(0)  # the daemon is waiting when the event comes
    await invoke(handler, kwargs={"namespace": "default", "memo": memo, **kwargs})
    assert poked_from == [threading.get_ident()]
    await asyncio.wait_for(waiter, 1)
