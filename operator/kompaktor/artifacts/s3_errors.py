"""Turn botocore's exception zoo into one `ArtifactError` whose message says what to fix."""

from __future__ import annotations

import os
from pathlib import Path

import botocore.session
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionClosedError,
    ConnectionError,
    ConnectTimeoutError,
    EndpointConnectionError,
    HTTPClientError,
    NoCredentialsError,
    PartialCredentialsError,
    ProfileNotFound,
    ReadTimeoutError,
    ResponseStreamingError,
    SSLError,
)

from kompaktor.artifacts.base import ArtifactError

#: The variables botocore takes the profile's name from, the first one set winning.
PROFILE_ENV = ("AWS_DEFAULT_PROFILE", "AWS_PROFILE")
#: The files botocore reads profiles (and credentials) from: each file's variable and default.
AWS_FILES = (
    ("AWS_CONFIG_FILE", "~/.aws/config"),
    ("AWS_SHARED_CREDENTIALS_FILE", "~/.aws/credentials"),
)

_MISSING_KEY = {"NoSuchKey", "404", "NotFound"}
_DENIED = {
    "AccessDenied",
    "403",
    "Forbidden",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "ExpiredToken",
    "InvalidToken",
}


class S3ConfigError(ArtifactError):
    """An S3 setting that cannot work (a malformed endpoint, a missing profile): a
    configuration error no retry mends."""


def profile_error(exc: ProfileNotFound) -> S3ConfigError:
    """botocore's bare "The config profile (x) could not be found", naming the variable that
    named the profile, the files profiles are read from and the profiles they define."""
    profile = exc.kwargs.get("profile", "")
    variable = next((name for name in PROFILE_ENV if name in os.environ), "the profile")
    files = " and ".join(_profile_file(name, default) for name, default in AWS_FILES)
    return S3ConfigError(
        f"{variable}={profile!r} names an AWS profile that is not defined: profiles are read "
        f"from {files}, which define: {_defined_profiles()}; add a [profile {profile}] section "
        f"to the config file (or [{profile}] to the credentials file), set {variable} to a "
        "defined profile, or unset it"
    )


def partial_credentials_error(exc: PartialCredentialsError) -> S3ConfigError:
    """botocore's "Partial credentials found in env, missing: X", as a setting to fix."""
    missing = exc.kwargs.get("cred_var", "a credential")
    source = exc.kwargs.get("provider", "the environment")
    return S3ConfigError(
        f"incomplete S3 credentials from {source}: {missing} is not set; set both "
        "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or neither (to use AWS_PROFILE or a pod "
        "identity)"
    )


def _profile_file(variable: str, default: str) -> str:
    """A profile file as a message names it: its path, where the path came from, if it is gone."""
    value = os.environ.get(variable)
    path = Path(value or default).expanduser()
    source = f"from {variable}" if value else f"the default; {variable} is unset"
    return f"{path} ({source}{'' if path.is_file() else ', no such file'})"


def _defined_profiles() -> str:
    """The profiles the files define, as botocore reads them; "none" for none or unreadable."""
    try:
        names = botocore.session.Session().available_profiles
    except BotoCoreError:  # a file botocore cannot parse
        names = []
    return ", ".join(sorted(names)) or "none"


#: What an S3 call raises when it fails, all of which `translate` explains.
S3_FAILURES = (BotoCoreError, ClientError, OSError)
#: Requests whose error replies have no body, so botocore's code is the bare HTTP status.
_BODILESS = {"HeadObject", "HeadBucket"}


def error_code(exc: ClientError) -> str:
    """The S3 error code ('NoSuchKey', '404', ...) of a client error."""
    return str(exc.response.get("Error", {}).get("Code", ""))


def _not_s3(exc: ClientError) -> str | None:
    """The status and content type of an error reply that is not S3's, else None.

    S3 (and MinIO, Ceph, moto) answer every failed request that has a reply body with an XML
    error code; a web server or proxy that is not S3 answers with a page, which botocore can
    only turn into the bare HTTP status ('404').
    """
    if exc.operation_name in _BODILESS or not error_code(exc).isdigit():
        return None
    meta = exc.response.get("ResponseMetadata", {})
    content_type = meta.get("HTTPHeaders", {}).get("content-type", "none")
    return f"HTTP {meta.get('HTTPStatusCode', error_code(exc))}, Content-Type {content_type}"


def translate(exc: Exception, *, action: str, uri: str, endpoint: str | None) -> ArtifactError:
    """An `ArtifactError` for `exc`, raised while trying to `action` (a verb phrase) `uri`."""
    where = endpoint or "the default AWS endpoint"
    if isinstance(exc, ClientError):
        if (reply := _not_s3(exc)) is not None:
            return ArtifactError(
                f"cannot {action} {uri}: the endpoint {where} did not answer as S3 ({reply}): "
                "point it at the S3 API of the store (MinIO, Ceph, AWS)"
            )
        code = error_code(exc)
        if code == "NoSuchBucket":
            bucket = uri.removeprefix("s3://").split("/", 1)[0]
            return ArtifactError(f"cannot {action} {uri}: bucket {bucket!r} does not exist")
        if code in _MISSING_KEY:
            return ArtifactError(f"cannot {action} {uri}: no such artifact")
        if code in _DENIED:
            return ArtifactError(
                f"cannot {action} {uri}: access denied ({code}); check the credentials "
                "and the bucket policy"
            )
        if code in {"PreconditionFailed", "412"}:
            return ArtifactError(f"refusing to overwrite existing artifact {uri}")
        message = exc.response.get("Error", {}).get("Message", "") or str(exc)
        return ArtifactError(f"cannot {action} {uri}: {code}: {message}")
    if isinstance(exc, NoCredentialsError | PartialCredentialsError):
        return ArtifactError(
            f"cannot {action} {uri}: no S3 credentials (set AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY, AWS_PROFILE, or use a pod identity)"
        )
    if isinstance(exc, ConnectionError):
        return ArtifactError(
            f"cannot {action} {uri}: S3 endpoint {where} unreachable ({_reason(exc)})"
        )
    if isinstance(exc, HTTPClientError):
        return ArtifactError(
            f"cannot {action} {uri}: connection to {where} failed ({_reason(exc)})"
        )
    if isinstance(exc, BotoCoreError):
        return ArtifactError(f"cannot {action} {uri}: {exc}")
    if isinstance(exc, OSError):
        return ArtifactError(f"cannot {action} {uri}: {exc.strerror or exc}")
    return ArtifactError(f"cannot {action} {uri}: {exc}")


_REASONS: tuple[tuple[type[BotoCoreError], str], ...] = (
    (ConnectTimeoutError, "connect timed out"),
    (ReadTimeoutError, "read timed out"),
    (EndpointConnectionError, "could not connect"),
    (ConnectionClosedError, "connection closed before a response"),
    (ResponseStreamingError, "connection broke while reading the response"),
    (SSLError, "TLS handshake failed"),
)


def _reason(exc: BotoCoreError) -> str:
    """A short cause; botocore's own messages end in a long request URL full of upload ids."""
    for kind, reason in _REASONS:
        if isinstance(exc, kind):
            return reason
    return type(exc).__name__
