"""Trained reference models shared by the model I/O tests (seeded, trained once per session)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from kompaktor.data import Dataset, load_dataset
from kompaktor.zoo import train_digits_cnn


@pytest.fixture(scope="session")
def digits() -> Dataset:
    return load_dataset("sklearn:digits")


@pytest.fixture(scope="session")
def digits_cnn(digits: Dataset) -> nn.Module:
    return train_digits_cnn(0, dataset=digits)


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
        return self.a(a) - 2 * self.b(b)


@pytest.fixture
def two_inputs() -> nn.Module:
    torch.manual_seed(0)
    return TwoInputs().eval()
