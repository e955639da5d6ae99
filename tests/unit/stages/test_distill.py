"""The distill stage: a teacher's soft targets must actually help, and bad setups fail clearly."""

# ruff: noqa: F811  (fixtures are imported from the shared support module)

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from prune_distill_support import (  # noqa: F401  (fixtures)
    DigitsCNN,
    accuracy,
    context,
    digits,
    digits_cnn,
    digits_cnn_state,
    digits_data,
    exported,
)
from torch import fx, nn

from kompaktor.data import Dataset
from kompaktor.errors import StageError
from kompaktor.stages.base import PlanContext
from kompaktor.stages.distill import DistillParams, DistillStage
from kompaktor.surgery import stored_elements


def noisy_subset(rows: int, noise: float) -> Dataset:
    """A small training set with a fraction of labels replaced at random: the regime where a
    good teacher's soft targets carry what the labels lack."""
    data = digits(rows)
    y = data.y["train"].copy()
    rng = np.random.default_rng(0)
    flip = rng.random(len(y)) < noise
    y[flip] = rng.integers(0, 10, int(flip.sum()))
    return dataclasses.replace(data, y={**data.y, "train": y})


def distill(
    params: dict[str, object],
    student: nn.Module,
    teacher: nn.Module,
    data: Dataset,
    tmp_path: Path,
    seed: int = 0,
) -> nn.Module:
    ctx = context(
        DistillParams.model_validate(params), student, data, tmp_path, reference=teacher, seed=seed
    )
    module: nn.Module = DistillStage().run(ctx).module
    return module


@pytest.mark.slow
def test_distillation_beats_the_same_student_without_a_teacher(
    digits_cnn: fx.GraphModule, digits_data: Dataset, tmp_path: Path
) -> None:
    data = noisy_subset(300, noise=0.4)
    budget = {
        "student": {"widthMultiplier": 0.5},
        "epochs": 30,
        "lr": 3e-3,
        "batchSize": 32,
        "temperature": 4.0,
    }
    scores: dict[float, list[float]] = {0.0: [], 0.9: []}
    for seed in range(3):
        for alpha in scores:  # alpha 0 is plain cross-entropy: the same run without a teacher
            torch.manual_seed(seed)
            student = distill(
                {**budget, "alpha": alpha}, exported(DigitsCNN()), digits_cnn, data, tmp_path, seed
            )
            scores[alpha].append(accuracy(student, digits_data))
    with_teacher, without = np.mean(scores[0.9]), np.mean(scores[0.0])
    assert with_teacher >= without + 0.02, scores
    assert min(scores[0.9]) > max(scores[0.0]) - 0.02, scores


def test_width_multiplier_derives_a_smaller_student(
    digits_cnn: fx.GraphModule, digits_data: Dataset, tmp_path: Path
) -> None:
    before = stored_elements(digits_cnn)
    ctx = context(
        DistillParams.model_validate({"student": {"widthMultiplier": 0.25}, "epochs": 1}),
        digits_cnn,
        digits_data,
        tmp_path,
    )
    result = DistillStage().run(ctx)
    assert result.module.conv1.weight.shape[0] == 4
    assert result.metrics["parametersStudent"] < 0.15 * before
    assert result.metrics["parametersTeacher"] == before
    assert digits_cnn.conv1.weight.shape[0] == 16  # the teacher (same input) is untouched


def test_teacher_and_student_output_shapes_must_match(
    digits_cnn: fx.GraphModule, digits_data: Dataset, tmp_path: Path
) -> None:
    teacher = nn.Sequential(nn.Flatten(), nn.Linear(64, 5))
    ctx = context(DistillParams(), digits_cnn, digits_data, tmp_path, reference=teacher)
    with pytest.raises(StageError, match=r"params\.teacher: .*\(8, 5\) .*\(8, 10\)"):
        DistillStage().run(ctx)


def test_from_stage_without_a_filled_uri_is_an_error(
    digits_cnn: fx.GraphModule, digits_data: Dataset, tmp_path: Path
) -> None:
    params = DistillParams.model_validate({"teacher": {"fromStage": "prune"}})
    ctx = context(params, digits_cnn, digits_data, tmp_path)
    with pytest.raises(StageError, match=r"fromStage: 'prune' has no output URI"):
        DistillStage().run(ctx)


def test_from_stage_must_name_an_earlier_stage() -> None:
    params = DistillParams.model_validate({"teacher": {"fromStage": "later"}})
    with pytest.raises(ValueError, match=r"params\.teacher\.fromStage: 'later' is not an earlier"):
        DistillStage().check(params, PlanContext("distill", "pt2", ("train",), "classification"))
    DistillStage().check(
        params, PlanContext("distill", "pt2", ("train", "later"), "classification")
    )


@pytest.mark.parametrize(
    ("field", "value"),
    [("temperature", 0), ("alpha", 1.5), ("student", {"widthMultiplier": 0})],
)
def test_bad_params_are_rejected(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=field):
        DistillParams.model_validate({field: value})
