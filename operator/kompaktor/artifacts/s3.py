"""Artifact store on S3 or any S3-protocol server (MinIO, Ceph RGW, moto).

Uploads are atomic because S3 only makes an object visible when a PUT, or the Complete call of
a multipart upload, succeeds; a failed multipart upload is aborted so no parts linger. Every
object carries its sha256 in the `sha256` user metadata, checked again on each download.
Conditional writes (`put_if`, `delete_if`, on the ETag `read_versioned` returns) let several
machines share one object safely, as `kompaktor run`'s lease on a job does.
"""

from __future__ import annotations

import base64
import hashlib
import io
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from contextlib import suppress
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, TypeVar

from botocore.exceptions import BotoCoreError, ClientError

from kompaktor.artifacts.base import (
    ArtifactError,
    ArtifactRef,
    ArtifactStore,
    DigestMismatchError,
    check_key,
    check_prefix,
    is_under,
)
from kompaktor.artifacts.file import atomic_writer
from kompaktor.artifacts.hashing import CHUNK_SIZE, PREFIX, digest_bytes, digest_file, is_digest
from kompaktor.artifacts.s3_config import S3Settings, make_client
from kompaktor.artifacts.s3_errors import S3_FAILURES, error_code, translate

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_s3.type_defs import CompletedPartTypeDef, PutObjectOutputTypeDef

T = TypeVar("T")
_META = "sha256"  # user metadata key: x-amz-meta-sha256 = <hex>
_DELETE_BATCH = 1000  # DeleteObjects limit
#: What a conditional request gets when the object is not as the caller last saw it: changed
#: (412), changed by a request racing it (409, AWS), or gone (404 to an If-Match).
_LOST_RACE = {"PreconditionFailed", "412", "ConditionalRequestConflict", "409", "NoSuchKey", "404"}


class PreconditionFailedError(ArtifactError):
    """A conditional write or delete found the object other than the caller last saw it: another
    writer got there first, which no retry mends."""


@dataclass(frozen=True)
class Versioned:
    """An object as `read_versioned` found it."""

    data: bytes
    etag: str  # what `put_if` and `delete_if` compare with
    age_seconds: float  # since it was last written, by the server's clock


def _md5_b64(data: bytes) -> str:
    """Content-MD5 header value: lets the server reject a body corrupted in transit."""
    return base64.b64encode(hashlib.md5(data).digest()).decode()


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """Split 's3://bucket/some/prefix' into ('bucket', 'some/prefix')."""
    if not uri.startswith("s3://"):
        raise ArtifactError(f"not an S3 URI: {uri!r}")
    bucket, _, prefix = uri.removeprefix("s3://").partition("/")
    if len(bucket) < 3 or "/" in bucket:
        raise ArtifactError(f"invalid S3 URI {uri!r}: want s3://<bucket>[/<prefix>]")
    try:
        return bucket, check_prefix(prefix.strip("/"))
    except ArtifactError:
        raise ArtifactError(f"invalid S3 URI {uri!r}: bad prefix {prefix!r}") from None


