"""The admission webhook end to end: the operator (its own process, against the emulated API
server) serves HTTPS on 127.0.0.1 with a certificate the test made, kopf writes the
ValidatingWebhookConfiguration, and AdmissionReviews posted where it points are answered with
reconcile's own messages. (The emulator calls no webhooks: the test plays the API server.)"""

from __future__ import annotations

import base64
import socket
import ssl
import uuid
from datetime import UTC, datetime, timedelta
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from tests.support.cluster import Cluster, optimization_job
from tests.support.pools import operator_config

pytestmark = pytest.mark.cluster

SERVICE = {"name": "kompaktor-webhook", "namespace": "kompaktor-system", "port": 443}
WEBHOOKS = "admissionregistration.k8s.io/v1/validatingwebhookconfigurations"
MUTATING = "admissionregistration.k8s.io/v1/mutatingwebhookconfigurations"
#: The webhook configurations' name: the operator's (peering) name, `kompaktor` here.
CONFIGURATION = "kompaktor.kompaktor.io"
BAD_PARAMS = "stage 'prune' (spec.stages[1], prune): params.sparsity: must be in (0, 1) (got 1.5)"


def make_certificates(folder: Path) -> tuple[Path, Path, Path]:
    """A CA and a server certificate it signed for 127.0.0.1: (ca.crt, tls.crt, tls.key)."""
    x509 = pytest.importorskip(
        "cryptography.x509", reason="cryptography (to make a test certificate) is not installed"
    )
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.now(UTC)

    def builder(subject: str, issuer: str, key: Any, signer: Any) -> Any:
        return (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5))
            .not_valid_after(now + timedelta(days=1))
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(signer.public_key()), False
            )
        )

    signing = dict.fromkeys(
        ("digital_signature", "content_commitment", "key_encipherment", "data_encipherment",
         "key_agreement", "encipher_only", "decipher_only"), False,
    ) | {"key_cert_sign": True, "crl_sign": True}  # fmt: skip
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        builder("kompaktor test CA", "kompaktor test CA", ca_key, ca_key)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(**signing), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    names = [
        x509.IPAddress(IPv4Address("127.0.0.1")),
        x509.DNSName(f"{SERVICE['name']}.{SERVICE['namespace']}.svc"),
    ]
    cert = (
        builder("127.0.0.1", "kompaktor test CA", key, ca_key)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    paths = folder / "ca.crt", folder / "tls.crt", folder / "tls.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return paths


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def spec(*sparsities: float) -> dict[str, Any]:
    names = ["a", "prune", "c"]
    return {
        "model": {"uri": "s3://models/model.pt2"},
        "dataset": {"uri": "sklearn:digits"},
        "stages": [
            {"name": name, "type": "prune", "params": {"sparsity": sparsity}}
            for name, sparsity in zip(names, sparsities, strict=False)
        ],
    }


def admission_review(
    operation: str, new: dict[str, Any] | None, old: dict[str, Any] | None = None
) -> dict[str, Any]:
    """What the API server posts to a validating webhook (admission.k8s.io/v1)."""
    meta = (new or old or {})["metadata"]
    group, version = "kompaktor.io", "v1alpha1"
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": str(uuid.uuid4()),
            "kind": {"group": group, "version": version, "kind": "OptimizationJob"},
            "resource": {"group": group, "version": version, "resource": "optimizationjobs"},
            "requestKind": {"group": group, "version": version, "kind": "OptimizationJob"},
            "requestResource": {
                "group": group, "version": version, "resource": "optimizationjobs",
            },
            "name": meta["name"],
            "namespace": meta["namespace"],
            "operation": operation,
            "userInfo": {"username": "tester", "groups": ["system:authenticated"]},
            "object": new,
            "oldObject": old,
            "dryRun": False,
        },
    }  # fmt: skip


