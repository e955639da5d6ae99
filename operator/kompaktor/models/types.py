"""What the rest of the code names a model by: a loaded model and the predictor protocol.

Light on purpose (no torch, no ONNX Runtime at import): the control plane and plan-time
validation use these names, and only stage execution loads the libraries (`kompaktor.models.io`,
`kompaktor.models.predict`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

from kompaktor.errors import StageError
from kompaktor.models.formats import ModelFormat

if TYPE_CHECKING:
    from torch import nn


@dataclass
class LoadedModel:
    """A model ready to run or transform.

    `module` is a trainable nn.Module for pt2 (ExportedProgram.module()) and TorchScript inputs,
    None for ONNX; `path` is the file it came from (ONNX stages work on the file itself).
    """

    format: ModelFormat
    path: Path
    module: nn.Module | None

    def require_module(self, stage: str) -> nn.Module:
        """The torch module, or a StageError saying that `stage` needs a PyTorch model."""
        if self.module is None:
            raise StageError(
                f"stage {stage!r} needs a PyTorch model (.pt2 or .pt), "
                f"but its input {self.path.name} is {self.format}"
            )
        return self.module


class Predictor(Protocol):
    """Runs a model on a batch of inputs (one array per model input) and returns its output."""

    def __call__(self, *inputs: np.ndarray) -> np.ndarray: ...
