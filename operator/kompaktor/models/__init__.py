"""Model files in and out: torch.export (.pt2), TorchScript (.pt) and ONNX (.onnx).

Nothing here unpickles: .pt2 goes through torch.export.load only after `pt2_archive` has checked
that it holds nothing torch would unpickle with weights_only=False or evaluate as Python (which
torch.export.load itself does wherever the archive asks), .pt through torch.jit.load, and plain
state dicts only through safetensors or torch.load(weights_only=True).

Importing this package is light (the control plane names formats and models without loading
any): the functions that need torch or ONNX Runtime are imported on first use (PEP 562).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from kompaktor.models.formats import ModelFormat, ModelFormatError, format_of
from kompaktor.models.types import LoadedModel, Predictor

if TYPE_CHECKING:
    from kompaktor.models.io import load_model, save_onnx, save_torch
    from kompaktor.models.predict import predictor_for

__all__ = [
    "LoadedModel",
    "ModelFormat",
    "ModelFormatError",
    "Predictor",
    "format_of",
    "load_model",
    "predictor_for",
    "save_onnx",
    "save_torch",
]

#: The names that need torch or ONNX Runtime, and the module that defines each.
_HEAVY = {
    "load_model": "kompaktor.models.io",
    "save_onnx": "kompaktor.models.io",
    "save_torch": "kompaktor.models.io",
    "predictor_for": "kompaktor.models.predict",
}

if not TYPE_CHECKING:  # mypy takes the names' types from the imports above, and flags others

    def __getattr__(name: str) -> Any:
        """Import a heavy name's module on first use, then keep the name here."""
        module = _HEAVY.get(name)
        if module is None:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        globals()[name] = value
        return value
