"""S3Store against a real S3-protocol server (moto over HTTP), including outages mid-upload."""

from __future__ import annotations

import hashlib
import os
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from kompaktor.artifacts import (
    ArtifactError,
    S3Settings,
    S3Store,
    digest_file,
    fetch,
    open_store,
    publish,
)
from kompaktor.artifacts.s3 import parse_s3_uri

if TYPE_CHECKING:
    from tests.support.s3 import FlakyProxy, S3Server

MIB = 1024 * 1024


def fast_settings(endpoint: str, **kw: Any) -> S3Settings:
    """Small part size and quick give-up, so outage tests finish in seconds."""
    base: dict[str, Any] = dict(
        endpoint_url=endpoint,
        max_attempts=2,
        connect_timeout=1.0,
        read_timeout=3.0,
        multipart_threshold=5 * MIB,
        max_concurrency=2,
    )
    base.update(kw)
    return S3Settings(**base)


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def write_random(path: Path, size: int) -> bytes:
    data = os.urandom(size)
    path.write_bytes(data)
    return data


def pending_uploads(server: S3Server, bucket_uri: str) -> list[Any]:
    bucket, _ = parse_s3_uri(bucket_uri)
    return list(server.client().list_multipart_uploads(Bucket=bucket).get("Uploads", []))


@pytest.fixture
def store(s3_server: S3Server, s3_bucket: str) -> S3Store:
    return S3Store(s3_bucket, settings=fast_settings(s3_server.endpoint_url))


# -- round trips ------------------------------------------------------------------------------


def test_bytes_round_trip_records_sha256_metadata(store: S3Store, s3_server: S3Server) -> None:
    ref = store.put_bytes("a/result.json", b'{"accuracy": 0.97}')

    assert ref.uri == f"{store.root}/a/result.json"
    assert ref.digest == sha(b'{"accuracy": 0.97}')
    assert ref.size == 18
    assert store.get_bytes("a/result.json") == b'{"accuracy": 0.97}'
    assert store.digest("a/result.json") == ref.digest
    head = s3_server.client().head_object(Bucket=store.bucket, Key="prefix/a/result.json")
    assert head["Metadata"]["sha256"] == ref.digest.removeprefix("sha256:")


def test_file_round_trip(store: S3Store, tmp_path: Path) -> None:
    data = write_random(tmp_path / "model.pt2", 300_000)

    ref = store.put_file("m/model.pt2", tmp_path / "model.pt2")
    out = store.get_file("m/model.pt2", tmp_path / "down" / "model.pt2")

    assert out.read_bytes() == data
    assert ref.digest == sha(data) == digest_file(out)
    assert [p.name for p in out.parent.iterdir()] == ["model.pt2"]  # no temp file left


def test_multipart_upload_above_threshold(
    store: S3Store, s3_server: S3Server, tmp_path: Path
) -> None:
    data = write_random(tmp_path / "big.bin", 12 * MIB + 123)

    ref = store.put_file("big.bin", tmp_path / "big.bin")

    head = s3_server.client().head_object(Bucket=store.bucket, Key="prefix/big.bin")
    assert head["ETag"].strip('"').endswith("-3")  # three parts of 5 MiB, 5 MiB, 2 MiB
    assert head["ContentLength"] == len(data)
    assert ref.digest == sha(data)
    assert store.get_file("big.bin", tmp_path / "copy.bin").read_bytes() == data
    assert pending_uploads(s3_server, store.root) == []


def test_dir_round_trip(store: S3Store, tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "model.onnx").write_bytes(b"onnx")
    (src / "sub" / "result.json").write_bytes(b"{}")

    refs = store.put_dir("run1/out", src)
    dest = store.get_dir("run1/out", tmp_path / "dest")

    assert sorted(refs) == ["model.onnx", "sub/result.json"]
    assert refs["model.onnx"].digest == sha(b"onnx")
    assert (dest / "model.onnx").read_bytes() == b"onnx"
    assert (dest / "sub" / "result.json").read_bytes() == b"{}"


def test_list_and_delete_prefix_respect_folder_boundaries(store: S3Store) -> None:
    for key in ["run1/a", "run1/b/c", "run10/a", "other"]:
        store.put_bytes(key, key.encode())

    assert store.list() == ["other", "run1/a", "run1/b/c", "run10/a"]
    assert store.list("run1") == ["run1/a", "run1/b/c"]
    assert store.list("run1/") == ["run1/a", "run1/b/c"]
    assert store.delete_prefix("run1") == 2
    assert store.list() == ["other", "run10/a"]
    assert store.delete_prefix("nothing-here") == 0


