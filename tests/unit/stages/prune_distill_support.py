"""Shared by the prune and distill stage tests: digits data, a small CNN, stage contexts.

Fixtures are session-scoped so the digits CNN is trained once for both test files.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from torch import fx, nn

from kompaktor.data import Dataset
from kompaktor.models import LoadedModel
from kompaktor.stages.base import StageContext, StageParams


class DigitsCNN(nn.Module):
    """conv-bn-relu, conv-relu, pool, flatten, fc-relu, fc: every structure the surgery
    follows (batch norm, pooling, flatten into a linear layer)."""

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, width, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, 2 * width, 3, padding=1)
        self.fc1 = nn.Linear(2 * width * 16, 64)
        self.fc2 = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.max_pool2d(torch.relu(self.conv2(x)), 2)
        return self.fc2(torch.relu(self.fc1(x.flatten(1))))


def digits(train_rows: int | None = None) -> Dataset:
    """sklearn digits as (N, 1, 8, 8) in [0, 1], split 60/20/20 with a fixed seed."""
    data = load_digits()
    x = (data.images / 16.0).astype(np.float32)[:, None]
    y = data.target.astype(np.int64)
    order = np.random.default_rng(0).permutation(len(y))
    a, b = int(0.6 * len(y)), int(0.8 * len(y))
    parts = {"train": order[:a], "val": order[a:b], "test": order[b:]}
    if train_rows is not None:
        parts["train"] = parts["train"][:train_rows]
    return Dataset(
        name="digits",
        task="classification",
        x={split: (x[rows],) for split, rows in parts.items()},  # type: ignore[misc]
        y={split: y[rows] for split, rows in parts.items()},  # type: ignore[misc]
        num_classes=10,
    )


def exported(module: nn.Module) -> fx.GraphModule:
    """What the runner hands a stage for a .pt2 input: ExportedProgram.module(), trainable."""
    example = (torch.zeros(4, 1, 8, 8),)
    program = torch.export.export(
        module.eval(), example, dynamic_shapes=({0: torch.export.Dim.AUTO},)
    )
    gm = program.module()
    for name in ("train", "eval"):  # export blocks mode switches; the loader lifts that
        gm.__dict__.pop(name, None)
    return gm


def accuracy(module: nn.Module, dataset: Dataset, split: str = "test") -> float:
    with torch.no_grad():
        logits = module(torch.as_tensor(dataset.x[split][0]))  # type: ignore[index]
    return float((logits.argmax(1).numpy() == dataset.y[split]).mean())  # type: ignore[index]


class _Loaded(LoadedModel):
    """A loaded .pt2 whose module is given (the stage tests skip the file round trip)."""

    def require_module(self, stage: str) -> nn.Module:
        assert self.module is not None
        return self.module


def context(
    params: StageParams,
    module: nn.Module,
    dataset: Dataset,
    tmp_path: Path,
    *,
    reference: nn.Module | None = None,
    resolve: Callable[[str], Path] | None = None,
    seed: int = 0,
) -> StageContext[Any]:
    model = _Loaded(format="pt2", path=tmp_path / "in.pt2", module=module)
    ref = _Loaded(format="pt2", path=tmp_path / "ref.pt2", module=reference or module)
    return StageContext(
        params=params,
        model=model,
        dataset=dataset,
        work_dir=tmp_path,
        seed=seed,
        metric="accuracy",
        reference=ref,
        resolve=resolve or (lambda uri: Path(uri.removeprefix("file://"))),
        log=lambda line: None,
    )


def no_training(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make any training fail loudly: the error under test must come before any work."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("training started")

    monkeypatch.setattr("kompaktor.training.fit", refuse)
    monkeypatch.setattr("kompaktor.surgery.width_reduce", refuse)


def train(module: nn.Module, dataset: Dataset, epochs: int, seed: int = 0) -> nn.Module:
    from kompaktor.training import fit

    torch.manual_seed(seed)
    return fit(module, dataset, epochs=epochs, lr=3e-3, batch_size=32, seed=seed)


@pytest.fixture(scope="session")
def digits_data() -> Dataset:
    return digits()


@pytest.fixture(scope="session")
def digits_cnn_state(digits_data: Dataset) -> dict[str, torch.Tensor]:
    """A trained DigitsCNN's weights (each test builds its own copy from them)."""
    torch.manual_seed(0)
    model = train(DigitsCNN(), digits_data, epochs=8)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.fixture
def digits_cnn(digits_cnn_state: dict[str, torch.Tensor]) -> fx.GraphModule:
    """A fresh exported copy of the trained digits CNN."""
    model = DigitsCNN()
    model.load_state_dict(digits_cnn_state)
    return exported(model)
