"""S3 client settings from the environment, and translation of botocore errors."""

from __future__ import annotations

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError

from kompaktor.artifacts import ArtifactError, S3Settings
from kompaktor.artifacts.s3_config import MIB, make_client
from kompaktor.artifacts.s3_errors import translate

_ENV = (
    "KOMPAKTOR_S3_ENDPOINT_URL",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "KOMPAKTOR_S3_MAX_ATTEMPTS",
    "KOMPAKTOR_S3_TIMEOUT",
    "KOMPAKTOR_S3_MULTIPART_THRESHOLD",
    "KOMPAKTOR_S3_MAX_CONCURRENCY",
)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in _ENV:
        monkeypatch.delenv(name, raising=False)


def test_defaults() -> None:
    s = S3Settings.from_env()
    assert s.endpoint_url is None
    assert s.max_attempts == 11  # ~23 s of backoff: rides out a short outage
    assert s.multipart_threshold == 8 * MIB


def test_endpoint_precedence(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://aws-env")
    assert S3Settings.from_env().endpoint_url == "http://aws-env"
    monkeypatch.setenv("KOMPAKTOR_S3_ENDPOINT_URL", "http://ours")
    assert S3Settings.from_env().endpoint_url == "http://ours"
    assert S3Settings.from_env("http://arg").endpoint_url == "http://arg"


def test_env_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KOMPAKTOR_S3_MAX_ATTEMPTS", "2")
    monkeypatch.setenv("KOMPAKTOR_S3_TIMEOUT", "1.5")
    monkeypatch.setenv("KOMPAKTOR_S3_MULTIPART_THRESHOLD", str(6 * MIB))
    s = S3Settings.from_env()
    assert (s.max_attempts, s.connect_timeout, s.read_timeout) == (2, 1.5, 1.5)
    assert s.multipart_threshold == 6 * MIB


@pytest.mark.parametrize(
    ("name", "value"),
    [("KOMPAKTOR_S3_MAX_ATTEMPTS", "lots"), ("KOMPAKTOR_S3_MULTIPART_THRESHOLD", "1024")],
)
def test_bad_env_values_are_named(monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ArtifactError, match=name):
        S3Settings.from_env()


def test_part_size_stays_within_ten_thousand_parts() -> None:
    s = S3Settings(multipart_threshold=5 * MIB)
    assert s.part_size(100 * MIB) == 5 * MIB
    assert s.part_size(100_000 * MIB) == 10 * MIB


def test_client_uses_path_style_and_retries_with_endpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    client = make_client(S3Settings(endpoint_url="http://127.0.0.1:9", max_attempts=3))
    assert client.meta.endpoint_url == "http://127.0.0.1:9"
    assert client.meta.config.s3 == {"addressing_style": "path"}
    assert client.meta.config.retries == {"mode": "standard", "total_max_attempts": 3}


def _client_error(code: str) -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": "m"}}, "GetObject")


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (_client_error("NoSuchBucket"), "cannot download s3://bkt/k: bucket 'bkt' does not exist"),
        (_client_error("NoSuchKey"), "cannot download s3://bkt/k: no such artifact"),
        (_client_error("AccessDenied"), "cannot download s3://bkt/k: access denied (AccessDenied)"),
        (_client_error("InvalidAccessKeyId"), "access denied (InvalidAccessKeyId)"),
        (_client_error("PreconditionFailed"), "refusing to overwrite existing artifact s3://bkt/k"),
        (_client_error("SlowDown"), "cannot download s3://bkt/k: SlowDown: m"),
        (NoCredentialsError(), "cannot download s3://bkt/k: no S3 credentials"),
        (
            EndpointConnectionError(endpoint_url="http://x"),
            "cannot download s3://bkt/k: S3 endpoint http://x unreachable",
        ),
    ],
)
def test_error_translation(exc: Exception, expected: str) -> None:
    err = translate(exc, action="download", uri="s3://bkt/k", endpoint="http://x")
    assert isinstance(err, ArtifactError)
    assert expected in str(err)
    assert "Traceback" not in str(err)
