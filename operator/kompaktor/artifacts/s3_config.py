"""How the S3 client is built: endpoint, retries, timeouts and multipart sizes.

Everything has an environment override so a pod spec (or a test) can tune it without code:
KOMPAKTOR_S3_ENDPOINT_URL (else AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL), KOMPAKTOR_S3_MAX_ATTEMPTS,
KOMPAKTOR_S3_TIMEOUT (seconds, connect and read), KOMPAKTOR_S3_MULTIPART_THRESHOLD (bytes),
KOMPAKTOR_S3_MAX_CONCURRENCY. Credentials and region follow the standard AWS chain.

Retries use botocore's standard mode: exponential backoff with full jitter, 50 ms doubling per
attempt (capped at 20 s) for connection errors and 5xx, 1 s doubling for throttling. Its default
of 5 attempts gives up after about 0.4 s of backoff, so a load balancer restart or a few seconds
of network trouble failed uploads that one more second would have saved. DEFAULT_MAX_ATTEMPTS
(11) waits about 23 s in all (95% of the time over 10 s, at most 46 s) before an unreachable
endpoint is an error.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import boto3
from botocore.config import Config

from kompaktor.artifacts.base import ArtifactError

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

MIB = 1024 * 1024
MIN_PART_SIZE = 5 * MIB  # S3 rejects smaller parts (except the last one)
MAX_PARTS = 10_000
#: Attempts per S3 call, the first included: ~23 s of backoff (see above) rides out a short
#: outage; each attempt against a black-holed endpoint also waits its connect timeout.
DEFAULT_MAX_ATTEMPTS = 11


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
    #: In total, the first try included (botocore: total_max_attempts).
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    connect_timeout: float = 5.0
    read_timeout: float = 30.0
    multipart_threshold: int = 8 * MIB
    max_concurrency: int = 4

    @classmethod
    def from_env(cls, endpoint_url: str | None = None) -> S3Settings:
        """Settings from the environment; an explicit `endpoint_url` wins over it."""
        endpoint = (
            endpoint_url
            or os.environ.get("KOMPAKTOR_S3_ENDPOINT_URL")
            or os.environ.get("AWS_ENDPOINT_URL_S3")
            or os.environ.get("AWS_ENDPOINT_URL")
            or None
        )
        d = cls()
        t = _env_number("KOMPAKTOR_S3_TIMEOUT", 0, minimum=0.1) or None
        return replace(
            d,
            endpoint_url=endpoint,
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


def make_client(settings: S3Settings) -> S3Client:
    """A boto3 S3 client honouring `settings` and the standard credential chain.

    Path-style addressing with a custom endpoint, because MinIO / Ceph / moto rarely have
    wildcard DNS for virtual-hosted buckets. Checksums are only sent where S3 requires them:
    several S3-compatible servers reject botocore's newer default CRC headers, and we verify
    content end to end with our own sha256 (and Content-MD5 on every PUT) anyway.
    """
    config = Config(
        retries={"mode": "standard", "total_max_attempts": settings.max_attempts},
        connect_timeout=settings.connect_timeout,
        read_timeout=settings.read_timeout,
        s3={"addressing_style": "path"} if settings.endpoint_url else None,
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
        max_pool_connections=max(10, settings.max_concurrency * 2),
    )
    session = boto3.session.Session()
    return session.client("s3", endpoint_url=settings.endpoint_url, config=config)
