"""Streaming sha256, so multi-gigabyte models are hashed without loading them into memory."""

from __future__ import annotations

import hashlib
from pathlib import Path

CHUNK_SIZE = 1024 * 1024
PREFIX = "sha256:"


def digest_bytes(data: bytes) -> str:
    """The "sha256:<hex>" of `data`."""
    return PREFIX + hashlib.sha256(data).hexdigest()


def digest_file(path: Path) -> str:
    """The "sha256:<hex>" of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(CHUNK_SIZE):
            h.update(chunk)
    return PREFIX + h.hexdigest()


def is_digest(value: str) -> bool:
    """Whether `value` looks like a digest this package writes."""
    hexpart = value.removeprefix(PREFIX)
    return (
        value.startswith(PREFIX)
        and len(hexpart) == 64
        and all(c in "0123456789abcdef" for c in hexpart)
    )
