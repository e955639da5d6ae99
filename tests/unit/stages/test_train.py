"""The train stage fine-tunes an exported model: better with training, same for a seed."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from kompaktor.data import Dataset
from kompaktor.errors import JobSpecError
from kompaktor.evaluate import metric
from kompaktor.models import predictor_for
from kompaktor.models.io import LoadedModel
from kompaktor.stages.base import StageContext
from kompaktor.stages.train import TrainParams, TrainStage
from kompaktor.stages.validate import parse_params

ContextFactory = Callable[..., StageContext[Any]]


def accuracy(module: object, digits: Dataset) -> float:
    model = LoadedModel(format="pt2", path=Path("unused.pt2"), module=module)  # type: ignore[arg-type]
    return metric("accuracy", predictor_for(model), digits)


def test_train_improves_an_undertrained_model(
    stage_context: ContextFactory, digits_cnn_raw_pt2: Path, digits: Dataset
) -> None:
    ctx = stage_context(TrainParams(epochs=2, lr=1e-2, batch_size=32), digits_cnn_raw_pt2, digits)
    before = accuracy(ctx.model.module, digits)
    result = TrainStage().run(ctx)
    after = accuracy(result.module, digits)
    assert before < 0.3
    assert after > 0.8
    assert result.metrics["epochs"] == 2.0
    assert result.metrics["finalLoss"] == result.details["losses"][-1] < result.details["losses"][0]


def test_train_is_deterministic_with_a_seed(
    stage_context: ContextFactory, cancer_mlp_pt2: Path, cancer: Dataset
) -> None:
    def outputs(seed: int) -> np.ndarray:
        params = TrainParams(epochs=1, lr=1e-2, batch_size=16, seed=seed)
        module = TrainStage().run(stage_context(params, cancer_mlp_pt2, cancer)).module
        model = LoadedModel(format="pt2", path=Path("m.pt2"), module=module)
        return predictor_for(model)(*cancer.inputs("test"))

    first, again, other = outputs(3), outputs(3), outputs(4)
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)


def test_l1_param_lowers_weight_norm(
    stage_context: ContextFactory, cancer_mlp_pt2: Path, cancer: Dataset
) -> None:
    def norm(l1: float) -> float:
        params = TrainParams(epochs=2, lr=1e-2, batch_size=16, l1=l1)
        module = TrainStage().run(stage_context(params, cancer_mlp_pt2, cancer)).module
        return float(sum(p.detach().abs().sum() for p in module.parameters()))

    assert norm(1e-3) < 0.9 * norm(0.0)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"lr": 0}, "stage (train): params.lr: Input should be greater than 0"),
        ({"epochs": 0}, "stage (train): params.epochs: Input should be greater than or equal to 1"),
        ({"optimizer": "rmsprop"}, "params.optimizer: must be one of adam, adamw, sgd"),
        ({"learningRate": 0.1}, "params.learningRate: train has no param 'learningRate'"),
        # pydantic's lax mode would read these as 1 epoch and a learning rate of 0.0
        ({"epochs": True}, "stage (train): params.epochs: must be a number, not a boolean"),
        ({"momentum": False}, "stage (train): params.momentum: must be a number, not a boolean"),
        ({"seed": True}, "stage (train): params.seed: must be a number, not a boolean"),
    ],
)
def test_bad_params_name_the_field(params: dict[str, object], message: str) -> None:
    with pytest.raises(JobSpecError) as caught:
        parse_params("train", params, where="stage (train)")
    assert message in str(caught.value)


def test_params_are_camel_case() -> None:
    parsed = parse_params("train", {"batchSize": 8, "weightDecay": 1e-4}, where="x")
    assert isinstance(parsed, TrainParams)
    assert (parsed.batch_size, parsed.weight_decay) == (8, 1e-4)


def test_a_number_in_a_string_is_still_a_number() -> None:
    parsed = parse_params("train", {"epochs": "2", "lr": "0.01"}, where="x")
    assert isinstance(parsed, TrainParams)
    assert (parsed.epochs, parsed.lr) == (2, 0.01)