def test_foreign_object_digest_is_computed(store: S3Store, s3_server: S3Server) -> None:
    s3_server.client().put_object(Bucket=store.bucket, Key="prefix/foreign.bin", Body=b"xyz")

    assert store.exists("foreign.bin")
    assert store.digest("foreign.bin") == sha(b"xyz")
    assert store.get_bytes("foreign.bin") == b"xyz"


def test_corrupted_object_fails_digest_check(
    store: S3Store, s3_server: S3Server, tmp_path: Path
) -> None:
    s3_server.client().put_object(
        Bucket=store.bucket, Key="prefix/x", Body=b"evil", Metadata={"sha256": "0" * 64}
    )

    with pytest.raises(ArtifactError, match="digest mismatch"):
        store.get_bytes("x")
    with pytest.raises(ArtifactError, match="digest mismatch"):
        store.get_file("x", tmp_path / "x")
    assert not (tmp_path / "x").exists()
    assert list(tmp_path.iterdir()) == []


# -- overwrite protection ---------------------------------------------------------------------


def test_overwrite_false_keeps_existing_object(store: S3Store, tmp_path: Path) -> None:
    store.put_bytes("k", b"first")
    write_random(tmp_path / "big", 6 * MIB)

    with pytest.raises(ArtifactError, match=r"refusing to overwrite .*/prefix/k$"):
        store.put_bytes("k", b"second", overwrite=False)
    with pytest.raises(ArtifactError, match="refusing to overwrite"):
        store.put_file("k", tmp_path / "big", overwrite=False)
    assert store.get_bytes("k") == b"first"
    store.put_bytes("k", b"third")  # the default replaces
    assert store.get_bytes("k") == b"third"


@pytest.mark.parametrize("size", [10, 6 * MIB], ids=["put", "multipart"])
def test_conditional_write_closes_the_race(
    store: S3Store, s3_server: S3Server, monkeypatch: pytest.MonkeyPatch, size: int
) -> None:
    """Another writer lands the key between our existence check and our write."""
    store.put_bytes("k", b"winner")
    monkeypatch.setattr(store, "_head", lambda key, action: None)  # the check saw nothing

    with pytest.raises(ArtifactError, match="refusing to overwrite"):
        store.put_bytes("k", b"x" * size, overwrite=False)
    assert store.get_bytes("k") == b"winner"
    assert pending_uploads(s3_server, store.root) == []


