"""Model files in and out: torch.export (.pt2), TorchScript (.pt) and ONNX (.onnx).

Nothing here unpickles: .pt2 goes through torch.export.load, .pt through torch.jit.load, and
plain state dicts only through safetensors or torch.load(weights_only=True).
"""

from kompaktor.models.io import (
    LoadedModel,
    ModelFormat,
    format_of,
    load_model,
    save_onnx,
    save_torch,
)
from kompaktor.models.predict import Predictor, predictor_for

__all__ = [
    "LoadedModel",
    "ModelFormat",
    "Predictor",
    "format_of",
    "load_model",
    "predictor_for",
    "save_onnx",
    "save_torch",
]
