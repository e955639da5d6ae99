"""The distill stage: a teacher's soft targets (and hidden features) must actually help, and
bad setups fail clearly, before any training."""

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
    no_training,
)
from torch import fx, nn

from kompaktor.api.spec import OptimizationJobSpec
from kompaktor.data import Dataset
from kompaktor.errors import JobSpecError, StageError
from kompaktor.models import save_torch
from kompaktor.stages.base import PlanContext
from kompaktor.stages.distill import DistillParams, DistillStage
from kompaktor.stages.validate import parse_params, validate_job
from kompaktor.surgery import stored_elements, width_reduce
from kompaktor.surgery.features import feature_view, hidden_layers


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


@pytest.mark.parametrize(
    ("model", "multiplier", "message"),
    [
        (nn.Sequential(nn.Flatten(), nn.Linear(64, 10)), 0.5, "no layer has removable channels"),
        (
            nn.Sequential(nn.Flatten(), nn.Linear(64, 8), nn.ReLU(), nn.Linear(8, 10)),
            0.95,  # round(8 * 0.95) is 8
            "0.95 keeps every channel",
        ),
    ],
    ids=["nothing-removable", "nothing-removed"],
)
def test_a_width_multiplier_that_removes_nothing_is_an_error(
    digits_data: Dataset,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    model: nn.Module,
    multiplier: float,
    message: str,
) -> None:
    """It logged "0 fewer channels" and distilled into a full-width "student"."""
    monkeypatch.setattr("kompaktor.training.fit", lambda *a, **k: pytest.fail("trained"))
    params = DistillParams.model_validate({"student": {"widthMultiplier": multiplier}})
    ctx = context(params, model, digits_data, tmp_path)
    with pytest.raises(StageError, match=f"distill: params.student.widthMultiplier: .*{message}"):
        DistillStage().run(ctx)


