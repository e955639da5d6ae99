"""The operator's configuration: node pools, defaults, where artifacts and credentials live.

It comes from one YAML file (the Helm chart mounts its ConfigMap), named by `--config` or
`KOMPAKTOR_CONFIG`. Pools are configuration, not code (DESIGN.md §6): a stage names a pool and
gets that pool's image, node selector, tolerations, resources, price and watts.
"""

from __future__ import annotations

import argparse
import os
import re
import secrets
import ssl
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, ValidationError, model_validator

from kompaktor.api.jobfile import UniqueKeyLoader
from kompaktor.api.spec import ApiModel, OptimizationJobSpec
from kompaktor.errors import JobSpecError, KompaktorError

CONFIG_ENV = "KOMPAKTOR_CONFIG"
PRIORITY_ENV = "KOMPAKTOR_PEERING_PRIORITY"
DEFAULT_IMAGE = "ghcr.io/kompaktor/kompaktor:latest"
#: A DNS subdomain of at least two labels (the webhook's name adds a third), at most 236
#: characters (253 with the `optimizationjobs.` prefix).
WEBHOOK_CONFIGURATION_NAME = re.compile(
    r"(?=.{1,236}$)[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?(\.[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)+"
)


class Toleration(ApiModel):
    key: str | None = None
    operator: str | None = Field(default=None, description="Equal or Exists.")
    value: str | None = None
    effect: str | None = Field(default=None, description="NoSchedule, PreferNoSchedule, NoExecute.")
    toleration_seconds: int | None = None


class Resources(ApiModel):
    requests: dict[str, str] = Field(default_factory=dict, description="e.g. {cpu: '2'}.")
    limits: dict[str, str] = Field(
        default_factory=dict, description="e.g. {memory: 8Gi, nvidia.com/gpu: '1'}."
    )


class Pool(ApiModel):
    """One node pool a stage can run on."""

    name: str = Field(min_length=1, description="What stages write in `pool:`.")
    image: str | None = Field(default=None, description="Stage image; unset: the default image.")
    node_selector: dict[str, str] = Field(
        default_factory=dict, description="e.g. {kubernetes.io/arch: arm64}."
    )
    tolerations: list[Toleration] = Field(default_factory=list)
    resources: Resources = Field(default_factory=Resources)
    price_per_hour_usd: float = Field(
        default=0.0, ge=0, alias="pricePerHourUSD", description="What one pod-hour costs."
    )
    watts: float = Field(
        default=0.0, ge=0, description="Power draw used for energy estimates when unmeasured."
    )


class PeeringConfig(ApiModel):
    """kopf peering: with several replicas, only the highest-priority one acts."""

    enabled: bool = Field(default=True, description="Run with a peering object (HA).")
    name: str = Field(default="kompaktor", description="The KopfPeering object's name.")
    mandatory: bool = Field(
        default=False, description="Fail to start if the peering CRD is missing."
    )
    lifetime_seconds: int = Field(
        default=60,
        ge=2,
        description="A replica that has not renewed its peering record for this long is "
        "taken for dead and a standby takes over.",
    )
    priority: int = Field(
        default=0,
        description=f"This replica's priority; ${PRIORITY_ENV} overrides it per replica "
        "(`auto`: random), since peers of equal priority all freeze.",
    )

    def replica_priority(self) -> int:
        """Replicas share one ConfigMap but need distinct priorities: the env var wins."""
        override = os.environ.get(PRIORITY_ENV, "").strip()
        if not override:
            return self.priority
        if override == "auto":
            return secrets.randbelow(1_000_000) + 1
        try:
            return int(override)
        except ValueError:
            raise KompaktorError(
                f"${PRIORITY_ENV}: expected an integer or 'auto' (got {override!r})"
            ) from None


class AdmissionService(ApiModel):
    """The Service in front of the webhook server: what the API server calls."""

    name: str = Field(min_length=1, description="The Service's name.")
    namespace: str = Field(min_length=1, description="The Service's namespace.")
    port: int = Field(default=443, ge=1, le=65535, description="The Service's port.")


