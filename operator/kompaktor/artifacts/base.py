"""The artifact-store contract shared by every backend.

Stages, the plan and the CLI only ever see `ArtifactStore`, so a job runs unchanged against a
local folder on a laptop and against S3 in a cluster.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from kompaktor.errors import KompaktorError

#: Names starting with this are the store's own bookkeeping (temp files, digest sidecars).
#: They never appear in `list()`, and keys may not use them.
RESERVED_PREFIX = ".kompaktor-"


class ArtifactError(KompaktorError):
    """An artifact could not be read or written; the message names the URI and the cause."""


class DigestMismatchError(ArtifactError):
    """An artifact's bytes are not the ones recorded for it: changed or corrupted where it is
    stored, which no retry mends."""


@dataclass(frozen=True)
class ArtifactRef:
    """Where an artifact lives and what it contains, as recorded in a job's status."""

    uri: str
    digest: str  # "sha256:<hex>"
    size: int


def check_key(key: str) -> str:
    """Return `key` if it is a clean relative '/'-separated key, else raise `ArtifactError`.

    Keys are validated once, here, so no backend can be tricked into writing outside its root.
    """
    parts = key.split("/")
    if not key or key.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise ArtifactError(f"invalid artifact key {key!r}: want a relative path like 'a/b.pt'")
    if "\\" in key or "\x00" in key:
        raise ArtifactError(f"invalid artifact key {key!r}: no backslashes or NUL bytes")
    if any(p.startswith(RESERVED_PREFIX) for p in parts):
        raise ArtifactError(f"invalid artifact key {key!r}: {RESERVED_PREFIX!r} names are reserved")
    return key


def check_prefix(prefix: str) -> str:
    """Normalize a directory-like prefix: '' means the whole store, trailing '/' is dropped."""
    prefix = prefix.rstrip("/")
    return check_key(prefix) if prefix else ""


def join_key(prefix: str, rel: str) -> str:
    """Join a prefix ('' allowed) and a relative key."""
    return f"{prefix}/{rel}" if prefix else rel


def is_under(key: str, prefix: str) -> bool:
    """Whether `key` is `prefix` itself or inside it; 'run1' does not contain 'run10/x'."""
    return not prefix or key == prefix or key.startswith(prefix + "/")


class ArtifactStore(ABC):
    """A flat namespace of immutable-by-convention blobs, each stored with its sha256.

    Every write is atomic per key: readers see the old content or the new, never a part.
    Prefixes in `list` and `delete_prefix` are directory-like ('a/b' covers 'a/b' and 'a/b/...').
    """

    root: str

    def uri(self, key: str) -> str:
        """The absolute URI of `key` (the root itself for an empty key)."""
        return f"{self.root}/{check_key(key)}" if key else self.root

    @abstractmethod
    def put_file(self, key: str, path: Path, *, overwrite: bool = True) -> ArtifactRef:
        """Upload a local file atomically and record its digest.

        With `overwrite=False` an existing key is never replaced: `ArtifactError` instead.
        """

    @abstractmethod
    def put_bytes(self, key: str, data: bytes, *, overwrite: bool = True) -> ArtifactRef:
        """Like `put_file`, for data already in memory (small JSON, metrics)."""

    @abstractmethod
    def download(self, key: str, dest: Path) -> str:
        """Download to `dest` (created atomically, parents made), verifying the digest; return
        the digest of what was written, computed as it streamed, so no caller reads it again."""

    def get_file(self, key: str, dest: Path) -> Path:
        """Download to `dest` (created atomically, parents made), verifying the digest."""
        self.download(key, dest)
        return dest

    @abstractmethod
    def get_bytes(self, key: str) -> bytes:
        """Read a whole artifact into memory, verifying the digest."""

    @abstractmethod
    def exists(self, key: str) -> bool:
        """Whether an artifact is stored under `key`."""

    @abstractmethod
    def digest(self, key: str) -> str:
        """The artifact's "sha256:<hex>": the recorded one, or computed for foreign objects."""

    @abstractmethod
    def list(self, prefix: str = "") -> list[str]:
        """Sorted keys under a directory-like `prefix` (bookkeeping files hidden)."""

    @abstractmethod
    def delete_prefix(self, prefix: str) -> int:
        """Delete every artifact under `prefix`; return how many were deleted."""

    def put_dir(
        self, prefix: str, directory: Path, *, overwrite: bool = True
    ) -> dict[str, ArtifactRef]:
        """Upload every regular file below `directory` to `prefix/<relative path>`.

        Each file is atomic, the directory as a whole is not: writers that need an
        all-or-nothing output should put a completion marker last. Returns relative path → ref.
        """
        prefix = check_prefix(prefix)
        if not directory.is_dir():
            raise ArtifactError(f"cannot upload {directory}: not a directory")
        refs: dict[str, ArtifactRef] = {}
        for path in sorted(p for p in directory.rglob("*") if p.is_file()):
            rel = path.relative_to(directory).as_posix()
            refs[rel] = self.put_file(join_key(prefix, rel), path, overwrite=overwrite)
        return refs

    def get_dir(self, prefix: str, dest: Path) -> Path:
        """Download every artifact under `prefix` into `dest`, keeping relative paths."""
        prefix = check_prefix(prefix)
        keys = self.list(prefix)
        if not keys:
            raise ArtifactError(f"no artifacts under {self.uri(prefix)}")
        dest.mkdir(parents=True, exist_ok=True)
        for key in keys:
            rel = PurePosixPath(key).relative_to(prefix) if prefix else PurePosixPath(key)
            if str(rel) == ".":  # the prefix names a single artifact, not a folder
                rel = PurePosixPath(PurePosixPath(key).name)
            self.get_file(key, dest.joinpath(*rel.parts))
        return dest
