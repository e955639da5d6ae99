"""Load and save models in the three formats a job may name (CONTRACT STUB: to be implemented)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from torch import nn

ModelFormat = Literal["pt2", "torchscript", "onnx"]


def format_of(path_or_uri: str | Path) -> ModelFormat:
    """The format named by a file extension (.pt2, .pt, .onnx); JobSpecError-style ValueError otherwise."""
    raise NotImplementedError


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
        raise NotImplementedError


def load_model(path: Path) -> LoadedModel:
    """Load a model file safely; raises KompaktorError naming the file if it is corrupt."""
    raise NotImplementedError


def save_torch(module: nn.Module, example_inputs: tuple[torch.Tensor, ...], path: Path) -> Path:
    """Export with torch.export (dynamic batch dimension) and save as .pt2; returns the path."""
    raise NotImplementedError


def save_onnx(module: nn.Module, example_inputs: tuple[torch.Tensor, ...], path: Path) -> Path:
    """Export to ONNX with a dynamic batch dimension; returns the path."""
    raise NotImplementedError
