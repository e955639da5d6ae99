"""A malformed S3 endpoint is refused up front, naming the setting it came from."""

from __future__ import annotations

import pytest

from kompaktor.artifacts import ArtifactError, S3Settings, open_store
from kompaktor.artifacts.s3_config import ENDPOINT_ENV, S3EndpointError

WANT = "want http(s)://host[:port]"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ENDPOINT_ENV:
        monkeypatch.delenv(name, raising=False)


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("127.0.0.1:9000", "it has no scheme"),  # botocore: bare ValueError, a traceback
        ("htp://127.0.0.1:9000", "scheme 'htp' is not http or https"),
        ("http://127.0.0.1:99999", "port '99999' is not a number from 1 to 65535"),
        ("http://minio:port", "port 'port' is not a number from 1 to 65535"),
        ("http://[::1", "Invalid IPv6 URL"),
        ("http:///bucket", "it has no host"),
        ("http://min_io:9000", "'min_io' is not a valid host name"),
        ("http://minio:9000\n", "it has spaces or a line break around it"),  # a Secret's newline
    ],
)
@pytest.mark.parametrize("source", ENDPOINT_ENV)
def test_a_malformed_endpoint_in_the_environment_names_the_variable(
    monkeypatch: pytest.MonkeyPatch, source: str, value: str, problem: str
) -> None:
    monkeypatch.setenv(source, value)
    with pytest.raises(S3EndpointError) as caught:
        open_store("s3://bucket/prefix")
    message = str(caught.value)
    assert message.startswith(f"{source}={value!r} is not a valid S3 endpoint: {problem}; ")
    assert WANT in message


def test_a_malformed_endpoint_from_the_operator_config_names_that_setting() -> None:
    with pytest.raises(ArtifactError, match=r"^s3EndpointUrl \(operator config\)='minio:9000' "):
        open_store("s3://bucket/prefix", endpoint_url="minio:9000")


def test_settings_built_in_code_are_checked_too() -> None:
    with pytest.raises(S3EndpointError, match=r"^endpoint_url='ftp://minio' .*scheme 'ftp'"):
        S3Settings(endpoint_url="ftp://minio")


@pytest.mark.parametrize(
    "value",
    [
        "http://127.0.0.1:9000",
        "https://s3.eu-west-1.amazonaws.com",
        "http://[::1]:9000",
        "http://minio.storage.svc:9000/",
        "http://minio",
    ],
)
def test_valid_endpoints_pass(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("KOMPAKTOR_S3_ENDPOINT_URL", value)
    settings = S3Settings.from_env()
    assert settings.endpoint_url == value
    assert settings.endpoint_label == f"{value} (from KOMPAKTOR_S3_ENDPOINT_URL)"
