"""How the S3 client is built: endpoint, retries, timeouts and multipart sizes.

Everything has an environment override so a pod spec (or a test) can tune it without code:
KOMPAKTOR_S3_ENDPOINT_URL (else AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL), KOMPAKTOR_S3_MAX_ATTEMPTS,
KOMPAKTOR_S3_TIMEOUT (seconds, connect and read), KOMPAKTOR_S3_MULTIPART_THRESHOLD (bytes),
KOMPAKTOR_S3_MAX_CONCURRENCY. Credentials and region follow the standard AWS chain.

Clients are built once and shared (`make_client`): a new one is built when these settings, an
AWS_* or proxy variable, or the AWS credentials or config file change.

Retries use botocore's standard mode: exponential backoff with full jitter, 50 ms doubling per
attempt (capped at 20 s) for connection errors and 5xx, 1 s doubling for throttling. Its default
of 5 attempts gives up after about 0.4 s of backoff, so a load balancer restart or a few seconds
of network trouble failed uploads that one more second would have saved. DEFAULT_MAX_ATTEMPTS
(11) waits about 23 s in all (95% of the time over 10 s, at most 46 s) before an unreachable
endpoint is an error.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Hashable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import boto3
from botocore.config import Config
from botocore.exceptions import PartialCredentialsError, ProfileNotFound
from botocore.utils import is_valid_endpoint_url, is_valid_ipv6_endpoint_url

from kompaktor.artifacts.base import ArtifactError
from kompaktor.artifacts.s3_errors import (
    AWS_FILES,
    S3ConfigError,
    partial_credentials_error,
    profile_error,
)

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

MIB = 1024 * 1024
MIN_PART_SIZE = 5 * MIB  # S3 rejects smaller parts (except the last one)
MAX_PARTS = 10_000
#: Attempts per S3 call, the first included: ~23 s of backoff (see above) rides out a short
#: outage; each attempt against a black-holed endpoint also waits its connect timeout.
DEFAULT_MAX_ATTEMPTS = 11
#: Where an endpoint comes from, in the order `from_env` looks; the explicit one is the
#: operator's configuration (`s3EndpointUrl`, also the Helm value `config.s3EndpointUrl`).
ENDPOINT_ENV = ("KOMPAKTOR_S3_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")
EXPLICIT_SOURCE = "s3EndpointUrl (operator config)"
ENDPOINT_EXAMPLE = (
    "http(s)://host[:port], e.g. http://minio.example:9000 or https://s3.eu-west-1.amazonaws.com"
)


class S3EndpointError(S3ConfigError):
    """The configured S3 endpoint is not a usable URL: a configuration error no retry mends."""


def _env_number(name: str, default: float, *, minimum: float) -> float:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ArtifactError(f"{name}={raw!r} is not a number") from None
    if value < minimum:
        raise ArtifactError(f"{name}={raw!r} must be at least {minimum:g}")
    return value


@dataclass(frozen=True)
class S3Settings:
    """Client tuning; defaults ride out a short outage (about 23 s of retries) and keep a dead
    endpoint from hanging a stage for minutes."""

    endpoint_url: str | None = None
    #: The setting `endpoint_url` came from, named in errors about it.
    endpoint_source: str = "endpoint_url"
    #: In total, the first try included (botocore: total_max_attempts).
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    connect_timeout: float = 5.0
    read_timeout: float = 30.0
    multipart_threshold: int = 8 * MIB
    max_concurrency: int = 4

    def __post_init__(self) -> None:
        """Refuse a malformed endpoint here, naming its setting: botocore raises a bare
        ValueError (or a vague error at the first call) that does not say where it came from."""
        if self.endpoint_url is not None:
            check_endpoint(self.endpoint_url, self.endpoint_source)

    @property
    def endpoint_label(self) -> str | None:
        """The endpoint and the setting it came from, for messages."""
        if self.endpoint_url is None:
            return None
        return f"{self.endpoint_url} (from {self.endpoint_source})"

    @classmethod
    def from_env(cls, endpoint_url: str | None = None) -> S3Settings:
        """Settings from the environment; an explicit `endpoint_url` wins over it."""
        endpoint, source = _endpoint_setting(endpoint_url)
        d = cls()
        t = _env_number("KOMPAKTOR_S3_TIMEOUT", 0, minimum=0.1) or None
        return replace(
            d,
            endpoint_url=endpoint,
            endpoint_source=source,
            max_attempts=int(_env_number("KOMPAKTOR_S3_MAX_ATTEMPTS", d.max_attempts, minimum=1)),
            connect_timeout=t or d.connect_timeout,
            read_timeout=t or d.read_timeout,
            multipart_threshold=int(
                _env_number(
                    "KOMPAKTOR_S3_MULTIPART_THRESHOLD", d.multipart_threshold, minimum=MIN_PART_SIZE
                )
            ),
            max_concurrency=int(
                _env_number("KOMPAKTOR_S3_MAX_CONCURRENCY", d.max_concurrency, minimum=1)
            ),
        )

    def part_size(self, total: int) -> int:
        """Part size for a `total`-byte upload: the threshold, grown to stay within 10k parts."""
        size = max(self.multipart_threshold, MIN_PART_SIZE)
        return max(size, -(-total // MAX_PARTS))


def _endpoint_setting(explicit: str | None) -> tuple[str | None, str]:
    """The endpoint to use and the name of the setting that gave it."""
    if explicit:
        return explicit, EXPLICIT_SOURCE
    for name in ENDPOINT_ENV:
        if value := os.environ.get(name):
            return value, name
    return None, ENDPOINT_ENV[0]


def check_endpoint(url: str, source: str) -> None:
    """Raise `S3EndpointError` naming `source` unless `url` is an http(s) URL with a host."""
    problem = _endpoint_problem(url)
    if problem is not None:
        raise S3EndpointError(
            f"{source}={url!r} is not a valid S3 endpoint: {problem}; want {ENDPOINT_EXAMPLE}"
        )


def _endpoint_problem(url: str) -> str | None:
    """What is wrong with `url` as an endpoint, or None."""
    if url != url.strip():
        return "it has spaces or a line break around it"
    try:
        parts = urlsplit(url)
    except ValueError as error:  # an unclosed IPv6 bracket
        return str(error)
    if "://" not in url:
        return "it has no scheme"
    if parts.scheme not in ("http", "https"):
        return f"scheme {parts.scheme!r} is not http or https"
    if not parts.hostname:
        return "it has no host"
    try:
        port = parts.port
    except ValueError:
        port = 0
    if port == 0:
        return f"port {url.rsplit(':', 1)[-1].split('/', 1)[0]!r} is not a number from 1 to 65535"
    if not (is_valid_endpoint_url(url) or is_valid_ipv6_endpoint_url(url)):
        return f"{parts.hostname!r} is not a valid host name"
    return None


#: Clients kept: enough for every endpoint a process talks to; the oldest goes first.
CLIENT_CACHE_SIZE = 16
_CLIENTS: dict[tuple[Hashable, ...], S3Client] = {}
_CLIENTS_LOCK = threading.Lock()
#: Environment variables botocore reads when it builds a client, besides AWS_*: proxies.
_PROXY_ENV = ("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "no_proxy")


def make_client(settings: S3Settings) -> S3Client:
    """A boto3 S3 client honouring `settings` and the standard credential chain, shared by
    every caller with the same client settings and AWS environment (`_client_key`).

    Building one reads about 1.5 MB of botocore's data files, once per store otherwise: in the
    operator's reconcile loop and in each stage. boto3 clients are thread-safe (sessions are
    not: each client gets its own, used only here, under the lock).
    """
    key = _client_key(settings)
    with _CLIENTS_LOCK:
        client = _CLIENTS.pop(key, None)
        if client is None:
            client = _new_client(settings)
        _CLIENTS[key] = client  # the most recently used last
        while len(_CLIENTS) > CLIENT_CACHE_SIZE:
            del _CLIENTS[next(iter(_CLIENTS))]
    return client


def _client_key(settings: S3Settings) -> tuple[Hashable, ...]:
    """What a client depends on: our settings that reach it, the AWS environment (region,
    credentials, profile, endpoint and checksum options, the credential and config files'
    versions) and the process (a forked child must not share its parent's connections)."""
    return (
        settings.endpoint_url,
        settings.max_attempts,
        settings.connect_timeout,
        settings.read_timeout,
        settings.max_concurrency,
        _aws_environment(),
        os.getpid(),
    )


def _aws_environment() -> str:
    """A digest of the AWS_* and proxy variables and of the credential and config files' stat:
    secrets stay out of the key, and a rotated key file or a test's new env var shows."""
    names = sorted(n for n in os.environ if n.startswith("AWS_") or n in _PROXY_ENV)
    parts = [f"{name}={os.environ[name]}" for name in names]
    for variable, default in AWS_FILES:
        parts.append(f"{variable}:{_file_version(os.environ.get(variable) or default)}")
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()


def _file_version(name: str) -> tuple[int, int, int] | None:
    """The file's inode, size and modification time; None when it cannot be read."""
    try:
        stat = Path(name).expanduser().stat()
    except (OSError, RuntimeError):  # RuntimeError: no home directory for "~"
        return None
    return stat.st_ino, stat.st_size, stat.st_mtime_ns


def _new_client(settings: S3Settings) -> S3Client:
    """Path-style addressing with a custom endpoint, because MinIO / Ceph / moto rarely have
    wildcard DNS for virtual-hosted buckets. Checksums are only sent where S3 requires them:
    several S3-compatible servers reject botocore's newer default CRC headers, and we verify
    content end to end with our own sha256 (and Content-MD5 on every PUT) anyway."""
    config = Config(
        retries={"mode": "standard", "total_max_attempts": settings.max_attempts},
        connect_timeout=settings.connect_timeout,
        read_timeout=settings.read_timeout,
        s3={"addressing_style": "path"} if settings.endpoint_url else None,
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
        max_pool_connections=max(10, settings.max_concurrency * 2),
    )
    try:
        session = boto3.session.Session()
        return session.client("s3", endpoint_url=settings.endpoint_url, config=config)
    except ProfileNotFound as error:  # AWS_PROFILE naming a profile no file defines
        raise profile_error(error) from None
    except PartialCredentialsError as error:  # a key id without its secret, or the reverse
        raise partial_credentials_error(error) from None
