"""Small reference architectures, trained in a minute or less on two cores on the bundled
scikit-learn sets.

They feed the quickstart (`kompaktor init digits`) and the tests of every stage. They are
deliberately over-parameterized, so pruning, distillation, compression and quantization have
real weights to remove. The digits CNN (600 k parameters) does about 5 M multiply-adds per
image at full 8×8 resolution, nearly all of its ≈0.25 ms at batch 1 on one core; the digits
MLP's time is in its 2048-wide linear layers, the case for sparse kernels.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from kompaktor.data import Dataset, load_dataset
from kompaktor.training import fit

DIGITS_URI = "sklearn:digits"


class DigitsCNN(nn.Module):
    """(N, 1, 8, 8) → 10 logits: two 3×3 convolutions at full resolution, a pool, two linears."""

    def __init__(self, channels: tuple[int, int] = (64, 128), hidden: int = 256) -> None:
        super().__init__()
        c1, c2 = channels
        self.features = nn.Sequential(
            nn.Conv2d(1, c1, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(c1, c2, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(c2 * 4 * 4, hidden),
            nn.ReLU(),
            nn.Linear(hidden, 10),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))  # type: ignore[no-any-return]


class TabularMLP(nn.Module):
    """(N, features) → class logits with two hidden layers."""

    def __init__(self, features: int, classes: int, hidden: int = 128) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(features, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Linear(hidden, classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)  # type: ignore[no-any-return]


def train_digits_cnn(
    seed: int = 0,
    *,
    epochs: int = 8,
    dataset: Dataset | None = None,
    after_epoch: Callable[[nn.Module, int], None] | None = None,
) -> nn.Module:
    """A DigitsCNN trained on sklearn:digits (test accuracy ≈ 0.97–0.99), in eval mode.

    `after_epoch(model, epoch)` runs after each epoch with the model in eval mode, so a caller
    can report progress; it must not change the model (the weights stay those of the seed)."""
    data = dataset if dataset is not None else load_dataset(DIGITS_URI)
    torch.manual_seed(seed)
    model = DigitsCNN()

    def on_epoch(epoch: int, _loss: float) -> None:
        if after_epoch is not None:
            after_epoch(model, epoch)

    hook = on_epoch if after_epoch is not None else None
    return fit(model, data, epochs=epochs, lr=2e-3, batch_size=32, seed=seed, on_epoch=hook)


class DigitsMLP(nn.Module):
    """(N, 1, 8, 8) → 10 logits through wide linear layers, so almost all of its time is in
    them: the case `prune`'s `runtime: sparse` serves (the CNN's time is in convolutions)."""

    def __init__(self, hidden: int = 2048) -> None:
        super().__init__()
        self.flatten = nn.Flatten()
        self.mlp = TabularMLP(64, 10, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.flatten(x))  # type: ignore[no-any-return]


def train_digits_mlp(
    seed: int = 0, *, hidden: int = 2048, epochs: int = 8, dataset: Dataset | None = None
) -> nn.Module:
    """A DigitsMLP trained on sklearn:digits, in eval mode."""
    data = dataset if dataset is not None else load_dataset(DIGITS_URI)
    torch.manual_seed(seed)
    return fit(DigitsMLP(hidden), data, epochs=epochs, lr=1e-3, batch_size=32, seed=seed)


def train_tabular_mlp(dataset: Dataset, seed: int = 0, *, epochs: int = 30) -> nn.Module:
    """A TabularMLP trained on a tabular classification dataset (e.g. sklearn:breast_cancer)."""
    if dataset.num_classes is None:
        raise ValueError(f"train_tabular_mlp needs a classification dataset, not {dataset.name}")
    (x,) = dataset.inputs("train")
    torch.manual_seed(seed)
    model = TabularMLP(x.shape[1], dataset.num_classes)
    return fit(model, dataset, epochs=epochs, lr=1e-3, batch_size=32, seed=seed)
