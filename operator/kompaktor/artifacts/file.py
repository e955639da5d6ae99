"""Artifact store on a local (or mounted) file system: the local runner's default.

Atomicity comes from writing a temp file in the destination folder, fsyncing it and renaming
it over the final name. Digests live in a hidden sidecar beside each file that also records the
file's identity as git's index does (size, mtime, ctime, inode), so a sidecar that no longer
matches its file (the file was replaced by someone else, or we crashed between the two renames) is
ignored and recomputed, never trusted. The ctime and inode catch what size and mtime miss: a
same-size replacement whose mtime was kept (`cp -p`, `touch -r`, `mv` of such a copy).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from kompaktor.artifacts.base import (
    RESERVED_PREFIX,
    ArtifactError,
    ArtifactRef,
    ArtifactStore,
    DigestMismatchError,
    check_key,
    check_prefix,
    is_under,
)
from kompaktor.artifacts.hashing import CHUNK_SIZE, PREFIX, digest_bytes, digest_file, is_digest


def _identity(st: os.stat_result) -> dict[str, int]:
    """What a sidecar must still match for its digest to be the file's."""
    return {
        "size": st.st_size,
        "mtime_ns": st.st_mtime_ns,
        "ctime_ns": st.st_ctime_ns,
        "ino": st.st_ino,
    }


def sidecar_path(path: Path) -> Path:
    """Where the digest of `path` is recorded."""
    return path.with_name(f"{RESERVED_PREFIX}{path.name}.sha256")


def _temp_path(final: Path) -> Path:
    return final.with_name(f"{RESERVED_PREFIX}{final.name}.{uuid.uuid4().hex}.tmp")


def _fsync_dir(directory: Path) -> None:
    """Make a rename durable; some file systems cannot open directories, which is fine."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_writer(final: Path) -> Iterator[tuple[BinaryIO, Path]]:
    """Yield (file, temp path) for a temp file beside `final`; removed if the block fails.

    The caller renames the temp file into place; until then `final` is untouched.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_path(final)
    try:
        with tmp.open("xb") as f:
            yield f, tmp
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def copy_hashing(src: BinaryIO, dst: BinaryIO) -> tuple[str, int]:
    """Copy `src` to `dst` in chunks; return the digest and size of what was copied."""
    h = hashlib.sha256()
    size = 0
    while chunk := src.read(CHUNK_SIZE):
        h.update(chunk)
        dst.write(chunk)
        size += len(chunk)
    return PREFIX + h.hexdigest(), size


