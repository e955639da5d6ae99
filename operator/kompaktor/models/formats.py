"""The three model formats a job may name, told apart by file extension (no torch needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from kompaktor.errors import KompaktorError

ModelFormat = Literal["pt2", "torchscript", "onnx"]

_EXTENSIONS: dict[str, ModelFormat] = {".pt2": "pt2", ".pt": "torchscript", ".onnx": "onnx"}


class ModelFormatError(KompaktorError, ValueError):
    """A model name whose extension is none of .pt2, .pt, .onnx (a spec error and a ValueError)."""


def format_of(path_or_uri: str | Path) -> ModelFormat:
    """The format named by a file extension (.pt2, .pt, .onnx); ModelFormatError otherwise."""
    name = str(path_or_uri).rstrip("/").rsplit("/", 1)[-1]
    suffix = Path(name).suffix.lower()
    try:
        return _EXTENSIONS[suffix]
    except KeyError:
        known = ", ".join(_EXTENSIONS)
        raise ModelFormatError(
            f"{path_or_uri}: unknown model format {suffix or '(no extension)'!r}; "
            f"use one of {known}"
        ) from None
