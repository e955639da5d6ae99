"""Trained reference models shared by the model I/O tests (seeded, trained once per session)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from kompaktor.data import Dataset, load_dataset
from kompaktor.models import save_torch
from kompaktor.zoo import train_digits_cnn

#: the export example: batch 2, a size the tests never predict on
EXAMPLE = (torch.zeros(2, 1, 8, 8),)


@pytest.fixture(scope="session")
def digits() -> Dataset:
    return load_dataset("sklearn:digits")


@pytest.fixture(scope="session")
def digits_cnn(digits: Dataset) -> nn.Module:
    """Trained briefly: the I/O tests need real weights, not peak accuracy."""
    return train_digits_cnn(0, epochs=3, dataset=digits)


@pytest.fixture(scope="session")
def digits_batch(digits: Dataset) -> np.ndarray:
    """Seven real test images (an odd batch size, not the export example's)."""
    return digits.inputs("test")[0][:7]


class TwoInputs(nn.Module):
    """A model with two inputs of different widths, to check input order survives export."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(3, 4)
        self.b = nn.Linear(5, 4)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self.a(a) - 2 * self.b(b)  # type: ignore[no-any-return]


@pytest.fixture
def two_inputs() -> nn.Module:
    torch.manual_seed(0)
    return TwoInputs().eval()


@pytest.fixture(scope="session")
def saved_digits_cnn(
    digits_cnn: nn.Module, tmp_path_factory: pytest.TempPathFactory
) -> Callable[[str], Path]:
    """`saved_digits_cnn("model.onnx")`: the trained CNN saved once per file name, read-only."""
    folder = tmp_path_factory.mktemp("saved")
    cache: dict[str, Path] = {}

    def saved(filename: str) -> Path:
        if filename not in cache:
            cache[filename] = save_torch(digits_cnn, EXAMPLE, folder / filename)
        return cache[filename]

    return saved


@pytest.fixture
def example() -> tuple[torch.Tensor, ...]:
    """Export example inputs for the digits CNN."""
    return EXAMPLE
