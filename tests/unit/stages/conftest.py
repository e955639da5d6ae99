"""Small real models shared by the stage tests, trained once per session (seeded, seconds).

`digits_cnn_pt2` is a trained digits CNN, `digits_cnn_raw_pt2` the same architecture untrained
(for "training improves it"), `digits_cnn_small_pt2` a narrower trained one (for size ratios),
`cancer_mlp_pt2` a trained breast-cancer MLP. `stage_context` builds the StageContext the runner
would, so a technique can be tested without the runner.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from kompaktor.data import Dataset, load_dataset
from kompaktor.models import load_model, save_torch
from kompaktor.stages.base import StageContext, StageParams
from kompaktor.training import as_tensors, fit


class DigitsCNN(nn.Module):
    def __init__(self, width: int = 8) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, width, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.fc1 = nn.Linear(width * 16, 32)
        self.fc2 = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(torch.relu(self.conv(x))).flatten(1)
        out: torch.Tensor = self.fc2(torch.relu(self.fc1(x)))
        return out


def cancer_mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(30, 16), nn.ReLU(), nn.Linear(16, 2))


def export(module: nn.Module, dataset: Dataset, path: Path) -> Path:
    example = as_tensors([x[:4] for x in dataset.inputs("test")])
    return save_torch(module.eval(), example, path)


def train_and_export(module: nn.Module, dataset: Dataset, path: Path, epochs: int) -> Path:
    torch.manual_seed(0)
    if epochs:
        fit(module, dataset, epochs=epochs, lr=1e-2, batch_size=32, seed=0)
    return export(module, dataset, path)


@pytest.fixture(scope="session")
def digits() -> Dataset:
    return load_dataset("sklearn:digits")


@pytest.fixture(scope="session")
def cancer() -> Dataset:
    return load_dataset("sklearn:breast_cancer")


@pytest.fixture(scope="session")
def stage_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("stage-models")


@pytest.fixture(scope="session")
def digits_cnn_pt2(stage_models: Path, digits: Dataset) -> Path:
    torch.manual_seed(0)
    return train_and_export(DigitsCNN(), digits, stage_models / "cnn.pt2", epochs=4)


@pytest.fixture(scope="session")
def digits_cnn_raw_pt2(stage_models: Path, digits: Dataset) -> Path:
    torch.manual_seed(1)
    return train_and_export(DigitsCNN(), digits, stage_models / "cnn-raw.pt2", epochs=0)


@pytest.fixture(scope="session")
def digits_cnn_small_pt2(stage_models: Path, digits: Dataset) -> Path:
    torch.manual_seed(0)
    return train_and_export(DigitsCNN(width=2), digits, stage_models / "cnn-small.pt2", epochs=2)


@pytest.fixture(scope="session")
def cancer_mlp_pt2(stage_models: Path, cancer: Dataset) -> Path:
    torch.manual_seed(0)
    return train_and_export(cancer_mlp(), cancer, stage_models / "mlp.pt2", epochs=5)


ContextFactory = Callable[..., StageContext[Any]]


@pytest.fixture
def stage_context(tmp_path: Path) -> ContextFactory:
    """make(params, model_path, dataset, reference=None, metric="accuracy", seed=0)."""

    def make(
        params: StageParams,
        model_path: Path,
        dataset: Dataset,
        reference: Path | None = None,
        metric: str = "accuracy",
        seed: int = 0,
    ) -> StageContext[Any]:
        work = tmp_path / "work"
        work.mkdir(exist_ok=True)
        return StageContext(
            params=params,
            model=load_model(model_path),
            dataset=dataset,
            work_dir=work,
            seed=seed,
            metric=metric,
            reference=load_model(reference or model_path),
            resolve=Path,
            log=lambda text: None,
        )

    return make
