"""Upgrades from releases whose webhook configuration had the fixed name `kompaktor.io`.

Those releases had kopf keep the ValidatingWebhookConfiguration `kompaktor.io` (and an empty
MutatingWebhookConfiguration of that name). The configuration is now named per operator
(`admission.configuration_name`), so after an upgrade the old one stays behind and the API
server calls the same webhook twice for every job. kopf creates these with a name only (no
labels, no owner), so what marks the old one as this operator's is what kopf wrote into it:
only its `optimizationjobs.kompaktor.io` webhook, calling this operator's Service. That one is
deleted at start-up, where RBAC allows (the chart grants no delete on webhook configurations);
one that calls anything else may still serve an operator of an earlier release elsewhere in the
cluster. Either way the log then says how to delete it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import aiohttp

from kompaktor.config import AdmissionConfig, OperatorConfig
from kompaktor.controller.admission import WEBHOOK_ID, configuration_name
from kompaktor.controller.kube import ApiError, Kube

#: The configuration name of releases before `admission.configurationName`.
LEGACY = "kompaktor.io"
VALIDATING = "/apis/admissionregistration.k8s.io/v1/validatingwebhookconfigurations"
MUTATING = "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations"
DELETE = f"kubectl delete validatingwebhookconfiguration,mutatingwebhookconfiguration {LEGACY}"

Log = logging.Logger | logging.LoggerAdapter[Any]
#: What an API call may fail with: the answer, or no answer.
FAILURES = (ApiError, aiohttp.ClientError, TimeoutError)


def applies(config: OperatorConfig) -> bool:
    """Whether this operator keeps a webhook configuration under another name than `LEGACY`."""
    return config.admission.enabled and configuration_name(config) != LEGACY


def made_by_kopf(found: Mapping[str, Any]) -> bool:
    """Whether `found` holds only the webhook kopf wrote for our handler under `LEGACY`."""
    hooks = found.get("webhooks") or []
    return bool(hooks) and all(h.get("name") == f"{WEBHOOK_ID}.{LEGACY}" for h in hooks)


def callee(found: Mapping[str, Any]) -> str:
    """What `found`'s webhooks call: `service NAMESPACE/NAME`, or their URL(s)."""
    targets = set()
    for hook in found.get("webhooks") or []:
        client = hook.get("clientConfig") or {}
        service = client.get("service") or {}
        if service:
            targets.add(f"service {service.get('namespace')}/{service.get('name')}")
        else:
            targets.add(str(client.get("url") or "nothing"))
    return ", ".join(sorted(targets))


def calls_us(found: Mapping[str, Any], admission: AdmissionConfig) -> bool:
    """Whether `found` calls this operator's Service (a development server's URL says too
    little: such a configuration is never taken for ours)."""
    service = admission.service
    return service is not None and callee(found) == f"service {service.namespace}/{service.name}"


async def retire(kube: Kube, config: OperatorConfig, log: Log) -> None:
    """Delete the `LEGACY` configurations when they are this operator's (see the module), or
    log a warning with the command that deletes them when they may not be or cannot be.
    Never raises: admission works either way, and reconcile checks every job."""
    if not applies(config):
        return
    try:
        found = await kube.get(f"{VALIDATING}/{LEGACY}")
    except FAILURES as error:
        log.warning(
            f"Cannot tell whether a release before admission.configurationName left the "
            f"ValidatingWebhookConfiguration {LEGACY} ({error}): if `kubectl get "
            f"validatingwebhookconfiguration {LEGACY}` finds it and no operator of an earlier "
            f"release uses it, delete it: {DELETE}"
        )
        return
    if found is None or not made_by_kopf(found):
        return  # none, or not kopf's: someone else's to keep
    if not calls_us(found, config.admission):
        log.warning(
            f"The ValidatingWebhookConfiguration {LEGACY}, left by a release before "
            f"admission.configurationName, calls {callee(found)}, not this operator (whose "
            f"configuration is {configuration_name(config)}): once no operator of an earlier "
            f"release uses it, delete it: {DELETE}"
        )
        return
    try:
        await kube.delete(f"{VALIDATING}/{LEGACY}")
        await kube.delete(f"{MUTATING}/{LEGACY}")
    except FAILURES as error:
        log.warning(
            f"The ValidatingWebhookConfiguration {LEGACY} an earlier release of this operator "
            f"left still calls it, so every job is judged twice, and it could not be deleted "
            f"({error}): delete it: {DELETE}"
        )
        return
    log.info(
        f"Deleted the webhook configurations {LEGACY} an earlier release of this operator "
        f"left: its webhook is kept in {configuration_name(config)} now"
    )