class AdmissionConfig(ApiModel):
    """The validating admission webhook: `kubectl apply` refuses a job that reconcile would
    fail as InvalidSpec. kopf serves it and keeps the ValidatingWebhookConfiguration."""

    enabled: bool = Field(default=False, description="Serve the validating webhook.")
    address: str = Field(default="0.0.0.0", description="Address the HTTPS server listens on.")
    port: int = Field(default=9443, ge=1, le=65535, description="Port it listens on.")
    cert_file: str | None = Field(default=None, description="Server certificate (PEM).")
    key_file: str | None = Field(default=None, description="Its private key (PEM).")
    ca_file: str | None = Field(
        default=None,
        description="CA bundle the API server verifies the certificate with; unset: the "
        "certificate itself (self-signed).",
    )
    service: AdmissionService | None = Field(
        default=None,
        description="The Service the webhook configuration names; unset: the server's own "
        "https://address:port URL (for development).",
    )
    configuration_name: str | None = Field(
        default=None,
        description="The ValidatingWebhookConfiguration kopf keeps (its webhook is "
        "`optimizationjobs.<name>`): one per operator, so that two installs in a cluster do not "
        "overwrite each other's. Unset: `<peering.name>.kompaktor.io`.",
    )

    @model_validator(mode="after")
    def _configuration_name_valid(self) -> AdmissionConfig:
        name = self.configuration_name
        if name is not None and not WEBHOOK_CONFIGURATION_NAME.fullmatch(name):
            raise ValueError(
                f"admission.configurationName: {name!r} is not a lowercase DNS name of two or "
                "more dot-separated parts (e.g. kompaktor-ml.kompaktor.io), as the API server "
                "wants for the webhook's name, optimizationjobs.<configurationName>"
            )
        return self

    @model_validator(mode="after")
    def _certificate_named(self) -> AdmissionConfig:
        if self.enabled:
            for field, path in (("certFile", self.cert_file), ("keyFile", self.key_file)):
                if not path:
                    raise ValueError(f"admission.{field}: required when admission is enabled")
        return self

    def check_files(self) -> None:
        """The certificate files exist and load as a pair; KompaktorError naming the field.
        (At start-up, not in the model: the files exist only where the operator runs.)"""
        named = (("certFile", self.cert_file), ("keyFile", self.key_file), ("caFile", self.ca_file))
        for field, path in named:
            if path is not None and not Path(path).is_file():
                raise KompaktorError(f"admission.{field}: {path}: no such file")
        if self.cert_file and self.key_file:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            try:
                context.load_cert_chain(self.cert_file, self.key_file)
            except (OSError, ssl.SSLError) as error:
                raise KompaktorError(
                    f"admission.certFile/keyFile: {self.cert_file} and {self.key_file} do not "
                    f"load as a certificate and its key: {error}"
                ) from None
        if self.ca_file:
            try:
                ssl.create_default_context(cafile=self.ca_file)
            except (OSError, ssl.SSLError) as error:
                raise KompaktorError(
                    f"admission.caFile: {self.ca_file}: not a PEM CA bundle: {error}"
                ) from None