def test_teacher_and_student_output_shapes_must_match(
    digits_cnn: fx.GraphModule,
    digits_data: Dataset,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    no_training(monkeypatch)
    teacher = nn.Sequential(nn.Flatten(), nn.Linear(64, 5))
    params = DistillParams.model_validate({"student": {"widthMultiplier": 0.5}})
    ctx = context(params, digits_cnn, digits_data, tmp_path, reference=teacher)
    with pytest.raises(StageError, match=r"distill: params\.teacher: .*\(8, 5\) .*\(8, 10\)"):
        DistillStage().run(ctx)


def hidden_distance(student: nn.Module, teacher: nn.Module, data: Dataset) -> list[float]:
    """Per hidden layer: MSE between student and teacher outputs, relative to the teacher's
    mean square (0: the student reproduces the teacher's features)."""
    x = torch.as_tensor(data.x["test"][0])  # type: ignore[index]
    names = [layer.name for layer in hidden_layers(teacher, (x[:8],))]
    with torch.no_grad():
        _, *t = feature_view(teacher, names)(x)  # type: ignore[arg-type]
        _, *s = feature_view(student, names)(x)  # type: ignore[arg-type]
    return [float((a - b).pow(2).mean() / b.pow(2).mean()) for a, b in zip(s, t, strict=True)]


def test_feature_matching_pulls_the_students_hidden_features_to_the_teachers(
    digits_cnn: fx.GraphModule, digits_data: Dataset, tmp_path: Path
) -> None:
    data = digits(400)
    base = {"epochs": 3, "lr": 3e-3, "batchSize": 32}
    runs = {}
    for weight in (0.0, 1.0):
        torch.manual_seed(1)  # the same untrained student both times
        ctx = context(
            DistillParams.model_validate({**base, "featureWeight": weight}),
            exported(DigitsCNN()),
            data,
            tmp_path,
            reference=digits_cnn,
        )
        runs[weight] = DistillStage().run(ctx)
    without = hidden_distance(runs[0.0].module, digits_cnn, digits_data)
    with_features = hidden_distance(runs[1.0].module, digits_cnn, digits_data)
    closer = [w / o for w, o in zip(with_features, without, strict=True)]
    assert max(closer) < 0.9 and sum(closer) / len(closer) < 0.7, (with_features, without)
    pairs = runs[1.0].details["featurePairs"]
    assert [(p["teacher"], p["student"], p["projection"]) for p in pairs] == [
        ("conv1", "conv1", False),
        ("conv2", "conv2", False),
        ("fc1", "fc1", False),
    ]
    assert runs[1.0].metrics["featurePairs"] == 3
    assert "featurePairs" not in runs[0.0].details
    assert accuracy(runs[1.0].module, digits_data) > 0.8  # and it still learned the task


def test_a_thinner_student_learns_projections_that_are_not_exported(
    digits_cnn: fx.GraphModule, digits_data: Dataset, tmp_path: Path
) -> None:
    data = digits(300)
    results = {}
    for weight in (0.0, 1.0):
        params = {"student": {"widthMultiplier": 0.5}, "epochs": 1, "featureWeight": weight}
        ctx = context(DistillParams.model_validate(params), digits_cnn, data, tmp_path)
        results[weight] = DistillStage().run(ctx)
    pairs = results[1.0].details["featurePairs"]
    assert [(p["student"], p["width"], p["projection"]) for p in pairs] == [
        ("conv1", [8, 16], True),
        ("conv2", [16, 32], True),
        ("fc1", [32, 64], True),
    ]
    student, plain = results[1.0].module, results[0.0].module
    shapes = {k: v.shape for k, v in student.state_dict().items()}
    assert shapes == {k: v.shape for k, v in plain.state_dict().items()}  # nothing added
    assert not torch.equal(student.get_parameter("fc1.weight"), plain.get_parameter("fc1.weight"))
    x = torch.as_tensor(digits_data.x["test"][0][:8])  # type: ignore[index]
    program = torch.export.load(save_torch(student, (x,), tmp_path / "student.pt2"))
    assert sum(v.numel() for v in program.state_dict.values()) == stored_elements(plain)


def test_feature_matching_that_matches_nothing_fails_before_training(
    digits_cnn: fx.GraphModule,
    digits_data: Dataset,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    no_training(monkeypatch)
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    ctx = context(
        DistillParams.model_validate({"featureWeight": 1.0}),
        digits_cnn,
        digits_data,
        tmp_path,
        reference=mlp,
    )
    with pytest.raises(
        StageError,
        match=r"distill: params\.featureWeight: no teacher/student layer pair can be matched "
        r"\(1 ↔ conv1: output shapes \(8, 32\) and \(8, 16, 8, 8\) have different layouts\)",
    ):
        DistillStage().run(ctx)
    params = {"featureWeight": 1.0, "featureProjection": False, "student": {"widthMultiplier": 0.5}}
    ctx = context(DistillParams.model_validate(params), digits_cnn, digits_data, tmp_path)
    monkeypatch.setattr("kompaktor.surgery.width_reduce", width_reduce)
    with pytest.raises(StageError, match=r"widths 8 and 16 differ and featureProjection is false"):
        DistillStage().run(ctx)


def test_named_feature_layers_must_exist(
    digits_cnn: fx.GraphModule, digits_data: Dataset, tmp_path: Path
) -> None:
    params = {"featureWeight": 1.0, "featureLayers": [{"teacher": "fc1", "student": "fc2"}]}
    ctx = context(DistillParams.model_validate(params), digits_cnn, digits_data, tmp_path)
    with pytest.raises(
        StageError,
        match=r"params\.featureLayers\[0\]\.student: 'fc2' is not a hidden conv/linear layer "
        r"of the student \(hidden layers: conv1, conv2, fc1\)",
    ):
        DistillStage().run(ctx)


def test_feature_matching_is_refused_at_validation_for_torchscript() -> None:
    spec = OptimizationJobSpec.model_validate(
        {
            "model": {"uri": "file:///m/model.pt"},
            "dataset": {"uri": "sklearn:digits"},
            "stages": [{"name": "d", "type": "distill", "params": {"featureWeight": 0.5}}],
        }
    )
    with pytest.raises(JobSpecError) as error:
        validate_job(spec)
    assert (
        "stage 'd' (spec.stages[0], distill): params.featureWeight: hidden-feature matching reads"
        in str(error.value)
    )
    assert "needs a pt2 student (got torchscript)" in str(error.value)
    teacher = DistillParams.model_validate({"featureWeight": 1, "teacher": {"uri": "s3://t.pt"}})
    with pytest.raises(ValueError, match=r"params\.featureWeight: .*pt2 teacher \(got torchscript"):
        DistillStage().check(teacher, PlanContext("d", "pt2", (), "classification"))


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


BOTH = {"uri": "teacher.pt2", "fromStage": "t"}
HPO_OVER_DISTILL = {
    "target": "distill",
    "trials": 2,
    "base": {"teacher": BOTH},
    "space": {"lr": {"low": 1e-4, "high": 1e-2}},
}


@pytest.mark.parametrize(
    ("stage", "message"),
    [
        (
            {"name": "d", "type": "distill", "params": {"teacher": BOTH}},
            "stage 'd' (spec.stages[1], distill): params.teacher: set either uri or fromStage, "
            "not both",
        ),
        (
            {"name": "h", "type": "hpo", "params": HPO_OVER_DISTILL},
            "stage 'h' (spec.stages[1], hpo): params.target (distill): params.teacher: "
            "set either uri or fromStage, not both",
        ),
    ],
    ids=["distill", "hpo-base"],
)
def test_a_teacher_with_both_uri_and_from_stage_is_rejected(
    stage: dict[str, object], message: str
) -> None:
    """Which teacher was meant is ambiguous; the plan used to overwrite the uri silently."""
    spec = OptimizationJobSpec.model_validate(
        {
            "model": {"uri": "file:///m/model.pt2"},
            "dataset": {"uri": "sklearn:digits"},
            "stages": [{"name": "t", "type": "train"}, stage],
        }
    )
    with pytest.raises(JobSpecError) as error:
        validate_job(spec)
    assert str(error.value).startswith(message)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"temperature": 0}, "params.temperature: "),
        ({"alpha": 1.5}, "params.alpha: "),
        ({"student": {"widthMultiplier": 0}}, "params.student.widthMultiplier: "),
        ({"featureWeight": -1}, "params.featureWeight: "),
        (
            {"featureLayers": [{"teacher": "fc1", "student": "fc1"}]},
            "params.featureLayers: only applies when featureWeight > 0",
        ),
    ],
)
def test_bad_params_are_rejected(params: dict[str, object], message: str) -> None:
    with pytest.raises(JobSpecError) as error:
        parse_params("distill", params, "stages[1] (distill)")
    assert str(error.value).startswith(f"stages[1] (distill): {message}")


def test_distillation_reports_the_students_validation_curve_and_stops_when_pruned(
    digits_cnn: fx.GraphModule, digits_data: Dataset, tmp_path: Path
) -> None:
    from kompaktor.stages.base import Curve

    params = DistillParams.model_validate({"epochs": 3, "student": {"widthMultiplier": 0.5}})
    ctx = context(params, digits_cnn, digits_data, tmp_path, reference=digits_cnn)
    DistillStage().run(ctx)
    assert len(ctx.curve.points) == 3 and all(0.0 <= v <= 1.0 for v in ctx.curve.points)
    assert not ctx.curve.pruned
    lines: list[str] = []
    stopped = dataclasses.replace(ctx, curve=Curve(prune=lambda value: True), log=lines.append)
    DistillStage().run(stopped)  # a pruner that says stop at once: one point, then no training
    assert len(stopped.curve.points) == 1 and stopped.curve.pruned
    trained = [line.split(":")[0] for line in lines if line.startswith("epoch ")]
    assert trained == ["epoch 1/3"]  # fit logs each epoch it trains: none after the pruned one
