"""Admission without a cluster: `admit` refuses what reconcile refuses, with reconcile's words,
and never blocks a deletion, a status or metadata update, or an object being deleted."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import kopf
import pytest

from kompaktor.config import AdmissionConfig, OperatorConfig, parse_config
from kompaktor.controller import admission, handlers
from kompaktor.controller.admission import admit, review
from kompaktor.controller.reconciler import Reconciler
from kompaktor.errors import JobSpecError, KompaktorError

CONFIG = OperatorConfig.model_validate(
    {"pools": [{"name": "cpu"}, {"name": "gpu"}], "artifactsUri": "s3://runs/jobs"}
)
BAD_PARAMS = "stage 'prune' (spec.stages[1], prune): params.sparsity: must be in (0, 1) (got 1.5)"
LOG = logging.getLogger(__name__)


def spec(*stages: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {
        "model": {"uri": "s3://models/model.pt2"},
        "dataset": {"uri": "sklearn:digits"},
        "stages": list(stages) or [prune("a", 0.3)],
        **extra,
    }


def prune(name: str, sparsity: float, **extra: Any) -> dict[str, Any]:
    return {"name": name, "type": "prune", "params": {"sparsity": sparsity}, **extra}


def job(job_spec: dict[str, Any], **meta: Any) -> dict[str, Any]:
    return {
        "apiVersion": "kompaktor.io/v1alpha1",
        "kind": "OptimizationJob",
        "metadata": {"name": "j", "namespace": "default", **meta},
        "spec": job_spec,
    }


GOOD = job(spec(prune("a", 0.3), prune("b", 0.5, pool="gpu")))
BAD = job(spec(prune("a", 0.3), prune("prune", 1.5)))


def refusal(body: dict[str, Any], config: OperatorConfig = CONFIG, **kwargs: Any) -> str:
    with pytest.raises(JobSpecError) as caught:
        admit(body, config, **kwargs)
    return str(caught.value)


def reconcile_message(body: dict[str, Any], config: OperatorConfig = CONFIG) -> str:
    """What reconcile's own check (`Reconciler.context`) says about the same object."""
    reconciler = Reconciler(None, config, lambda *_: None)  # type: ignore[arg-type]
    with pytest.raises(KompaktorError) as caught:
        reconciler.context(body, "default", "j", 1)
    return str(caught.value)


# ----------------------------------------------------------------- what is refused


def test_a_good_job_is_admitted_on_create_and_on_a_spec_edit() -> None:
    admit(GOOD, CONFIG)
    admit(GOOD, CONFIG, operation="UPDATE", old=BAD)


def test_bad_params_are_refused_naming_the_stage_and_the_field() -> None:
    assert refusal(BAD) == BAD_PARAMS
    assert refusal(BAD, operation="UPDATE", old=GOOD) == BAD_PARAMS


def test_an_unknown_pool_is_refused_with_reconciles_message() -> None:
    body = job(spec(prune("a", 0.3), prune("b", 0.3, pool="tpu")))
    message = refusal(body)
    assert message == "stage 'b' (spec.stages[1], prune): pool: unknown pool 'tpu'; " + (
        "known pools: cpu, gpu"
    )
    assert message == reconcile_message(body)


def test_every_problem_is_named_at_once() -> None:
    body = job(spec(prune("a", 0.3, pool="tpu"), prune("prune", 1.5)))
    assert refusal(body).splitlines() == [
        "stage 'a' (spec.stages[0], prune): pool: unknown pool 'tpu'; known pools: cpu, gpu",
        BAD_PARAMS,
    ]


def test_schema_errors_and_a_missing_artifacts_root_read_as_in_reconcile() -> None:
    body = job({"model": {"uri": "s3://models/model.pt2"}})
    message = refusal(body)
    assert message == "; ".join(
        f"spec.{field}: required field is missing" for field in ("dataset", "stages")
    )
    assert message == reconcile_message(body)
    no_root = OperatorConfig()
    message = refusal(GOOD, no_root)
    assert "spec.artifacts.uri: required" in message
    assert message.startswith(reconcile_message(GOOD, no_root))
    admit(job(spec(artifacts={"uri": "s3://runs/mine"})), no_root)


# ----------------------------------------------------------------- what is never blocked


def test_a_deletion_is_admitted() -> None:
    admit(BAD, CONFIG, operation="DELETE")
    admit(None, CONFIG, operation="DELETE")
    admit(BAD, CONFIG, operation="CONNECT")


def test_an_object_being_deleted_is_admitted() -> None:
    deleting = job(BAD["spec"], deletionTimestamp="2024-01-01T00:00:00Z", finalizers=[])
    admit(deleting, CONFIG, operation="UPDATE", old=BAD)
    edited = job(spec(prune("x", 7.0)), deletionTimestamp="2024-01-01T00:00:00Z")
    admit(edited, CONFIG, operation="UPDATE", old=BAD)


def test_status_and_metadata_updates_of_an_invalid_job_are_admitted() -> None:
    """A job admitted before a configuration change (its pool removed) must stay editable for
    kopf (annotations, finalizer) and for the status writer."""
    relabelled = job(BAD["spec"], labels={"team": "a"}, finalizers=["kompaktor.io/finalizer"])
    admit(relabelled, CONFIG, operation="UPDATE", old=BAD)
    admit(BAD, CONFIG, operation="UPDATE", old=BAD, subresource="status")


