"""S3 clients are built once per client settings and AWS environment, not once per store."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from kompaktor.artifacts import S3Settings
from kompaktor.artifacts.s3 import S3Store
from kompaktor.artifacts.s3_config import make_client
from kompaktor.artifacts.uri import open_store, split_uri


@pytest.fixture(autouse=True)
def aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Fake credentials and a credentials file of the test's own; nothing else from the host."""
    for name in list(os.environ):
        if name.startswith(("AWS_", "KOMPAKTOR_S3_")):
            monkeypatch.delenv(name)
    credentials = tmp_path / "credentials"
    credentials.write_text("[default]\n[other]\naws_access_key_id = o\naws_secret_access_key = s\n")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(credentials))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "absent"))
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "first")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("KOMPAKTOR_S3_ENDPOINT_URL", "http://127.0.0.1:9")
    return credentials


def _client_of(store: object) -> object:
    assert isinstance(store, S3Store)
    return store.client


def test_stores_on_the_same_settings_share_one_client() -> None:
    first = _client_of(open_store("s3://bucket/runs"))
    assert _client_of(open_store("s3://other-bucket")) is first
    assert _client_of(split_uri("s3://bucket/runs/model.pt2")[0]) is first


def test_a_changed_endpoint_variable_gets_a_client_for_the_new_endpoint(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    first = _client_of(open_store("s3://bucket"))
    monkeypatch.setenv("KOMPAKTOR_S3_ENDPOINT_URL", "http://127.0.0.1:10")
    second = _client_of(open_store("s3://bucket"))
    assert second is not first
    assert second.meta.endpoint_url == "http://127.0.0.1:10"  # type: ignore[attr-defined]
    monkeypatch.setenv("KOMPAKTOR_S3_ENDPOINT_URL", "http://127.0.0.1:9")
    assert _client_of(open_store("s3://bucket")) is first


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("AWS_ACCESS_KEY_ID", "second"),  # credentials
        ("AWS_PROFILE", "other"),  # where credentials come from
        ("AWS_DEFAULT_REGION", "eu-west-1"),  # region
        ("KOMPAKTOR_S3_MAX_ATTEMPTS", "2"),  # retries
        ("KOMPAKTOR_S3_TIMEOUT", "1"),  # timeouts
        ("HTTPS_PROXY", "http://127.0.0.1:3128"),  # botocore fixes proxies at client creation
    ],
)
def test_a_changed_setting_gets_a_new_client(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    first = _client_of(open_store("s3://bucket"))
    monkeypatch.setenv(name, value)
    assert _client_of(open_store("s3://bucket")) is not first


def test_a_rewritten_credentials_file_gets_a_new_client(aws_env: Path) -> None:
    """A Kubernetes secret mounted as the credentials file is rewritten when it rotates."""
    first = _client_of(open_store("s3://bucket"))
    aws_env.write_text("[default]\naws_access_key_id = rotated\n")
    assert _client_of(open_store("s3://bucket")) is not first


def test_threads_building_the_same_client_at_once_get_one() -> None:
    settings = S3Settings(endpoint_url="http://127.0.0.1:11")
    with ThreadPoolExecutor(max_workers=8) as pool:
        clients = list(pool.map(lambda _: make_client(settings), range(16)))
    assert all(client is clients[0] for client in clients)