class S3Store(ArtifactStore):
    """Artifacts as objects under `s3://bucket/prefix/`."""

    def __init__(
        self,
        uri: str,
        *,
        settings: S3Settings | None = None,
        client: S3Client | None = None,
    ) -> None:
        self.bucket, self.prefix = parse_s3_uri(uri)
        self.root = f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"
        self.settings = settings or S3Settings.from_env()
        self.client = client or make_client(self.settings)
        self._foreign_digests: dict[tuple[str, str], str] = {}

    # -- plumbing --------------------------------------------------------------------------

    def _key(self, key: str) -> str:
        check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def _error(self, exc: Exception, action: str, key: str) -> ArtifactError:
        return translate(
            exc, action=action, uri=self.uri(key), endpoint=self.settings.endpoint_label
        )

    def _call(self, action: str, key: str, fn: Callable[[], T]) -> T:
        """Run one S3 operation, turning any failure into an `ArtifactError` naming the URI."""
        try:
            return fn()
        except ArtifactError:
            raise
        except S3_FAILURES as exc:
            raise self._error(exc, action, key) from exc

    def _head(self, key: str, action: str) -> dict[str, Any] | None:
        """HEAD the object, or None when it is absent (a missing bucket is still an error)."""
        full = self._key(key)
        try:
            return dict(self.client.head_object(Bucket=self.bucket, Key=full))
        except ClientError as exc:
            if error_code(exc) not in {"404", "NoSuchKey", "NotFound"}:
                raise self._error(exc, action, key) from exc
        except BotoCoreError as exc:
            raise self._error(exc, action, key) from exc
        # A HEAD reply has no body, so it cannot say whether the key or the bucket is missing,
        # nor whether the server speaks S3 at all (any web server answers 404): a listing's
        # reply carries S3's error code (NoSuchBucket), which a server that is not S3 lacks.
        self._call(
            action,
            key,
            lambda: self.client.list_objects_v2(Bucket=self.bucket, Prefix=full, MaxKeys=1),
        )
        return None

    @staticmethod
    def _recorded_digest(metadata: dict[str, str]) -> str | None:
        value = metadata.get(_META, "")
        value = value if value.startswith(PREFIX) else PREFIX + value
        return value if is_digest(value) else None

    # -- writes ----------------------------------------------------------------------------

    def put_file(self, key: str, path: Path, *, overwrite: bool = True) -> ArtifactRef:
        try:
            digest, size = digest_file(path), path.stat().st_size
            src = path.open("rb")
        except OSError as exc:
            raise ArtifactError(f"cannot upload {path}: {exc.strerror or exc}") from exc
        with src:
            return self._upload(key, src, size, digest, overwrite)

    def put_bytes(self, key: str, data: bytes, *, overwrite: bool = True) -> ArtifactRef:
        return self._upload(key, io.BytesIO(data), len(data), digest_bytes(data), overwrite)

    def _upload(
        self, key: str, src: BinaryIO, size: int, digest: str, overwrite: bool
    ) -> ArtifactRef:
        if not overwrite and self._head(key, "upload to") is not None:
            # Cheap early refusal; the conditional write below closes the race.
            raise ArtifactError(f"refusing to overwrite existing artifact {self.uri(key)}")
        metadata = {_META: digest.removeprefix(PREFIX)}
        if size < self.settings.multipart_threshold:
            data = src.read()
            extra: dict[str, Any] = {} if overwrite else {"IfNoneMatch": "*"}
            self._call("upload to", key, self._put_object(key, data, metadata, extra))
        else:
            self._multipart(key, src, size, metadata, overwrite)
        return ArtifactRef(uri=self.uri(key), digest=digest, size=size)

    def _multipart(
        self, key: str, src: BinaryIO, size: int, metadata: dict[str, str], overwrite: bool
    ) -> None:
        """Upload in parts, a few at a time; abort the upload on any failure."""
        full = self._key(key)
        created = self._call(
            "upload to",
            key,
            lambda: self.client.create_multipart_upload(
                Bucket=self.bucket, Key=full, Metadata=metadata
            ),
        )
        upload_id = created["UploadId"]
        try:
            parts = self._upload_parts(full, upload_id, src, self.settings.part_size(size))
            extra: dict[str, Any] = {} if overwrite else {"IfNoneMatch": "*"}
            self.client.complete_multipart_upload(
                Bucket=self.bucket,
                Key=full,
                UploadId=upload_id,
                MultipartUpload={"Parts": parts},
                **extra,
            )
        except BaseException as exc:
            with suppress(BotoCoreError, ClientError):  # best effort; lifecycle rules do the rest
                self.client.abort_multipart_upload(Bucket=self.bucket, Key=full, UploadId=upload_id)
            if isinstance(exc, S3_FAILURES):
                raise self._error(exc, "upload to", key) from exc
            raise

    def _upload_parts(
        self, full: str, upload_id: str, src: BinaryIO, part_size: int
    ) -> list[CompletedPartTypeDef]:
        """Read parts sequentially, send up to `max_concurrency` at once (bounded memory)."""

        def send(number: int, data: bytes) -> CompletedPartTypeDef:
            resp = self.client.upload_part(
                Bucket=self.bucket,
                Key=full,
                UploadId=upload_id,
                PartNumber=number,
                Body=data,
                ContentMD5=_md5_b64(data),
            )
            return {"PartNumber": number, "ETag": resp["ETag"]}

        done: list[CompletedPartTypeDef] = []
        pending: set[Future[CompletedPartTypeDef]] = set()
        pool = ThreadPoolExecutor(max_workers=self.settings.max_concurrency)
        try:
            for number, data in enumerate(_chunks(src, part_size), start=1):
                if len(pending) >= self.settings.max_concurrency:
                    finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                    done.extend(f.result() for f in finished)
                pending.add(pool.submit(send, number, data))
            done.extend(f.result() for f in wait(pending).done)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
        return sorted(done, key=lambda p: p["PartNumber"])

    # -- conditional writes ----------------------------------------------------------------

    def _conditional(self, action: str, key: str, fn: Callable[[], T]) -> T:
        """`_call`, with a lost race as `PreconditionFailedError`."""
        try:
            return fn()
        except ClientError as exc:
            if error_code(exc) in _LOST_RACE:
                raise PreconditionFailedError(
                    f"cannot {action} {self.uri(key)}: it changed meanwhile ({error_code(exc)})"
                ) from exc
            raise self._error(exc, action, key) from exc
        except S3_FAILURES as exc:
            raise self._error(exc, action, key) from exc

    def put_if(self, key: str, data: bytes, *, etag: str | None) -> str:
        """Write small `data` only if the object's ETag is still `etag` (None: only if there is
        no object); its new ETag. PreconditionFailedError if another writer got there first."""
        condition: dict[str, Any] = {"IfNoneMatch": "*"} if etag is None else {"IfMatch": etag}
        metadata = {_META: digest_bytes(data).removeprefix(PREFIX)}
        reply = self._conditional("write", key, self._put_object(key, data, metadata, condition))
        return reply["ETag"]

    def _put_object(
        self, key: str, data: bytes, metadata: dict[str, str], condition: dict[str, Any]
    ) -> Callable[[], PutObjectOutputTypeDef]:
        """One PUT of a small object, its MD5 for the server to check, under `condition`."""
        full = self._key(key)
        return lambda: self.client.put_object(
            Bucket=self.bucket,
            Key=full,
            Body=data,
            Metadata=metadata,
            ContentMD5=_md5_b64(data),
            **condition,
        )

    def delete_if(self, key: str, *, etag: str) -> None:
        """Delete the object only if its ETag is still `etag`; PreconditionFailedError if not."""
        full = self._key(key)
        self._conditional(
            "delete",
            key,
            lambda: self.client.delete_object(Bucket=self.bucket, Key=full, IfMatch=etag),
        )

    def read_versioned(self, key: str) -> Versioned | None:
        """The object with its ETag and age, or None when there is none. The age is the reply's
        Date less the object's Last-Modified, both the server's clock: no machine's clock is
        compared with another's."""
        full = self._key(key)

        def read() -> Versioned | None:
            try:
                reply = self.client.get_object(Bucket=self.bucket, Key=full)
            except ClientError as exc:
                if error_code(exc) == "NoSuchKey":  # a bare 404 is no S3 server's answer
                    return None
                raise
            data = reply["Body"].read()
            self._check(
                key, self._recorded_digest(reply["Metadata"]), digest_bytes(data), reply["ETag"]
            )
            now = parsedate_to_datetime(reply["ResponseMetadata"]["HTTPHeaders"]["date"])
            age = (now - reply["LastModified"]).total_seconds()
            return Versioned(data, reply["ETag"], max(age, 0.0))

        return self._call("read", key, read)

    # -- reads -----------------------------------------------------------------------------

    def _check(self, key: str, recorded: str | None, got: str, etag: str) -> None:
        if recorded is None:
            self._foreign_digests[(key, etag)] = got
        elif got != recorded:
            raise DigestMismatchError(
                f"digest mismatch reading {self.uri(key)}: recorded {recorded}, got {got}"
            )

    def get_bytes(self, key: str) -> bytes:
        full = self._key(key)

        def read() -> tuple[bytes, dict[str, Any]]:
            resp = self.client.get_object(Bucket=self.bucket, Key=full)
            return resp["Body"].read(), dict(resp)

        data, resp = self._call("download", key, read)
        self._check(key, self._recorded_digest(resp["Metadata"]), digest_bytes(data), resp["ETag"])
        return data

    def download(self, key: str, dest: Path) -> str:
        full = self._key(key)

        def stream() -> tuple[Path, str]:
            resp = self.client.get_object(Bucket=self.bucket, Key=full)
            h = hashlib.sha256()
            with atomic_writer(dest) as (f, tmp):
                for chunk in resp["Body"].iter_chunks(CHUNK_SIZE):
                    h.update(chunk)
                    f.write(chunk)
                got = PREFIX + h.hexdigest()
                self._check(key, self._recorded_digest(resp["Metadata"]), got, resp["ETag"])
            return tmp, got

        tmp, got = self._call("download", key, stream)
        try:
            tmp.replace(dest)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise ArtifactError(f"cannot write {dest}: {exc.strerror or exc}") from exc
        return got

    def exists(self, key: str) -> bool:
        return self._head(key, "look up") is not None

    def digest(self, key: str) -> str:
        head = self._head(key, "read the digest of")
        if head is None:
            raise ArtifactError(f"no artifact at {self.uri(key)}")
        recorded = self._recorded_digest(head.get("Metadata", {}))
        if recorded is not None:
            return recorded
        cached = self._foreign_digests.get((key, head["ETag"]))
        if cached is not None:
            return cached
        full = self._key(key)

        def compute() -> tuple[str, str]:
            resp = self.client.get_object(Bucket=self.bucket, Key=full)
            h = hashlib.sha256()
            for chunk in resp["Body"].iter_chunks(CHUNK_SIZE):
                h.update(chunk)
            return PREFIX + h.hexdigest(), resp["ETag"]

        got, etag = self._call("read the digest of", key, compute)
        self._foreign_digests[(key, etag)] = got
        return got

    # -- listing ---------------------------------------------------------------------------

    def _iter_keys(self, prefix: str) -> Iterator[str]:
        full_prefix = self._key(prefix) if prefix else (f"{self.prefix}/" if self.prefix else "")
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=full_prefix):
            for obj in page.get("Contents", []):
                rel = obj["Key"][len(self.prefix) + 1 :] if self.prefix else obj["Key"]
                if is_under(rel, prefix):
                    yield rel

    def list(self, prefix: str = "") -> list[str]:
        prefix = check_prefix(prefix)
        return sorted(self._call("list", prefix, lambda: list(self._iter_keys(prefix))))

    def delete_prefix(self, prefix: str) -> int:
        prefix = check_prefix(prefix)
        keys = self.list(prefix)
        for start in range(0, len(keys), _DELETE_BATCH):
            batch = keys[start : start + _DELETE_BATCH]
            resp = self._call(
                "delete",
                prefix,
                lambda batch=batch: self.client.delete_objects(  # type: ignore[misc]
                    Bucket=self.bucket,
                    Delete={"Objects": [{"Key": self._key(k)} for k in batch], "Quiet": True},
                ),
            )
            if errors := resp.get("Errors"):
                first = errors[0]
                raise ArtifactError(
                    f"cannot delete {len(errors)} object(s) under {self.uri(prefix)}: "
                    f"{first.get('Key')}: {first.get('Code')} {first.get('Message', '')}".rstrip()
                )
        return len(keys)


def _chunks(src: BinaryIO, size: int) -> Iterator[bytes]:
    while data := src.read(size):
        yield data
