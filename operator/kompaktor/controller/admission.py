"""Admission: `kubectl apply` refuses an OptimizationJob that reconcile would fail as InvalidSpec.

The check is reconcile's own (`Reconciler.context` and the plan's `validate_job`): the spec
model, the pools the operator's configuration knows, a default artifacts root when the job names
none, and every stage's params, so both say the same thing, e.g.
`stage 'prune' (spec.stages[1], prune): params.sparsity: must be in (0, 1) (got 1.5)`.
Reconcile still checks: a job admitted before a configuration change is caught there.

Only a new spec is judged (CREATE, or an UPDATE that changes `spec`): deletions, status,
metadata and finalizer updates, and anything on an object being deleted are always admitted, so
an invalid job can still be cleaned up. Only jobs in the namespaces this operator watches are
judged: another operator, with its own pools, may look after the others. The handler is
registered in `handlers`; kopf's HTTPS server serves it and keeps the
ValidatingWebhookConfiguration (`configuration_name`) up to date.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Mapping
from fnmatch import fnmatchcase
from typing import Any

import kopf
from pydantic import ValidationError

from kompaktor.api.messages import spec_problems
from kompaktor.api.spec import GROUP, OptimizationJobSpec
from kompaktor.config import AdmissionConfig, OperatorConfig, check_pools
from kompaktor.errors import JobSpecError, KompaktorError
from kompaktor.stages.validate import validate_job

#: The handler's id: the webhook is `optimizationjobs.<configuration_name>`, its path
#: `/optimizationjobs`.
WEBHOOK_ID = "optimizationjobs"
#: What the API server answers a refused request with (Unprocessable Entity, as for a bad field).
REFUSED = 422
#: The operations judged (the webhook's rules); others are admitted.
JUDGED: tuple[kopf.Operation, ...] = ("CREATE", "UPDATE")


def problems(
    spec: Mapping[str, Any] | None, config: OperatorConfig, namespace: str = "", name: str = ""
) -> list[str]:
    """What reconcile would refuse in `spec`, one message per check that fails."""
    try:
        parsed = OptimizationJobSpec.model_validate(spec or {})
    except ValidationError as error:
        return [spec_problems(error, spec)]
    found: list[str] = []
    for check in (
        lambda: check_pools(parsed, config),
        lambda: config.artifacts_for(parsed, namespace, name),
        lambda: validate_job(parsed),
    ):
        try:
            check()
        except JobSpecError as error:
            found.append(str(error))
    return found


def configuration_name(config: OperatorConfig) -> str:
    """The ValidatingWebhookConfiguration kopf creates and patches (and its webhook's name
    suffix): one per operator, named after it, so two installs in a cluster keep their own."""
    return config.admission.configuration_name or f"{config.peering.name}.{GROUP}"


def watched(config: OperatorConfig, namespace: str) -> bool:
    """Whether this operator looks after `namespace`: one of `namespaces` (names or globs).

    kopf's webhook configuration has no namespaceSelector, so the API server asks about every
    namespace; a job outside the watched ones is another operator's to judge, or no one's."""
    return not config.namespaces or any(fnmatchcase(namespace, p) for p in config.namespaces)


def admit(
    body: Mapping[str, Any] | None,
    config: OperatorConfig,
    *,
    operation: str = "CREATE",
    old: Mapping[str, Any] | None = None,
    subresource: str | None = None,
) -> None:
    """Return when the request may go through; JobSpecError with every problem otherwise.

    `body` is the object as it would be stored (the request's `object`), `old` the stored one
    (UPDATE), `subresource` e.g. `status`."""
    if operation not in JUDGED or subresource or body is None:
        return  # DELETE, CONNECT, /status: never blocked
    meta = body.get("metadata") or {}
    if meta.get("deletionTimestamp"):
        return  # being deleted: kopf must be able to remove its finalizer
    if not watched(config, meta.get("namespace") or ""):
        return  # not ours: its own operator (and its configuration) judges it
    spec = body.get("spec")
    if operation == "UPDATE" and old is not None and old.get("spec") == spec:
        return  # metadata, annotations, finalizers: the spec was admitted (or predates this)
    found = problems(spec, config, meta.get("namespace") or "", meta.get("name") or "")
    if found:
        raise JobSpecError("\n".join(found))


def review(
    config: OperatorConfig,
    *,
    operation: str | None,
    new: Mapping[str, Any] | None,
    old: Mapping[str, Any] | None,
    subresource: str | None,
    logger: logging.Logger | logging.LoggerAdapter[Any],
) -> None:
    """The kopf handler's body: `admit`, its refusal as kopf.AdmissionError (422).

    An unexpected error admits the job (logged): reconcile checks it again, and a bug here must
    not block every apply."""
    try:
        admit(new, config, operation=operation or "", old=old, subresource=subresource)
    except JobSpecError as error:
        raise kopf.AdmissionError(str(error), code=REFUSED) from None
    except Exception:
        logger.exception("admission check failed; admitting (reconcile checks again)")


class ServiceWebhookServer(kopf.WebhookServer):
    """kopf's HTTPS webhook server, announcing a Service (not its own URL) to the API server."""

    def __init__(self, service: kopf.WebhookClientConfigService, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.service = service

    async def __call__(self, fn: kopf.WebhookFn) -> AsyncIterator[kopf.WebhookClientConfig]:
        async for client_config in super().__call__(fn):
            announced = kopf.WebhookClientConfig(service=kopf.WebhookClientConfigService(
                **self.service
            ))  # fmt: skip
            if client_config.get("caBundle"):
                announced["caBundle"] = client_config["caBundle"]
            yield announced


async def no_server(fn: kopf.WebhookFn) -> AsyncIterator[kopf.WebhookClientConfig]:
    """Admission disabled: kopf refuses to start with a webhook handler and no server, so this
    one never listens and never announces a webhook."""
    await asyncio.Event().wait()
    nothing: tuple[kopf.WebhookClientConfig, ...] = ()
    for client_config in nothing:  # (an async generator that yields nothing)
        yield client_config


def webhook_server(admission: AdmissionConfig) -> kopf.WebhookServer:
    """The server for an enabled `admission` section; KompaktorError when its files are bad."""
    admission.check_files()
    options: dict[str, Any] = {
        "addr": admission.address,
        "port": admission.port,
        "certfile": admission.cert_file,
        "pkeyfile": admission.key_file,
        "cafile": admission.ca_file,
    }
    if admission.service is None:
        return kopf.WebhookServer(**options)
    service = admission.service
    return ServiceWebhookServer(
        kopf.WebhookClientConfigService(
            name=service.name, namespace=service.namespace, port=service.port
        ),
        **options,
    )


def configure(settings: kopf.OperatorSettings, config: OperatorConfig) -> None:
    """Start-up: serve the webhook and let kopf manage its configuration, or serve nothing."""
    if not config.admission.enabled:
        settings.admission.server = no_server
        return
    try:
        settings.admission.server = webhook_server(config.admission)
    except KompaktorError as error:
        raise kopf.PermanentError(str(error)) from None
    settings.admission.managed = configuration_name(config)
