"""The model file a stage run writes: no dataset rows inside it, and no growth from saving a
model the stage did not change."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from kompaktor.api.run import LOG_FILE, RESULT_FILE, RunRecord
from kompaktor.data import Dataset, load_dataset
from kompaktor.models import load_model, predictor_for, save_torch
from kompaktor.stages.base import StageContext, StageResult
from kompaktor.stages.compress import CompressStage
from kompaktor.stages.runner import StageRequest, run_stage
from kompaktor.stages.train import TrainStage

TRAIN = {"epochs": 1, "lr": 0.01, "batchSize": 32}
VOCABULARY = 20


class TokenClassifier(nn.Module):
    """Integer inputs: token ids that index an embedding, so they must stay in range."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCABULARY, 8)
        self.head = nn.Linear(8, 2)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.head(self.embed(tokens).mean(1))
        return out


@pytest.fixture(scope="module")
def tokens_job(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A token-id dataset (.npz) and an untrained model for it, saved as .pt2."""
    folder = tmp_path_factory.mktemp("tokens")
    rng = np.random.default_rng(0)
    splits: dict[str, np.ndarray] = {}
    for split, rows in (("train", 96), ("test", 32)):
        x = rng.integers(0, VOCABULARY, size=(rows, 6), dtype=np.int64)
        splits |= {f"x_{split}": x, f"y_{split}": (x[:, 0] < VOCABULARY // 2).astype(np.int64)}
    data = folder / "tokens.npz"
    np.savez(data, **splits)  # type: ignore[arg-type]
    torch.manual_seed(0)
    example = (torch.as_tensor(splits["x_test"][:4]),)
    return save_torch(TokenClassifier().eval(), example, folder / "model.pt2"), str(data)


def _run(monkeypatch: pytest.MonkeyPatch, model: Path, dataset: str, out: Path) -> nn.Module:
    """Train one epoch through the real runner; returns the module the stage handed over."""
    handed: list[nn.Module] = []
    train = TrainStage.run

    def keep(self: TrainStage, ctx: StageContext[Any]) -> StageResult:
        result = train(self, ctx)
        handed.append(result.module)
        return result

    monkeypatch.setattr(TrainStage, "run", keep)
    request = StageRequest(type="train", input=str(model), dataset=dataset, output=str(out),
                           params=TRAIN)  # fmt: skip
    run_stage(request)
    return handed[0]


def _dataset_rows(dataset: Dataset) -> np.ndarray:
    splits = [dataset.inputs(s)[0] for s in ("train", "val", "test") if len(dataset.targets(s))]
    return np.concatenate(splits).reshape(sum(len(x) for x in splits), -1)


@pytest.mark.parametrize("job", ["float", "integer"])
def test_a_saved_model_holds_no_dataset_row_and_predicts_as_the_stage_module(
    cancer_mlp_pt2: Path, tokens_job: tuple[Path, str], tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch, job: str,
) -> None:  # fmt: skip
    model, uri = (cancer_mlp_pt2, "sklearn:breast_cancer") if job == "float" else tokens_job
    dataset = load_dataset(uri)
    module = _run(monkeypatch, model, uri, tmp_path / "run")
    saved = tmp_path / "run" / "model.pt2"
    (stored,), _ = torch.export.load(saved).example_inputs
    rows = _dataset_rows(dataset)
    assert stored.dtype == torch.as_tensor(rows).dtype
    for example in stored.reshape(len(stored), -1).numpy():
        assert not (rows == example).all(axis=1).any()
    x = dataset.inputs("test")[0]
    with torch.no_grad():
        want = module(torch.as_tensor(x)).numpy()
    np.testing.assert_array_equal(predictor_for(load_model(saved))(x), want)


def test_a_stage_that_changes_nothing_does_not_grow_the_file_or_warn(
    cancer_mlp_pt2: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Saving an unchanged model again grew it (deeper module keys, 8 traced rows stored where
    the input held 4): a compress stage that changed nothing warned it made the model larger."""

    def unchanged(self: CompressStage, ctx: StageContext[Any]) -> StageResult:
        return StageResult(module=ctx.model.module)

    monkeypatch.setattr(CompressStage, "run", unchanged)
    out = tmp_path / "run"
    request = StageRequest(type="compress", input=str(cancer_mlp_pt2),
                           dataset="sklearn:breast_cancer", output=str(out), params={})  # fmt: skip
    run_stage(request)
    metrics = RunRecord.model_validate_json((out / RESULT_FILE).read_text()).metrics
    assert metrics["sizeBytes"] <= metrics["sizeBytesInput"]
    assert "made the model larger" not in (out / LOG_FILE).read_text()
