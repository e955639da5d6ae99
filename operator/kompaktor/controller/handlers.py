"""kopf registration only: every decision is made by the plan via `Reconciler.run_pass`.

One daemon per OptimizationJob runs passes; events on its Jobs and pods (and spec edits)
wake it early, and the plan's Requeue sets how long it may sleep otherwise. The validating
admission webhook (`admission`) runs reconcile's spec checks when `admission.enabled`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, cast

import kopf

from kompaktor.api.spec import GROUP, PLURAL, VERSION
from kompaktor.config import load_config
from kompaktor.controller import admission, legacy_webhook
from kompaktor.controller.cleanup import delete_artifacts, deletes_artifacts
from kompaktor.controller.kube import Kube
from kompaktor.controller.reconciler import Reconciler
from kompaktor.executors.kubernetes import LABEL_JOB, MANAGED_BY
from kompaktor.metrics.prometheus import JobStatusCollector

FINALIZER = "kompaktor.io/finalizer"
ERROR_BACKOFF_SECONDS = 5.0
MANAGED = {MANAGED_BY: "kompaktor"}
Log = logging.Logger | logging.LoggerAdapter[Any]


class Runtime:
    """Per-operator state kept in kopf's memo: configuration, API client, wake-up events."""

    def __init__(self, config_path: str | None, metrics: JobStatusCollector | None) -> None:
        self.config = load_config(config_path)
        self.metrics = metrics or JobStatusCollector()
        self.connection: kopf.ConnectionInfo | None = None
        self._kube: Kube | None = None
        self._wake: dict[tuple[str, str], asyncio.Event] = {}
        self.logged_in = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def kube(self) -> Kube:
        if self._kube is None:
            if self.connection is None:
                raise kopf.TemporaryError("not logged in yet", delay=1)
            self._kube = Kube(self.connection)
        return self._kube

    @property
    def reconciler(self) -> Reconciler:
        return Reconciler(self.kube, self.config, _emit)

    def wake(self, namespace: str, name: str) -> asyncio.Event:
        return self._wake.setdefault((namespace, name), asyncio.Event())

    def forget(self, namespace: str, name: str) -> None:
        self._wake.pop((namespace, name), None)

    def poke(self, namespace: str | None, name: str | None) -> None:
        """Wake the job's daemon; call it on the loop (an asyncio.Event is not thread-safe)."""
        event = self._wake.get((namespace or "", name or ""))
        if event is not None:
            event.set()

    def after_login(self, work: Callable[[Kube], Awaitable[None]]) -> None:
        """Run `work` with the API client once kopf has logged in (start-up handlers run
        before it does)."""

        async def run() -> None:
            await self.logged_in.wait()
            await work(self.kube)

        task = asyncio.create_task(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._kube is not None:
            await self._kube.close()
            self._kube = None


def _emit(obj: Mapping[str, Any], kind: str, reason: str, message: str) -> None:
    kopf.event(cast(Any, dict(obj)), type=kind, reason=reason, message=message[:1024])


def runtime(memo: Any) -> Runtime:
    if getattr(memo, "kompaktor", None) is None:
        memo.kompaktor = Runtime(getattr(memo, "config_path", None), getattr(memo, "metrics", None))
    found: Runtime = memo.kompaktor
    return found


@kopf.on.startup()
async def _startup(settings: kopf.OperatorSettings, memo: Any, logger: Log, **_: Any) -> None:
    rt = runtime(memo)
    peering = rt.config.peering
    settings.peering.name = peering.name
    settings.peering.mandatory = peering.mandatory
    settings.peering.lifetime = peering.lifetime_seconds
    settings.peering.priority = peering.replica_priority()
    settings.peering.clusterwide = not rt.config.namespaces
    if not peering.enabled:
        settings.peering.standalone = True
    settings.persistence.finalizer = FINALIZER
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="kompaktor.io")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix="kompaktor.io", key="last-handled-configuration"
    )
    settings.posting.level = logging.WARNING  # only our own events, not every log line
    settings.watching.server_timeout = 300
    admission.configure(settings, rt.config)
    if legacy_webhook.applies(rt.config):
        rt.after_login(lambda kube: legacy_webhook.retire(kube, rt.config, logger))


