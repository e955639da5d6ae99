"""The webhook configuration `kompaktor.io` that releases before admission.configurationName
left: which one is this operator's to delete, and what the log says when it is not, or when
the operator may not delete it (the chart grants no delete on webhook configurations)."""

from __future__ import annotations

import logging
from typing import Any, cast

import pytest

from kompaktor.config import OperatorConfig
from kompaktor.controller import legacy_webhook
from kompaktor.controller.kube import ApiError, Kube
from kompaktor.controller.legacy_webhook import DELETE, applies, calls_us, made_by_kopf, retire

SERVICE = {"name": "kompaktor-webhook", "namespace": "kompaktor-system", "port": 443}


def config(**admission: Any) -> OperatorConfig:
    return OperatorConfig.model_validate({"admission": {
        "enabled": True, "certFile": "/tls/tls.crt", "keyFile": "/tls/tls.key",
        "service": SERVICE, **admission,
    }})  # fmt: skip


def legacy(*names: str, **service: Any) -> dict[str, Any]:
    called = {**SERVICE, **service, "path": "/optimizationjobs"}
    hooks = [{"name": n, "clientConfig": {"service": called}} for n in names]
    return {"metadata": {"name": "kompaktor.io"}, "webhooks": hooks}


OURS = legacy("optimizationjobs.kompaktor.io")


def test_only_an_operator_whose_configuration_has_another_name_looks() -> None:
    assert applies(config())
    assert not applies(config(configurationName="kompaktor.io"))
    assert not applies(config(enabled=False, service=None))


def test_ours_is_kopfs_webhook_calling_this_operators_service() -> None:
    assert made_by_kopf(OURS) and calls_us(OURS, config().admission)
    assert not calls_us(legacy("optimizationjobs.kompaktor.io", namespace="team-b"),
                        config().admission)  # fmt: skip
    assert not made_by_kopf(legacy("optimizationjobs.kompaktor.io", "other.kompaktor.io"))
    assert not made_by_kopf(legacy())
    assert not calls_us(OURS, config(service=None).admission)  # a URL says too little


class ForbiddenToDelete:
    """An API server whose RBAC lets the operator read webhook configurations, not delete
    them (the chart's); the emulated one grants everything."""

    def __init__(self, found: dict[str, Any] | None) -> None:
        self.found, self.deleted = found, False

    async def get(self, path: str) -> dict[str, Any] | None:
        assert path == f"{legacy_webhook.VALIDATING}/kompaktor.io"
        return self.found

    async def delete(self, path: str) -> None:
        raise ApiError(403, "validatingwebhookconfigurations is forbidden")


async def test_one_it_may_not_delete_is_named_with_the_command(
    caplog: pytest.LogCaptureFixture,
) -> None:
    kube = cast(Kube, ForbiddenToDelete(OURS))
    with caplog.at_level(logging.INFO):
        await retire(kube, config(), logging.getLogger("test"))
    (record,) = caplog.records
    assert record.levelno == logging.WARNING
    assert "every job is judged twice" in record.message and "403" in record.message
    assert record.message.endswith(f"delete it: {DELETE}")


async def test_none_left_or_not_kopfs_says_nothing(caplog: pytest.LogCaptureFixture) -> None:
    for found in (None, legacy("someone-else.kompaktor.io")):
        with caplog.at_level(logging.INFO):
            await retire(cast(Kube, ForbiddenToDelete(found)), config(), logging.getLogger("t"))
    assert not caplog.records
