"""Job files: what a user writes, and the errors a wrong one gets."""

from __future__ import annotations

from pathlib import Path

import pytest

from kompaktor.api.duration import parse_duration
from kompaktor.api.jobfile import load_job_file
from kompaktor.errors import JobSpecError

GOOD = """\
apiVersion: kompaktor.io/v1alpha1
kind: OptimizationJob
metadata: {name: demo}
spec:
  model: {uri: model.pt2}
  dataset: {uri: "sklearn:digits"}
  budget: {maxDuration: 1h30m, maxCostUSD: 5}
  stages:
    - {name: tune, type: train, pool: gpu, params: {epochs: 1}, retries: 2, timeout: 10m}
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "job.yaml"
    path.write_text(text)
    return path


def test_good_job_parses_with_camel_case_fields(tmp_path: Path) -> None:
    job = load_job_file(write(tmp_path, GOOD))
    assert job.metadata.name == "demo"
    assert job.spec.budget.max_duration_seconds == 5400
    assert job.spec.budget.max_cost_usd == 5
    stage = job.spec.stages[0]
    assert (stage.pool_names, stage.retries, stage.timeout_seconds) == (["gpu"], 2, 600)
    assert job.spec.objective.metric == "accuracy"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a: [", "not valid YAML"),
        ("kind: Something\n", "exactly one OptimizationJob"),
        (GOOD.replace("model: {uri: model.pt2}", "model: {}"), "spec.model.uri: required"),
        (GOOD.replace("name: tune", "name: Tune_1"), "spec.stages.0.name"),
        (GOOD.replace("retries: 2", "retries: 2, colour: red"), "spec.stages.0.colour: unknown"),
        (GOOD.replace("1h30m", "soon"), "spec.budget.maxDuration"),
        (GOOD.replace("pool: gpu", "pool: gpu, pools: [cpu]"), "set either pool or pools"),
        (GOOD + "    - {name: tune, type: benchmark}\n", "duplicate stage name 'tune'"),
    ],
)
def test_bad_jobs_name_the_field(tmp_path: Path, text: str, expected: str) -> None:
    with pytest.raises(JobSpecError, match=expected.replace("(", r"\(").replace("[", r"\[")):
        load_job_file(write(tmp_path, text))


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(JobSpecError, match="cannot read job file"):
        load_job_file(tmp_path / "nope.yaml")


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90s", 90), ("2h", 7200), ("1h30m", 5400), ("250ms", 0.25), ("1d", 86400)],
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "5", "1x", "m5", "1h 2m"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration(text)