@kopf.on.cleanup()
async def _cleanup(memo: Any, **_: Any) -> None:
    await runtime(memo).close()


@kopf.on.login()
async def _login(memo: Any, **kwargs: Any) -> kopf.ConnectionInfo | None:
    """async: kopf runs a sync handler in a thread, and `logged_in` is the loop's."""
    info = kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)
    rt = runtime(memo)
    rt.connection = info
    if info is not None:
        rt.logged_in.set()
    return info


@kopf.daemon(GROUP, VERSION, PLURAL, cancellation_timeout=10.0)
async def _job_daemon(name: str, namespace: str | None, memo: Any, logger: Log, **_: Any) -> None:
    namespace = namespace or "default"
    rt = runtime(memo)
    wake = rt.wake(namespace, name)
    try:
        while True:
            wake.clear()
            try:
                done = await rt.reconciler.run_pass(namespace, name)
                delay = done.wake_after
                if done.status is not None:
                    rt.metrics.record(namespace, name, done.status)
            except kopf.TemporaryError:
                delay = ERROR_BACKOFF_SECONDS
            except Exception:
                logger.exception("reconcile of %s/%s failed; retrying", namespace, name)
                rt.metrics.record_error()
                delay = ERROR_BACKOFF_SECONDS
            # Not wait_for: on Python 3.11 it can swallow kopf's cancellation when the event
            # fires at the same moment, and the daemon would then never stop.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await wake.wait()
    finally:  # deleted, or this replica paused: another one exports it now
        rt.forget(namespace, name)
        rt.metrics.forget(namespace, name)


@kopf.on.validate(
    GROUP, VERSION, PLURAL, id=admission.WEBHOOK_ID, operations=list(admission.JUDGED),
    # Kept when a replica stops (another still serves it); a webhook that cannot be reached
    # admits, and reconcile still checks, so an uninstalled operator never blocks an update.
    persistent=True, ignore_failures=True,
)  # fmt: skip
def _admit(
    subresource: str | None,
    memo: Any,
    logger: Log,
    operation: str | None = None,
    new: Mapping[str, Any] | None = None,
    old: Mapping[str, Any] | None = None,
    **_: Any,
) -> None:
    admission.review(
        runtime(memo).config, operation=operation, new=new, old=old, subresource=subresource,
        logger=logger,
    )  # fmt: skip


def _needs_pass(body: Mapping[str, Any], **_: Any) -> bool:
    generation = body.get("metadata", {}).get("generation")
    return bool(generation != (body.get("status") or {}).get("observedGeneration"))


# The wake-ups are async: kopf runs a sync handler in a thread, and an asyncio.Event set from
# there neither wakes the loop nor is safe (debug mode refuses it).
@kopf.on.event(GROUP, VERSION, PLURAL, when=_needs_pass)
async def _job_changed(name: str, namespace: str | None, memo: Any, **_: Any) -> None:
    runtime(memo).poke(namespace, name)


@kopf.on.event("batch", "v1", "jobs", labels=MANAGED)
async def _child_job_changed(
    labels: Mapping[str, str], namespace: str | None, memo: Any, **_: Any
) -> None:
    runtime(memo).poke(namespace, labels.get(LABEL_JOB))


@kopf.on.event("", "v1", "pods", labels=MANAGED)
async def _child_pod_changed(
    labels: Mapping[str, str], namespace: str | None, memo: Any, **_: Any
) -> None:
    runtime(memo).poke(namespace, labels.get(LABEL_JOB))


def _deletes_artifacts(spec: Mapping[str, Any], **_: Any) -> bool:
    return deletes_artifacts(spec)


@kopf.on.delete(GROUP, VERSION, PLURAL, when=_deletes_artifacts)
async def _delete_artifacts(
    body: kopf.Body, name: str, namespace: str | None, memo: Any, logger: Log, **_: Any
) -> None:
    """Children go by ownerReferences; artifacts only when the job asked for it, and on a
    shared root only what no other job uses (`cleanup`)."""
    rt = runtime(memo)  # rt.kube raises while not logged in yet: kopf retries the handler
    await delete_artifacts(body, namespace or "default", name, rt.config, lambda: rt.kube, logger)