class OperatorConfig(ApiModel):
    pools: list[Pool] = Field(
        default_factory=lambda: [Pool(name="cpu")], description="Node pools stages can use."
    )
    default_pool: str | None = Field(
        default=None, description="Pool for stages that name none; unset: the first pool."
    )
    image: str = Field(default=DEFAULT_IMAGE, description="Stage image for pools that set none.")
    image_pull_policy: str = Field(default="IfNotPresent")
    artifacts_uri: str | None = Field(
        default=None,
        description="Default artifact root; a job's artifacts go to <root>/<namespace>/<name>.",
    )
    namespaces: list[str] = Field(
        default_factory=list, description="Namespaces to watch; empty: the whole cluster."
    )
    s3_credentials_secret: str | None = Field(
        default=None,
        description="Secret (in the job's namespace) with AWS_ACCESS_KEY_ID and "
        "AWS_SECRET_ACCESS_KEY, passed to stage pods with envFrom.",
    )
    s3_endpoint_url: str | None = Field(
        default=None, description="S3 endpoint for non-AWS stores (MinIO, Ceph...)."
    )
    service_account_name: str | None = Field(
        default=None, description="Service account of stage pods (their token is not mounted)."
    )
    ttl_seconds_after_finished: int | None = Field(
        default=None, description="Let Kubernetes remove finished stage Jobs after this long."
    )
    pod_start_timeout_seconds: float = Field(
        default=600.0,
        gt=0,
        description="A stage pod that cannot start this long (image pull, missing Secret, no "
        "node fits) fails its run with the reason; an invalid image fails it at once.",
    )
    retry_base_seconds: float = Field(
        default=10.0, gt=0, description="Backoff before retry n is this times 2**(n-1)."
    )
    peering: PeeringConfig = Field(default_factory=PeeringConfig)
    admission: AdmissionConfig = Field(default_factory=AdmissionConfig)

    @model_validator(mode="after")
    def _pools_consistent(self) -> OperatorConfig:
        names = [p.name for p in self.pools]
        if not names:
            raise ValueError("pools: at least one pool is required")
        if len(set(names)) != len(names):
            raise ValueError(f"pools: duplicate pool names in {names}")
        if self.default_pool is not None and self.default_pool not in names:
            raise ValueError(f"defaultPool {self.default_pool!r} is not one of the pools {names}")
        return self

    @property
    def default_pool_name(self) -> str:
        return self.default_pool or self.pools[0].name

    def pool(self, name: str | None) -> Pool:
        wanted = name or self.default_pool_name
        for pool in self.pools:
            if pool.name == wanted:
                return pool
        raise KeyError(wanted)

    @property
    def prices(self) -> dict[str, float]:
        return {p.name: p.price_per_hour_usd for p in self.pools}

    def artifacts_for(self, spec: OptimizationJobSpec, namespace: str, name: str) -> str:
        """The job's artifact root: its own, or <default root>/<namespace>/<name>."""
        if spec.artifacts.uri:
            return spec.artifacts.uri
        if not self.artifacts_uri:
            raise JobSpecError(
                "spec.artifacts.uri: required, because the operator has no default artifacts URI"
            )
        return f"{self.artifacts_uri.rstrip('/')}/{namespace}/{name}"


def check_pools(spec: OptimizationJobSpec, config: OperatorConfig) -> None:
    """Every pool a stage names must be configured (shared by admission and reconcile)."""
    known = [p.name for p in config.pools]
    for index, stage in enumerate(spec.stages):
        for name in stage.pool_names:
            if name not in known:
                field = "pool" if stage.pool else "pools"
                raise JobSpecError(
                    f"{stage.where(index)}: {field}: unknown pool {name!r}; "
                    f"known pools: {', '.join(known)}"
                )


def parse_config(data: dict[str, Any] | None) -> OperatorConfig:
    try:
        return OperatorConfig.model_validate(data or {})
    except ValidationError as error:
        raise KompaktorError(f"operator configuration is invalid: {error}") from None


def load_config(path: str | Path | None = None) -> OperatorConfig:
    """From `path`, else $KOMPAKTOR_CONFIG, else the defaults (one `cpu` pool)."""
    source = path or os.environ.get(CONFIG_ENV)
    if not source:
        return OperatorConfig()
    try:
        text = Path(source).read_text()
    except OSError as error:
        raise KompaktorError(f"cannot read operator configuration {source}: {error}") from None
    try:
        data = yaml.load(text, Loader=UniqueKeyLoader)
    except yaml.YAMLError as error:
        raise KompaktorError(f"operator configuration {source}: {error}") from None
    if data is not None and not isinstance(data, dict):
        raise KompaktorError(f"operator configuration {source}: expected a mapping")
    return parse_config(data)


def add_operator_arguments(parser: argparse.ArgumentParser) -> None:
    """`kompaktor operator`'s flags (the Helm chart's Deployment passes them; `run_operator`
    reads them). Here, not beside the operator, so `kompaktor --help` imports no kopf."""
    parser.add_argument("--config", help=f"operator configuration YAML (default: ${CONFIG_ENV})")
    parser.add_argument(
        "--namespace", "-n", action="append", default=[],
        help="watch this namespace (repeatable); default: the configured ones or all",
    )  # fmt: skip
    parser.add_argument("--standalone", action="store_true", help="no peering (one replica)")
    parser.add_argument("--liveness", help="liveness endpoint, e.g. http://0.0.0.0:8080/healthz")
    parser.add_argument(
        "--metrics-port", type=int, help="serve Prometheus metrics on this port (/metrics)"
    )
    parser.add_argument("--verbose", "-v", action="store_true", help="log kopf's debug messages")