class FileStore(ArtifactStore):
    """Artifacts as plain files under `directory`; keys map to relative paths."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory).resolve()
        self.root = self.directory.as_uri()

    # -- paths -----------------------------------------------------------------------------

    def _path(self, key: str) -> Path:
        return self.directory.joinpath(*check_key(key).split("/"))

    def _missing(self, key: str) -> ArtifactError:
        return ArtifactError(f"no artifact at {self.uri(key)}")

    # -- digests ---------------------------------------------------------------------------

    def _record(self, path: Path, digest: str) -> None:
        """Write the sidecar for `path` (which must already be in place) atomically."""
        body = json.dumps({"digest": digest, **_identity(path.stat())})
        side = sidecar_path(path)
        with atomic_writer(side) as (f, tmp):
            f.write(body.encode())
        tmp.replace(side)

    def _recorded(self, path: Path) -> str | None:
        """The sidecar digest, if the sidecar still describes the file as it is now."""
        try:
            rec = json.loads(sidecar_path(path).read_text())
            st = path.stat()
        except (OSError, ValueError):
            return None
        fresh = (
            isinstance(rec, dict)
            and all(rec.get(name) == value for name, value in _identity(st).items())
            and isinstance(rec.get("digest"), str)
            and is_digest(rec["digest"])
        )
        return str(rec["digest"]) if fresh else None

    def digest(self, key: str) -> str:
        path = self._path(key)
        if not path.is_file():
            raise self._missing(key)
        recorded = self._recorded(path)
        if recorded is not None:
            return recorded
        try:
            computed = digest_file(path)
        except OSError as exc:
            raise ArtifactError(f"cannot read {self.uri(key)}: {exc.strerror or exc}") from exc
        with contextlib.suppress(OSError):  # a read-only store still answers, just slower
            self._record(path, computed)
        return computed

    # -- writes ----------------------------------------------------------------------------

    def _put(self, key: str, src: BinaryIO, overwrite: bool) -> ArtifactRef:
        final = self._path(key)
        uri = self.uri(key)
        if not overwrite and final.exists():
            raise ArtifactError(f"refusing to overwrite existing artifact {uri}")
        try:
            with atomic_writer(final) as (f, tmp):
                digest, size = copy_hashing(src, f)
            self._commit(tmp, final, overwrite, uri)
            self._record(final, digest)
        except OSError as exc:
            raise ArtifactError(f"cannot write {uri}: {exc.strerror or exc}") from exc
        _fsync_dir(final.parent)
        return ArtifactRef(uri=uri, digest=digest, size=size)

    @staticmethod
    def _commit(tmp: Path, final: Path, overwrite: bool, uri: str) -> None:
        """Move the finished temp file into place; without overwrite, never clobber."""
        if overwrite:
            tmp.replace(final)
            return
        try:
            os.link(tmp, final)  # atomic "create if absent", unlike exists() + replace()
        except FileExistsError:
            raise ArtifactError(f"refusing to overwrite existing artifact {uri}") from None
        finally:
            tmp.unlink(missing_ok=True)

    def put_file(self, key: str, path: Path, *, overwrite: bool = True) -> ArtifactRef:
        try:
            src = path.open("rb")
        except OSError as exc:
            raise ArtifactError(f"cannot upload {path}: {exc.strerror or exc}") from exc
        with src:
            return self._put(key, src, overwrite)

    def put_bytes(self, key: str, data: bytes, *, overwrite: bool = True) -> ArtifactRef:
        return self._put(key, io.BytesIO(data), overwrite)

    # -- reads -----------------------------------------------------------------------------

    def download(self, key: str, dest: Path) -> str:
        path = self._path(key)
        expected = self.digest(key)
        try:
            with path.open("rb") as src, atomic_writer(dest) as (f, tmp):
                got, _ = copy_hashing(src, f)
                if got != expected:
                    raise DigestMismatchError(
                        f"digest mismatch reading {self.uri(key)}: recorded {expected}, got {got}"
                    )
            tmp.replace(dest)
        except OSError as exc:
            raise ArtifactError(f"cannot copy {self.uri(key)} to {dest}: {exc}") from exc
        return got

    def get_bytes(self, key: str) -> bytes:
        path = self._path(key)
        expected = self.digest(key)
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ArtifactError(f"cannot read {self.uri(key)}: {exc.strerror or exc}") from exc
        if digest_bytes(data) != expected:
            raise DigestMismatchError(
                f"digest mismatch reading {self.uri(key)}: recorded {expected}"
            )
        return data

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    # -- listing ---------------------------------------------------------------------------

    def list(self, prefix: str = "") -> list[str]:
        prefix = check_prefix(prefix)
        base = self._path(prefix) if prefix else self.directory
        if base.is_file():
            return [prefix]
        keys: list[str] = []
        for dirpath, dirnames, filenames in os.walk(base):
            dirnames[:] = [d for d in dirnames if not d.startswith(RESERVED_PREFIX)]
            rel_dir = Path(dirpath).relative_to(self.directory).as_posix()
            for name in filenames:
                if not name.startswith(RESERVED_PREFIX):
                    keys.append(name if rel_dir == "." else f"{rel_dir}/{name}")
        return sorted(k for k in keys if is_under(k, prefix))

    def delete_prefix(self, prefix: str) -> int:
        prefix = check_prefix(prefix)
        keys = self.list(prefix)
        try:
            for key in keys:
                path = self._path(key)
                sidecar_path(path).unlink(missing_ok=True)
                path.unlink(missing_ok=True)
            if prefix:
                self._prune_empty(self._path(prefix))
        except OSError as exc:
            raise ArtifactError(f"cannot delete {self.uri(prefix)}: {exc}") from exc
        return len(keys)

    def _prune_empty(self, base: Path) -> None:
        """Remove orphaned sidecars and empty folders below (and including) `base`.

        Files that are not ours, or temp files of a writer still at work, are left alone.
        """
        if not base.is_dir():
            return
        for dirpath, _, filenames in os.walk(base, topdown=False):
            here = Path(dirpath)
            for name in filenames:
                if name.startswith(RESERVED_PREFIX) and name.endswith(".sha256"):
                    owner = here / name.removeprefix(RESERVED_PREFIX).removesuffix(".sha256")
                    if not owner.exists():
                        (here / name).unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                here.rmdir()
