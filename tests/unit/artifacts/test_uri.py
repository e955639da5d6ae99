"""URI helpers: which store a URI opens, and single-URI fetch/publish on local files."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from kompaktor.artifacts import (
    ArtifactError,
    FileStore,
    S3Store,
    digest_file,
    fetch,
    local_path,
    open_store,
    publish,
    split_uri,
)


def test_plain_path_is_made_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    store = open_store("runs/job")
    assert isinstance(store, FileStore)
    assert store.root == (tmp_path / "runs" / "job").as_uri()


def test_file_uri_round_trips_through_root(tmp_path: Path) -> None:
    odd = tmp_path / "with space%"
    store = open_store(odd.as_uri())
    assert isinstance(store, FileStore)
    assert store.directory == odd
    again = open_store(store.root)
    assert isinstance(again, FileStore)
    assert again.directory == odd


@pytest.mark.parametrize("uri", ["file://host/x", "file:relative", "gs://b/x", ""])
def test_unsupported_uris_are_refused(uri: str) -> None:
    with pytest.raises(ArtifactError):
        open_store(uri)


def test_s3_uri_parsing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "x")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    store = open_store("s3://bucket/a/b/", endpoint_url="http://127.0.0.1:9")
    assert isinstance(store, S3Store)
    assert (store.bucket, store.prefix, store.root) == ("bucket", "a/b", "s3://bucket/a/b")
    assert store.uri("m.pt") == "s3://bucket/a/b/m.pt"
    assert open_store("s3://bucket").root == "s3://bucket"
    parent, name = split_uri("s3://bucket/a/m.pt", endpoint_url="http://127.0.0.1:9")
    assert (parent.root, name) == ("s3://bucket/a", "m.pt")
    for bad in ("s3://b", "s3://bucket/../x", "s3://"):
        with pytest.raises(ArtifactError, match="invalid S3 URI"):
            open_store(bad)
    with pytest.raises(ArtifactError, match="names a bucket"):
        split_uri("s3://bucket/")


def test_local_path() -> None:
    assert local_path("file:///tmp/a%20b") == Path("/tmp/a b")
    assert local_path("s3://bucket/x") is None


def test_fetch_local_returns_the_file_itself(tmp_path: Path) -> None:
    f = tmp_path / "m.onnx"
    f.write_bytes(b"x")
    assert fetch(str(f), tmp_path / "cache") == f
    assert fetch(f.as_uri(), tmp_path / "cache") == f
    assert not (tmp_path / "cache").exists()
    with pytest.raises(ArtifactError, match=r"no artifact at .*/absent"):
        fetch(str(tmp_path / "absent"), tmp_path / "cache")


def test_publish_to_exact_file_uri(tmp_path: Path) -> None:
    src = tmp_path / "m.pt2"
    src.write_bytes(b"weights")
    target = (tmp_path / "out" / "stage" / "model.pt2").as_uri()

    ref = publish(src, target)

    assert ref.uri == target
    assert ref.digest == "sha256:" + hashlib.sha256(b"weights").hexdigest()
    assert (tmp_path / "out" / "stage" / "model.pt2").read_bytes() == b"weights"
    store, name = split_uri(target)
    assert store.digest(name) == ref.digest == digest_file(src)
    with pytest.raises(ArtifactError, match="refusing to overwrite"):
        publish(src, target, overwrite=False)