async def test_the_webhook_refuses_a_bad_job_with_the_stage_and_the_field(
    tmp_path: Path,
) -> None:
    ca, cert, key = make_certificates(tmp_path)
    port = free_port()
    config = operator_config(tmp_path) | {
        "admission": {
            "enabled": True,
            "address": "127.0.0.1",
            "port": port,
            "certFile": str(cert),
            "keyFile": str(key),
            "caFile": str(ca),
            "service": SERVICE,
        }
    }
    async with Cluster(tmp_path, config) as cluster:
        await cluster.start_operator()

        def configured() -> dict[str, Any] | None:
            found = cluster.emulator.get_live(WEBHOOKS, None, CONFIGURATION)
            mutating = cluster.emulator.get_live(MUTATING, None, CONFIGURATION)
            return found if found and found.get("webhooks") and mutating else None

        try:
            webhook_config = await cluster.wait_for(configured, 60, "the webhook configuration")
        except AssertionError as error:
            raise AssertionError(f"{error}\n{cluster.operator_logs()}") from None

        # kopf also creates an empty mutating configuration (the chart's RBAC allows it).
        assert not cluster.emulator.get_live(MUTATING, None, CONFIGURATION).get("webhooks")
        (webhook,) = webhook_config["webhooks"]
        assert webhook["name"] == f"optimizationjobs.{CONFIGURATION}"
        assert webhook["failurePolicy"] == "Ignore"
        (rule,) = webhook["rules"]
        assert rule["apiGroups"] == ["kompaktor.io"] and rule["resources"] == ["optimizationjobs"]
        assert set(rule["operations"]) == {"CREATE", "UPDATE"}
        client = webhook["clientConfig"]
        assert base64.b64decode(client["caBundle"]) == ca.read_bytes()
        assert client["service"] == {**SERVICE, "path": "/optimizationjobs"}

        # The test is the API server: the Service's path, on the operator's own address.
        url = f"https://127.0.0.1:{port}{client['service']['path']}"
        trust = ssl.create_default_context(cafile=str(ca))
        good = optimization_job("good", spec(0.3, 0.5))
        bad = optimization_job("bad", spec(0.3, 1.5))

        async with aiohttp.ClientSession() as session:

            async def post(review: dict[str, Any]) -> dict[str, Any]:
                async with session.post(url, json=review, ssl=trust) as response:
                    assert response.status == 200, await response.text()
                    answer: dict[str, Any] = await response.json()
                assert answer["apiVersion"] == "admission.k8s.io/v1"
                assert answer["response"]["uid"] == review["request"]["uid"]
                result: dict[str, Any] = answer["response"]
                return result

            refused = await post(admission_review("CREATE", bad))
            assert refused["allowed"] is False
            assert refused["status"] == {"message": BAD_PARAMS, "code": 422}

            admitted = await post(admission_review("CREATE", good))
            assert admitted["allowed"] is True and "status" not in admitted

            edit = await post(admission_review("UPDATE", bad, old=good))
            assert (edit["allowed"], edit["status"]["message"]) == (False, BAD_PARAMS)

            # Never blocked: metadata of a job already stored (kopf adding its finalizer),
            # deleting it, and kopf removing its finalizer while it goes.
            marked = optimization_job("bad", bad["spec"])
            marked["metadata"]["finalizers"] = ["kompaktor.io/finalizer"]
            assert (await post(admission_review("UPDATE", marked, old=bad)))["allowed"] is True
            assert (await post(admission_review("DELETE", None, old=bad)))["allowed"] is True
            going = optimization_job("bad", bad["spec"])
            going["metadata"]["deletionTimestamp"] = "2024-01-01T00:00:00Z"
            finalizer = admission_review("UPDATE", going, old=bad)
            assert (await post(finalizer))["allowed"] is True


def legacy_configuration(service: dict[str, Any]) -> dict[str, Any]:
    """What kopf wrote for releases before admission.configurationName: a name, no labels."""
    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingWebhookConfiguration",
        "metadata": {"name": "kompaktor.io"},
        "webhooks": [{
            "name": "optimizationjobs.kompaktor.io",
            "clientConfig": {"service": {**service, "path": "/optimizationjobs"}},
            "rules": [{"apiGroups": ["kompaktor.io"], "apiVersions": ["v1alpha1"],
                       "resources": ["optimizationjobs"], "operations": ["CREATE", "UPDATE"]}],
            "failurePolicy": "Ignore", "sideEffects": "None",
            "admissionReviewVersions": ["v1", "v1beta1"],
        }],
    }  # fmt: skip


@pytest.mark.parametrize("ours", [True, False], ids=["this operator's", "another's"])
async def test_the_configuration_an_earlier_release_left_goes_if_it_calls_this_operator(
    tmp_path: Path, ours: bool
) -> None:
    """An upgrade left `kompaktor.io` behind, calling the webhook a second time for every job.
    One that calls another Service may serve an operator not upgraded yet: it stays, and the
    log says how to delete it."""
    _, cert, key = make_certificates(tmp_path)
    config = operator_config(tmp_path) | {
        "admission": {
            "enabled": True, "address": "127.0.0.1", "port": free_port(),
            "certFile": str(cert), "keyFile": str(key), "service": SERVICE,
        }
    }  # fmt: skip
    async with Cluster(tmp_path, config) as cluster:
        calls = SERVICE if ours else {**SERVICE, "namespace": "team-b"}
        cluster.emulator.create(WEBHOOKS, legacy_configuration(calls))
        cluster.emulator.create(MUTATING, {
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "MutatingWebhookConfiguration", "metadata": {"name": "kompaktor.io"},
        })  # fmt: skip
        operator = await cluster.start_operator()

        def logged(text: str) -> bool:
            return text in operator.log_path.read_text(errors="replace")

        if ours:
            await cluster.wait_for(
                lambda: not cluster.emulator.get_live(WEBHOOKS, None, "kompaktor.io")
                and not cluster.emulator.get_live(MUTATING, None, "kompaktor.io"),
                60, "the old configurations to go",
            )  # fmt: skip
            await cluster.wait_for(lambda: logged("Deleted the webhook configurations"), 10)
        else:
            command = (
                "delete it: kubectl delete "
                "validatingwebhookconfiguration,mutatingwebhookconfiguration kompaktor.io"
            )
            await cluster.wait_for(lambda: logged(command), 60, "the warning")
            assert logged("calls service team-b/kompaktor-webhook, not this operator")
            assert cluster.emulator.get_live(WEBHOOKS, None, "kompaktor.io")
            assert cluster.emulator.get_live(MUTATING, None, "kompaktor.io")
        # its own configuration is kopf's as before
        own = await cluster.wait_for(
            lambda: (cluster.emulator.get_live(WEBHOOKS, None, CONFIGURATION) or {}).get(
                "webhooks"
            ),
            60, "its own",
        )  # fmt: skip
        assert own[0]["name"] == f"optimizationjobs.{CONFIGURATION}"
