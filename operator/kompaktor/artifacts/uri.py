"""One-call helpers for code that holds a URI, not a store: stage inputs and outputs.

A URI is `s3://bucket/key`, `file:///abs/path`, or a plain local path (made absolute).
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlsplit

from kompaktor.artifacts.base import ArtifactError, ArtifactRef, ArtifactStore
from kompaktor.artifacts.file import FileStore
from kompaktor.artifacts.hashing import digest_file
from kompaktor.artifacts.s3 import S3Store, parse_s3_uri
from kompaktor.artifacts.s3_config import S3Settings


def local_path(uri: str) -> Path | None:
    """The absolute local path a `file://` URI or plain path names; None for remote URIs."""
    if uri.startswith("file:"):
        parts = urlsplit(uri)
        if parts.netloc not in ("", "localhost") or not parts.path.startswith("/"):
            raise ArtifactError(f"invalid file URI {uri!r}: want file:///absolute/path")
        return Path(unquote(parts.path))
    if "://" in uri:
        return None
    if not uri:
        raise ArtifactError("empty artifact URI")
    return Path(uri).expanduser().resolve()


def open_store(uri: str, *, endpoint_url: str | None = None) -> ArtifactStore:
    """The store rooted at `uri` (s3://bucket[/prefix], file:///dir, or a local directory)."""
    if uri.startswith("s3://"):
        return S3Store(uri, settings=S3Settings.from_env(endpoint_url))
    path = local_path(uri)
    if path is None:
        scheme = uri.split("://", 1)[0]
        raise ArtifactError(f"unsupported artifact URI {uri!r}: scheme {scheme!r} (use s3 or file)")
    return FileStore(path)


def split_uri(uri: str, *, endpoint_url: str | None = None) -> tuple[ArtifactStore, str]:
    """The store of the URI's parent and the key of its last component.

    `s3://b/a/m.pt` → (store at s3://b/a, "m.pt"): every artifact operation on a single URI
    becomes one store call.
    """
    if uri.startswith("s3://"):
        bucket, prefix = parse_s3_uri(uri)
        if not prefix:
            raise ArtifactError(f"{uri!r} names a bucket, not an artifact")
        parent, _, name = prefix.rpartition("/")
        root = f"s3://{bucket}/{parent}" if parent else f"s3://{bucket}"
        return S3Store(root, settings=S3Settings.from_env(endpoint_url)), name
    path = local_path(uri)
    if path is None:
        return open_store(uri), ""  # raises: unsupported scheme
    if path == path.parent:
        raise ArtifactError(f"{uri!r} names a folder, not an artifact")
    return FileStore(path.parent), path.name


def fetch(uri: str, dest_dir: Path, *, endpoint_url: str | None = None) -> Path:
    """A local file with the artifact's content: the file itself when local, else a download.

    Downloads land in `dest_dir/<name>` and are digest-checked.
    """
    path = _local_file(uri)
    if path is not None:
        return path
    store, name = split_uri(uri, endpoint_url=endpoint_url)
    return store.get_file(name, dest_dir / name)


def fetch_digest(uri: str, dest_dir: Path, *, endpoint_url: str | None = None) -> tuple[Path, str]:
    """`fetch`, and the file's "sha256:<hex>": a download's is the one taken while it streamed,
    so a multi-gigabyte model is read once, not downloaded and then hashed again."""
    path = _local_file(uri)
    if path is not None:
        try:
            return path, digest_file(path)
        except OSError as exc:
            raise ArtifactError(f"cannot read {uri}: {exc.strerror or exc}") from exc
    store, name = split_uri(uri, endpoint_url=endpoint_url)
    dest = dest_dir / name
    return dest, store.download(name, dest)


def _local_file(uri: str) -> Path | None:
    """The file a local URI names (ArtifactError if there is none); None for remote URIs."""
    path = local_path(uri)
    if path is not None and not path.is_file():
        raise ArtifactError(f"no artifact at {uri}")
    return path


def publish(
    path: Path, uri: str, *, overwrite: bool = True, endpoint_url: str | None = None
) -> ArtifactRef:
    """Upload a local file to exactly `uri`, atomically, recording its digest."""
    store, name = split_uri(uri, endpoint_url=endpoint_url)
    return store.put_file(name, path, overwrite=overwrite)