def test_failed_multipart_upload_is_aborted(
    store: S3Store, s3_server: S3Server, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    write_random(tmp_path / "big", 12 * MIB)
    real = store.client.upload_part
    calls = 0

    def failing_upload_part(**kw: Any) -> Any:
        nonlocal calls
        calls += 1
        if kw["PartNumber"] == 2:
            raise OSError("disk read error")
        return real(**kw)

    monkeypatch.setattr(store.client, "upload_part", failing_upload_part)

    with pytest.raises(ArtifactError, match="disk read error"):
        store.put_file("big", tmp_path / "big")
    assert calls >= 2
    assert not store.exists("big")
    assert pending_uploads(s3_server, store.root) == []


# -- errors -----------------------------------------------------------------------------------


def test_missing_key(store: S3Store, tmp_path: Path) -> None:
    assert not store.exists("nope")
    with pytest.raises(ArtifactError, match=r"s3://.*/prefix/nope: no such artifact"):
        store.get_bytes("nope")
    with pytest.raises(ArtifactError, match="no such artifact"):
        store.get_file("nope", tmp_path / "nope")
    with pytest.raises(ArtifactError, match=r"no artifact at s3://.*/prefix/nope"):
        store.digest("nope")
    assert not (tmp_path / "nope").exists()


def test_missing_bucket_is_named(s3_server: S3Server) -> None:
    store = S3Store("s3://no-such-bucket/p", settings=fast_settings(s3_server.endpoint_url))
    expected = r"s3://no-such-bucket/p/k: bucket 'no-such-bucket' does not exist"

    for call in (
        lambda: store.put_bytes("k", b"x"),
        lambda: store.get_bytes("k"),
        lambda: store.exists("k"),
        lambda: store.list(),
    ):
        with pytest.raises(ArtifactError) as info:
            call()
        assert "no-such-bucket" in str(info.value)
        assert "does not exist" in str(info.value)
    with pytest.raises(ArtifactError, match=expected):
        store.put_bytes("k", b"x")


def test_no_credentials(
    s3_server: S3Server, s3_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    store = S3Store(s3_bucket, settings=fast_settings(s3_server.endpoint_url))

    with pytest.raises(ArtifactError, match=r"s3://.*/prefix/k: no S3 credentials"):
        store.put_bytes("k", b"x")


def test_unreachable_endpoint_fails_fast(s3_server: S3Server, s3_bucket: str) -> None:
    store = S3Store(s3_bucket, settings=fast_settings(s3_server.endpoint_url))
    s3_server.stop()

    started = time.monotonic()
    with pytest.raises(
        ArtifactError, match=r"s3://.*/prefix/k: S3 endpoint http://127.*unreachable"
    ):
        store.get_bytes("k")
    assert time.monotonic() - started < 10


# -- outages mid-upload -----------------------------------------------------------------------


def test_outage_mid_multipart_upload_raises_and_leaves_no_object(
    s3_server: S3Server, s3_bucket: str, flaky_proxy: FlakyProxy, tmp_path: Path
) -> None:
    data = write_random(tmp_path / "big", 16 * MIB)
    store = S3Store(s3_bucket, settings=fast_settings(flaky_proxy.url))
    flaky_proxy.cut_after(7 * MIB)  # inside the second part; then the server is gone

    started = time.monotonic()
    with pytest.raises(ArtifactError) as info:
        store.put_file("big", tmp_path / "big")
    elapsed = time.monotonic() - started

    assert flaky_proxy.cuts == 1
    assert elapsed < 15
    assert f"{store.root}/big" in str(info.value)
    flaky_proxy.resume()  # the server comes back: the half upload must not have landed
    assert not store.exists("big")
    assert store.list() == []
    store.put_file("big", tmp_path / "big")  # and a retry then succeeds
    assert store.get_bytes("big") == data


def test_outage_mid_single_put_raises(
    s3_server: S3Server, s3_bucket: str, flaky_proxy: FlakyProxy, tmp_path: Path
) -> None:
    write_random(tmp_path / "f", 3 * MIB)
    store = S3Store(s3_bucket, settings=fast_settings(flaky_proxy.url))
    flaky_proxy.cut_after(1 * MIB)

    with pytest.raises(ArtifactError, match=r"/prefix/f"):
        store.put_file("f", tmp_path / "f")
    flaky_proxy.resume()
    assert not store.exists("f")


def test_brief_connection_drop_is_retried(
    s3_server: S3Server, s3_bucket: str, flaky_proxy: FlakyProxy, tmp_path: Path
) -> None:
    data = write_random(tmp_path / "big", 11 * MIB)
    store = S3Store(s3_bucket, settings=fast_settings(flaky_proxy.url, max_attempts=3))
    flaky_proxy.cut_after(6 * MIB, refuse=False)  # drop connections once, keep serving

    ref = store.put_file("big", tmp_path / "big")

    assert flaky_proxy.cuts == 1
    assert ref.digest == sha(data)
    assert store.get_bytes("big") == data


def test_server_stopped_during_upload(
    s3_server: S3Server, s3_bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Stop the real server while parts are in flight; restart it; nothing was committed."""
    write_random(tmp_path / "big", 16 * MIB)
    store = S3Store(s3_bucket, settings=fast_settings(s3_server.endpoint_url, max_concurrency=1))
    real = store.client.upload_part
    stopped = threading.Event()

    def upload_part_then_stop(**kw: Any) -> Any:
        resp = real(**kw)
        if kw["PartNumber"] == 1 and not stopped.is_set():
            s3_server.stop()
            stopped.set()
        return resp

    monkeypatch.setattr(store.client, "upload_part", upload_part_then_stop)

    with pytest.raises(ArtifactError, match="unreachable"):
        store.put_file("big", tmp_path / "big")
    s3_server.start()
    assert not store.exists("big")


# -- URI helpers against S3 -------------------------------------------------------------------


def test_publish_and_fetch_exact_uris(s3_server: S3Server, s3_bucket: str, tmp_path: Path) -> None:
    (tmp_path / "m.pt2").write_bytes(b"weights")
    uri = f"{s3_bucket}/stage/m.pt2"

    ref = publish(tmp_path / "m.pt2", uri)  # endpoint from KOMPAKTOR_S3_ENDPOINT_URL
    got = fetch(uri, tmp_path / "cache")

    assert ref.uri == uri
    assert got == tmp_path / "cache" / "m.pt2"
    assert got.read_bytes() == b"weights"
    assert open_store(s3_bucket).list() == ["stage/m.pt2"]
    with pytest.raises(ArtifactError, match="refusing to overwrite"):
        publish(tmp_path / "m.pt2", uri, overwrite=False)
