"""What `kompaktor stage run` tells its user on stderr and in stage.log: a failure once, and
a warning when the output is broken though the run, with no bound given, succeeds."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kompaktor.api.run import EXIT_INVALID, EXIT_OK, LOG_FILE, RESULT_FILE, RunRecord
from kompaktor.cli import main
from kompaktor.stages.runner import StageRequest, broken_output

NEAR_CHANCE = "is near chance"


def stage_run(model: Path, output: Path, stage: str, params: object) -> int:
    return main(["stage", "run", "--type", stage, "--params", json.dumps(params),
                 "--input", str(model), "--dataset", "sklearn:digits",
                 "--output", str(output)])  # fmt: skip


def test_an_unknown_stage_type_is_one_error_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """It was printed twice: the run's log line, then `error:` with the same message."""
    assert stage_run(tmp_path / "m.pt2", tmp_path / "out", "bogus", {}) == EXIT_INVALID
    err = capsys.readouterr().err
    assert err.count("unknown stage type 'bogus'") == 1, err
    assert "stage (bogus): type: unknown stage type 'bogus' (known: " in err


@pytest.mark.slow
def test_a_diverged_run_warns_but_still_succeeds_without_a_bound(
    digits_cnn_pt2: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """prune with lr 1 took accuracy from 0.99 to 0.10 (loss 765290) and exited 0 saying
    nothing: no --max-drop was given, so it still succeeds, with a warning."""
    out = tmp_path / "run"
    params = {"sparsity": 0.5, "lr": 1, "fineTuneEpochs": 1}
    assert stage_run(digits_cnn_pt2, out, "prune", params) == EXIT_OK
    record = RunRecord.model_validate_json((out / RESULT_FILE).read_text())
    assert record.metrics["metric"] < 0.5 < record.metrics["inputMetric"]
    warning = "warning: stage (prune): output accuracy "
    assert warning in capsys.readouterr().err
    assert warning in (out / LOG_FILE).read_text()


def request(metric: str = "accuracy") -> StageRequest:
    return StageRequest(type="train", input="m", dataset="d", output="o", metric=metric)


@pytest.mark.parametrize(
    ("after", "before", "classes", "warns"),
    [
        (0.10, 0.99, 10, True),  # collapsed to chance
        (0.54, 0.99, 10, True),  # less than half of the lead over chance (0.545) kept
        (0.60, 0.99, 10, False),  # a heavy but working compression
        (0.72, 0.95, 2, True),
        (0.74, 0.95, 2, False),
        (0.10, 0.10, 10, False),  # the input was no better
    ],
)
def test_near_chance_is_less_than_half_the_inputs_lead_over_chance(
    after: float, before: float, classes: int, warns: bool
) -> None:
    found = broken_output(request(), {"metric": after, "inputMetric": before}, classes)
    assert (found is not None and NEAR_CHANCE in found) is warns


def test_a_figure_that_is_not_finite_warns_whatever_the_metric() -> None:
    found = broken_output(request("mse"), {"metric": 0.2, "finalLoss": float("nan")}, None)
    assert (
        found == "warning: stage (train): training loss is nan: training diverged; lower params.lr"
    )
    assert broken_output(request("mse"), {"metric": float("inf"), "inputMetric": 0.2}, None)
    assert broken_output(request("mse"), {"metric": 9.0, "inputMetric": 0.2}, None) is None
