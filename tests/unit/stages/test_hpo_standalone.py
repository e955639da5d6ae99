"""Real training under HPO: the validation curve, pruning that stops bad trials early, and
`kompaktor stage run --type hpo` running the whole search in one process."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from optuna.trial import TrialState
from tests.unit.stages.conftest import ContextFactory

from kompaktor.api.run import EXIT_INVALID, EXIT_OK, RESULT_FILE, RunFailure, RunRecord
from kompaktor.api.status import TrialRecord
from kompaktor.cli import build_parser
from kompaktor.data import Dataset, load_dataset
from kompaktor.models import load_model
from kompaktor.search import Observed, rebuild, sampler_for
from kompaktor.stages.hpo_params import HpoParams, distributions
from kompaktor.stages.train import TrainParams, TrainStage

pytestmark = pytest.mark.slow

EPOCHS = 4
#: lr up to 3 with Adam wrecks the breast-cancer MLP: a clearly bad region of the space
SEARCH: dict[str, Any] = {
    "target": "train",
    "sampler": "random",
    "trials": 8,
    "parallelism": 2,
    "seed": 1,
    "base": {"epochs": EPOCHS, "batchSize": 32},
    "space": {"lr": {"low": 1e-3, "high": 3.0, "log": True}},
}


def stage_run(model: Path, output: Path, params: dict[str, Any], *extra: str) -> int:
    argv = ["stage", "run", "--type", "hpo", "--params", json.dumps(params),
            "--input", str(model), "--dataset", "sklearn:breast_cancer",
            "--output", output.as_uri(), *extra]  # fmt: skip
    args = build_parser().parse_args(argv)
    code: int = args.handler(args)
    return code


def trials_of(output: Path) -> tuple[RunRecord, list[TrialRecord]]:
    record = RunRecord.model_validate_json((output / RESULT_FILE).read_text())
    trials = [TrialRecord(stage="hpo", **t) for t in record.details["trials"]]
    return record, trials


def test_median_pruner_stops_bad_trials_early_and_none_stops_nothing(
    cancer_mlp_pt2: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KOMPAKTOR_TERMINATION_LOG", str(tmp_path / "termination"))
    pruned_run, plain_run = tmp_path / "median", tmp_path / "none"
    median = {**SEARCH, "pruner": "median", "startupTrials": 2}
    assert stage_run(cancer_mlp_pt2, pruned_run, median, "--max-drop", "0.05") == EXIT_OK
    assert stage_run(cancer_mlp_pt2, plain_run, {**SEARCH, "pruner": "none"}) == EXIT_OK

    record, trials = trials_of(pruned_run)
    pruned = [t for t in trials if t.state == "Pruned"]
    complete = [t for t in trials if t.state == "Complete"]
    assert pruned, [(t.params, t.curve) for t in trials]
    assert all(len(t.curve or []) < EPOCHS for t in pruned)  # stopped before the last epoch
    assert all(len(t.curve or []) == EPOCHS for t in complete)
    assert record.metrics["prunedTrials"] == len(pruned)
    best = record.details["bestTrial"]
    assert trials[best].state == "Complete"
    assert record.params["pruner"] == "median"
    # the study rebuilt from these records holds them as PRUNED
    p = HpoParams.model_validate(median)
    study = rebuild(
        distributions(p),
        [Observed(t.params, t.state, t.values, t.curve) for t in trials],  # type: ignore[arg-type]
        [True],
        sampler_for("tpe", 0, startup=3, population=1),
    )
    assert sum(t.state == TrialState.PRUNED for t in study.trials) == len(pruned)

    plain, plain_trials = trials_of(plain_run)
    assert [t.state for t in plain_trials] == ["Complete"] * 8
    assert all(len(t.curve or []) == EPOCHS for t in plain_trials)
    assert [t.params for t in plain_trials[:2]] == [t.params for t in trials[:2]]  # same draws
    assert plain.metrics["prunedTrials"] == 0


def test_standalone_hpo_writes_the_winner_ranked_on_validation_rows(
    cancer_mlp_pt2: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KOMPAKTOR_TERMINATION_LOG", str(tmp_path / "termination"))
    out = tmp_path / "hpo"
    search = {**SEARCH, "trials": 3, "space": {"lr": {"low": 1e-4, "high": 1e-2, "log": True}}}
    assert stage_run(cancer_mlp_pt2, out, search, "--seed", "2") == EXIT_OK
    record, trials = trials_of(out)
    assert record.type == "hpo" and record.format == "pt2"
    assert load_model(out / "model.pt2").module is not None
    assert [t.state for t in trials] == ["Complete"] * 3
    # each trial was valued on validation rows, and the winner is the best there
    vals = [t.values[0] for t in trials if t.values]
    assert record.details["bestTrial"] == int(np.argmax(vals))
    assert record.metrics["valMetric"] == pytest.approx(max(vals))
    assert "referenceValMetric" in record.metrics and "metric" in record.metrics
    assert json.loads((tmp_path / "termination").read_text())["type"] == "hpo"


def test_standalone_hpo_refuses_a_bad_space_before_loading_anything(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    termination = tmp_path / "termination"
    monkeypatch.setenv("KOMPAKTOR_TERMINATION_LOG", str(termination))
    bad = {**SEARCH, "sampler": "grid"}  # a grid over a continuous lr
    missing = tmp_path / "no-such-model.pt2"  # never reached: the params fail first
    assert stage_run(missing, tmp_path / "out", bad) == EXIT_INVALID
    failure = RunFailure.model_validate_json(termination.read_text())
    assert failure.reason == "InvalidParams" and not failure.retryable
    assert failure.message == "stage (hpo): params.space.lr: a grid search needs step or choices"


# ---- the train stage's validation curve ------------------------------------------------------


def test_train_reports_a_validation_curve_and_held_out_rows_without_a_val_split(
    stage_context: ContextFactory, cancer_mlp_pt2: Path, cancer: Dataset, tmp_path: Path
) -> None:
    ctx = stage_context(TrainParams(epochs=3, lr=1e-2, batch_size=32), cancer_mlp_pt2, cancer)
    result = TrainStage().run(ctx)
    assert len(ctx.curve.points) == 3 and not ctx.curve.pruned
    assert all(0.5 < v <= 1.0 for v in ctx.curve.points)
    assert "valMetric" not in result.metrics  # the dataset has a val split: the runner's job

    # a dataset file with no val arrays: the train stage holds rows out and scores on them
    path = tmp_path / "no-val.npz"
    np.savez(path, x_train=cancer.inputs("train")[0], y_train=cancer.targets("train"),
             x_test=cancer.inputs("test")[0], y_test=cancer.targets("test"))  # fmt: skip
    no_val = load_dataset(str(path))
    assert len(no_val.targets("val")) == 0
    params = TrainParams(epochs=2, lr=1e-2, batch_size=32, validation_fraction=0.2)
    ctx = stage_context(params, cancer_mlp_pt2, no_val)
    result = TrainStage().run(ctx)
    rows = len(cancer.targets("train"))
    assert result.details["validationRows"] == round(0.2 * rows)
    assert result.metrics["valMetric"] == pytest.approx(ctx.curve.points[-1], abs=1e-3)
    assert 0.5 < result.metrics["referenceValMetric"] <= 1.0


def test_held_out_rows_are_a_seeded_draw_never_trained_on(cancer: Dataset) -> None:
    empty = Dataset(
        name="x",
        task="classification",
        x={
            "train": cancer.x["train"],
            "val": (cancer.x["train"][0][:0],),
            "test": cancer.x["test"],
        },
        y={"train": cancer.y["train"], "val": cancer.y["train"][:0], "test": cancer.y["test"]},
        num_classes=2,
    )
    a, again, other = (empty.with_validation(0.25, s) for s in (3, 3, 4))
    rows = len(cancer.targets("train"))
    assert len(a.targets("val")) == round(0.25 * rows)
    assert len(a.targets("train")) + len(a.targets("val")) == rows
    np.testing.assert_array_equal(a.inputs("val")[0], again.inputs("val")[0])
    assert not np.array_equal(a.inputs("val")[0], other.inputs("val")[0])
    train_rows = {r.tobytes() for r in a.inputs("train")[0]}
    assert not any(r.tobytes() in train_rows for r in a.inputs("val")[0])
    assert cancer.with_validation(0.25, 3) is cancer  # a given val split is used as it is


def test_prune_reports_fine_tuning_epochs_and_stops_when_pruned(
    stage_context: ContextFactory, cancer_mlp_pt2: Path, cancer: Dataset
) -> None:
    from kompaktor.stages.base import Curve
    from kompaktor.stages.prune import PruneParams, PruneStage

    params = PruneParams(sparsity=0.8, steps=2, fine_tune_epochs=2, lr=1e-2, batch_size=32)
    full = stage_context(params, cancer_mlp_pt2, cancer)
    done = PruneStage().run(full)
    assert len(full.curve.points) == 4 and not full.curve.pruned
    assert done.metrics["sparsity"] == pytest.approx(0.8, abs=0.01)

    stopped = stage_context(params, cancer_mlp_pt2, cancer)
    stopped.curve = Curve(prune=lambda value: len(stopped.curve.points) >= 2)  # stop at 2
    cut = PruneStage().run(stopped)
    assert stopped.curve.pruned and len(stopped.curve.points) == 2  # the first step's epochs
    assert cut.metrics["sparsity"] < 0.79  # the second pruning step never ran
