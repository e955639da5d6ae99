"""Artifact stores: where models, datasets and results live (S3 in a cluster, files locally).

Everything outside this package uses only the names below.
"""

from kompaktor.artifacts.base import ArtifactError, ArtifactRef, ArtifactStore
from kompaktor.artifacts.file import FileStore
from kompaktor.artifacts.hashing import digest_bytes, digest_file
from kompaktor.artifacts.s3 import S3Store
from kompaktor.artifacts.s3_config import S3Settings
from kompaktor.artifacts.uri import (
    fetch,
    fetch_digest,
    local_path,
    open_store,
    publish,
    split_uri,
)

__all__ = [
    "ArtifactError",
    "ArtifactRef",
    "ArtifactStore",
    "FileStore",
    "S3Settings",
    "S3Store",
    "digest_bytes",
    "digest_file",
    "fetch",
    "fetch_digest",
    "local_path",
    "open_store",
    "publish",
    "split_uri",
]