# ----------------------------------------------------------------- whose jobs are judged


def test_only_jobs_in_the_watched_namespaces_are_judged() -> None:
    """The webhook refused jobs in every namespace, with this operator's pools, also those
    another operator (another release, its own pools) looks after."""
    scoped = CONFIG.model_copy(update={"namespaces": ["ml", "team-*"]})
    elsewhere = job(BAD["spec"], namespace="other")
    admit(elsewhere, scoped)
    admit(elsewhere, scoped, operation="UPDATE", old=GOOD)
    for namespace in ("ml", "team-a"):
        assert refusal(job(BAD["spec"], namespace=namespace), scoped) == BAD_PARAMS
    assert refusal(elsewhere, CONFIG) == BAD_PARAMS  # watching the whole cluster


def test_the_webhook_configuration_is_named_after_the_operator() -> None:
    """It was `kompaktor.io` for every install: two releases overwrote each other's."""
    assert admission.configuration_name(OperatorConfig()) == "kompaktor.kompaktor.io"
    release = parse_config({"peering": {"name": "ml-kompaktor"}})
    assert admission.configuration_name(release) == "ml-kompaktor.kompaktor.io"
    named = parse_config({"admission": {"configurationName": "ml.example.com"}})
    assert admission.configuration_name(named) == "ml.example.com"


@pytest.mark.parametrize(
    "name", ["kompaktor", "Kompaktor.io", "-a.io", "a..io", ("a" * 60 + ".") * 4 + "io"]
)
def test_a_configuration_name_the_api_server_refuses_is_refused_at_start(name: str) -> None:
    with pytest.raises(KompaktorError, match=r"admission\.configurationName: .*two or more"):
        parse_config({"admission": {"configurationName": name}})


# ----------------------------------------------------------------- the kopf handler


def test_review_refuses_with_a_422_admission_error() -> None:
    with pytest.raises(kopf.AdmissionError) as caught:
        review(CONFIG, operation="CREATE", new=BAD, old=None, subresource=None, logger=LOG)
    assert str(caught.value) == BAD_PARAMS
    assert caught.value.code == 422
    review(CONFIG, operation="DELETE", new=None, old=BAD, subresource=None, logger=LOG)


def test_an_unexpected_error_admits_and_is_logged(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(*_: Any) -> list[str]:
        raise RuntimeError("bug")

    monkeypatch.setattr(admission, "problems", broken)
    review(CONFIG, operation="CREATE", new=BAD, old=None, subresource=None, logger=LOG)
    assert "admitting (reconcile checks again)" in caplog.text


def test_the_handler_is_registered_for_create_and_update_only() -> None:
    registered = [
        h
        for h in kopf.get_default_registry()._webhooks.get_all_handlers()
        if h.fn is handlers._admit
    ]
    assert len(registered) == 1
    (handler,) = registered
    assert handler.id == admission.WEBHOOK_ID
    assert set(handler.operations or ()) == {"CREATE", "UPDATE"}
    assert handler.persistent and handler.ignore_failures


# ----------------------------------------------------------------- configuration


def test_admission_is_off_by_default_and_serves_nothing() -> None:
    config = OperatorConfig()
    assert config.admission.enabled is False
    settings = kopf.OperatorSettings()
    admission.configure(settings, config)
    assert settings.admission.server is admission.no_server
    assert settings.admission.managed is None


def test_enabled_admission_needs_a_certificate_and_its_key() -> None:
    with pytest.raises(KompaktorError, match=r"admission\.certFile: required"):
        parse_config({"admission": {"enabled": True}})
    with pytest.raises(KompaktorError, match=r"admission\.keyFile: required"):
        parse_config({"admission": {"enabled": True, "certFile": "/tls/tls.crt"}})
    parse_config({"admission": {"certFile": "/nowhere"}})  # disabled: not looked at


def test_certificate_files_are_checked_at_start_up(tmp_path: Path) -> None:
    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    section = {"enabled": True, "certFile": str(cert), "keyFile": str(key)}
    with pytest.raises(KompaktorError, match=rf"admission\.certFile: {cert}: no such file"):
        AdmissionConfig.model_validate(section).check_files()
    cert.write_text("not a certificate")
    with pytest.raises(KompaktorError, match=r"admission\.keyFile: .*no such file"):
        AdmissionConfig.model_validate(section).check_files()
    key.write_text("not a key")
    with pytest.raises(KompaktorError, match=r"admission\.certFile/keyFile: .*do not load"):
        AdmissionConfig.model_validate(section).check_files()
    missing_ca = {**section, "caFile": str(tmp_path / "ca.crt")}
    with pytest.raises(KompaktorError, match=r"admission\.caFile: .*no such file"):
        AdmissionConfig.model_validate(missing_ca).check_files()
    settings = kopf.OperatorSettings()
    config = parse_config({"admission": section})
    with pytest.raises(kopf.PermanentError, match=r"admission\.certFile/keyFile"):
        admission.configure(settings, config)
    assert settings.admission.managed is None


def test_a_misspelt_spec_field_is_refused_naming_the_field_it_may_mean() -> None:
    body = job(spec(objective={"metric": "accuracy", "maxdrop": 0.01}))
    message = refusal(body)
    assert message.startswith("spec.objective.maxdrop: unknown field; did you mean 'maxDrop'?")
    assert message == reconcile_message(body)
