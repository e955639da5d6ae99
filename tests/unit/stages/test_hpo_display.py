"""`kompaktor run`'s human output for an hpo stage: a multi-objective search lists its Pareto
set (values with names and units, params) and marks the selected trial, also when the stage
comes from the cache; a single-objective search names its winner only."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from kompaktor.api.run import RESULT_FILE, RunRecord
from kompaktor.api.status import JobResult, OptimizationJobStatus
from kompaktor.cli import main
from kompaktor.display import MAX_PARETO_LINES, pareto_lines, result_lines


def job_file(tmp_path: Path, model: Path, objectives: list[str]) -> Path:
    hpo = {
        "target": "train",
        "sampler": "random",
        "trials": 3,
        "parallelism": 2,
        "seed": 0,
        "objectives": objectives,
        "base": {"epochs": 1},
        "space": {"lr": {"low": 1e-4, "high": 1e-2, "log": True}},
    }
    job = {
        "apiVersion": "kompaktor.io/v1alpha1",
        "kind": "OptimizationJob",
        "metadata": {"name": "pareto"},
        "spec": {
            "model": {"uri": str(model)},
            "dataset": {"uri": "sklearn:digits", "task": "classification"},
            "objective": {"metric": "accuracy", "maxDrop": 0.99},
            "stages": [{"name": "tune", "type": "hpo", "params": hpo}],
        },
    }
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    return path


def expected_lines(record: RunRecord) -> list[str]:
    """The Pareto-set lines the record's details call for, built here from its raw values."""
    best = record.details["bestTrial"]
    rows = []
    for trial in record.details["paretoSet"]:
        mark = "*" if trial["number"] == best else " "
        values = trial["values"]
        rows.append(
            f"  {mark} trial {trial['number']}: accuracy {values['metric']:.4f}, "
            f"latency {values['latency']:.3f} ms; lr={trial['params']['lr']:.4g}"
        )
    return rows


@pytest.mark.slow
def test_kompaktor_run_lists_the_pareto_set_and_marks_the_winner(
    tmp_path: Path, digits_cnn_pt2: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The output said nothing of the Pareto set a multi-objective search had found: only
    result.json under the stage's run prefix named it."""
    job = job_file(tmp_path, digits_cnn_pt2, ["metric", "latency"])
    for _ in ("run", "cached rerun"):  # a cached stage's set comes from its stored record
        assert main(["run", str(job), "--logs", str(tmp_path / "logs")]) == 0
        out = capsys.readouterr().out  # the outcome is on stdout
        (result,) = (tmp_path / "artifacts" / "runs").glob(f"hpo-*/{RESULT_FILE}")
        record = RunRecord.model_validate_json(result.read_text())
        front, best = record.details["paretoSet"], record.details["bestTrial"]
        lines = out.splitlines()
        assert record.details["metricRows"] == "validation"  # train holds val rows out
        size = f"{len(front)} trial{'s' if len(front) > 1 else ''}"
        header = f"tune: Pareto set of {size}, accuracy on validation rows (* selected: trial "
        header += str(best)
        start = next(i for i, line in enumerate(lines) if line.startswith(header))
        assert lines[start + 1 : start + 1 + len(front)] == expected_lines(record)
        assert any(line.startswith("  * trial ") for line in lines)


def test_one_objective_prints_no_pareto_set() -> None:
    status = OptimizationJobStatus(phase="Succeeded", result=JobResult(uri="file:///m.pt2"))
    details = {"bestTrial": 1, "bestParams": {"lr": 0.01}, "selection": "trial 1 has ..."}
    assert result_lines(status, {"tune": details}) == [
        "output: file:///m.pt2",
        "speed-up over the input model: not measured (add a benchmark stage at the end of the job)",
        "tune: trial 1 won: lr=0.01",
    ]


def pareto_trial(number: int) -> dict[str, Any]:
    return {
        "number": number,
        "params": {"lr": 0.001 * (number + 1), "mode": "dynamic"},
        "values": {"metric": 0.5, "size": 2048.0 * (number + 1)},
    }


def test_a_winner_off_the_set_is_named_and_a_long_set_is_capped() -> None:
    front = [pareto_trial(n) for n in range(MAX_PARETO_LINES + 2)]
    details = {"bestTrial": 40, "paretoSet": front, "metricRows": "test"}
    lines = pareto_lines("tune", details, "mse")
    assert lines[0] == (
        f"tune: Pareto set of {MAX_PARETO_LINES + 2} trials, mse on test rows (* selected: "
        "trial 40, which is not on it)"
    )
    assert lines[1] == "    trial 0: mse 0.5000, size 2.0 KiB; lr=0.001, mode=dynamic"
    assert len(lines) == 1 + MAX_PARETO_LINES + 1
    assert lines[-1] == "    and 2 more in the stage's result.json"
    assert not any(line.startswith("  * ") for line in lines)


def test_an_unreadable_search_record_is_a_warning_not_a_failed_run(tmp_path: Path) -> None:
    """The run's outcome stands when the Pareto set cannot be shown; the warning says where."""
    from io import StringIO

    from rich.console import Console

    from kompaktor.api.status import StageStatus
    from kompaktor.cli import _search_details
    from kompaktor.plan.keys import output_uri

    root = tmp_path.as_uri()
    prefix = Path(output_uri(str(tmp_path), "hpo", "k" * 64))
    prefix.mkdir(parents=True)
    (prefix / RESULT_FILE).write_text("{not json")
    stage = StageStatus(name="tune", type="hpo", phase="Succeeded", key="k" * 64)
    out = StringIO()
    found = _search_details(
        OptimizationJobStatus(stages=[stage]), root, Console(file=out, width=400)
    )
    assert found == {}
    assert out.getvalue().startswith(
        f"warning: stage tune: its Pareto set is not shown, {output_uri(root, 'hpo', 'k' * 64)}"
        "/result.json cannot be read: "
    )
