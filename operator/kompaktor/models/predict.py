"""One way to run any model on numpy batches, whatever its format (CONTRACT STUB)."""

from __future__ import annotations

from typing import Protocol

import numpy as np

from kompaktor.models.io import LoadedModel


class Predictor(Protocol):
    """Runs a model on a batch of inputs (one array per model input) and returns its output."""

    def __call__(self, *inputs: np.ndarray) -> np.ndarray: ...


def predictor_for(model: LoadedModel, threads: int | None = None) -> Predictor:
    """torch (eval, no_grad) for pt2/TorchScript, ONNX Runtime CPU session for ONNX."""
    raise NotImplementedError
