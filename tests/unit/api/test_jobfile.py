"""Job files: what a user writes, and the errors a wrong one gets."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from kompaktor.api.duration import parse_duration
from kompaktor.api.jobfile import load_job_file
from kompaktor.api.spec import OptimizationJobSpec
from kompaktor.errors import JobSpecError
from kompaktor.stages import validate_job

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
        ("kind: Something\n", "found kind Something; expected OptimizationJob"),
        (GOOD.replace("model: {uri: model.pt2}", "model: {}"), "spec.model.uri: required"),
        (
            GOOD.replace("name: tune", "name: Tune_1"),
            "stage 'Tune_1' (spec.stages[0], train): name",
        ),
        (
            GOOD.replace("retries: 2", "retries: 2, colour: red"),
            "stage 'tune' (spec.stages[0], train): colour: unknown",
        ),
        (
            GOOD.replace("1h30m", "soon"),
            "spec.budget.maxDuration: must be a duration such as 90s, 30m, 2h or 1h30m "
            "(got 'soon')",
        ),
        (
            GOOD.replace("timeout: 10m", "timeout: 10 minutes"),
            "stage 'tune' (spec.stages[0], train): timeout: must be a duration",
        ),
        (GOOD.replace("pool: gpu", "pool: gpu, pools: [cpu]"), "set either pool or pools"),
        (GOOD + "    - {name: tune, type: benchmark}\n", "duplicate stage name 'tune'"),
    ],
)
def test_bad_jobs_name_the_field(tmp_path: Path, text: str, expected: str) -> None:
    with pytest.raises(JobSpecError, match=re.escape(expected)):
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


def test_a_key_given_twice_is_refused_with_both_lines(tmp_path: Path) -> None:
    """PyYAML keeps the last of two keys silently: a second `model:` would replace the first."""
    text = GOOD.replace("  model: {uri: model.pt2}\n", "  model: {uri: model.pt2}\n  model: {}\n")
    with pytest.raises(JobSpecError) as caught:
        load_job_file(write(tmp_path, text))
    assert (
        str(caught.value)
        == f"{tmp_path / 'job.yaml'}: line 6: duplicate key 'model' (first given on line 5)"
    )


def test_merge_keys_may_still_be_overridden(tmp_path: Path) -> None:
    text = GOOD.replace(
        "metadata: {name: demo}\n",
        "metadata: &meta {name: demo}\nx-base: {<<: *meta, name: other}\n",
    )
    assert load_job_file(write(tmp_path, text)).metadata.name == "demo"


BOOLEAN, INFINITE = "must be a number, not a boolean", "Input should be a finite number"


@pytest.mark.parametrize(
    ("before", "after", "field", "message"),
    [
        ("retries: 2", "retries: true", "stage 'tune' (spec.stages[0], train): retries", BOOLEAN),
        ("maxCostUSD: 5", "maxCostUSD: yes", "spec.budget.maxCostUSD", BOOLEAN),
        ("budget:", "objective: {maxDrop: on}\n  budget:", "spec.objective.maxDrop", BOOLEAN),
        ("maxCostUSD: 5", "maxCostUSD: .inf", "spec.budget.maxCostUSD", INFINITE),
        ("budget:", "objective: {maxDrop: .inf}\n  budget:", "spec.objective.maxDrop", INFINITE),
    ],
)
def test_what_is_no_number_is_refused(
    tmp_path: Path, before: str, after: str, field: str, message: str
) -> None:
    """pydantic's lax mode reads true (in YAML also yes, on) as 1, and `ge=0` lets infinity
    pass: `maxDrop: on` would allow any drop of accuracy and `maxDrop: .inf` turn the gate off
    (no bound is written by leaving the field out)."""
    with pytest.raises(JobSpecError, match=re.escape(f"{field}: {message}")):
        load_job_file(write(tmp_path, GOOD.replace(before, after)))


def test_an_infinite_stage_param_is_refused() -> None:
    """`lr: .inf` passed `gt=0` and the run diverged."""
    with pytest.raises(JobSpecError, match=r"params\.lr: Input should be a finite number"):
        validate(stages=[{"name": "t", "type": "train", "params": {"lr": float("inf")}}])


def test_a_number_in_a_string_is_still_a_number(tmp_path: Path) -> None:
    job = load_job_file(write(tmp_path, GOOD.replace("retries: 2", "retries: '2'")))
    assert job.spec.stages[0].retries == 2


def validate(**overrides: Any) -> None:
    """validate_job on a one-stage job with `overrides` in its spec."""
    doc: dict[str, Any] = {
        "model": {"uri": "model.pt2"},
        "dataset": {"uri": "sklearn:digits"},
        "stages": [{"name": "bench", "type": "benchmark"}],
    }
    validate_job(OptimizationJobSpec.model_validate(doc | overrides))


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (
            {"dataset": {"uri": "sklearn:iris"}},
            "spec.dataset.uri: unknown built-in dataset 'sklearn:iris'; use one of "
            "sklearn:digits, sklearn:breast_cancer, sklearn:wine",
        ),
        (
            {"dataset": {"uri": "sklearn:digits", "task": "regression"}},
            "spec.dataset.task: sklearn:digits is a classification dataset (got regression)",
        ),
        (
            {"dataset": {"uri": "s3://data/digits.csv"}},
            "spec.dataset.uri: s3://data/digits.csv: expected a .npz file or a built-in",
        ),
        (
            {"dataset": {"uri": "data.npz"}, "objective": {"metric": "mse"}},
            "spec.objective.metric: mse compares outputs with numeric targets and needs a "
            "regression dataset (spec.dataset.task is classification, the default); use "
            "accuracy or fidelity",
        ),
        (
            {"objective": {"metric": "mse"}},
            "needs a regression dataset (sklearn:digits is a classification dataset)",
        ),
        (
            {"dataset": {"uri": "data.npz", "task": "regression"}},
            "spec.objective.metric: accuracy compares predicted classes with the labels and "
            "needs a classification dataset (spec.dataset.task is regression); use mse",
        ),
        (
            {
                "dataset": {"uri": "data.npz", "task": "regression"},
                "objective": {"metric": "fidelity"},
            },
            "spec.objective.metric: fidelity compares predicted classes",
        ),
        (
            {"artifacts": {"uri": "ftp://host/kompaktor"}},
            "spec.artifacts.uri: ftp://host/kompaktor: unsupported URI scheme 'ftp' (use s3://, "
            "file:/// or a path)",
        ),
        ({"model": {"uri": "gs://models/m.pt2"}}, "spec.model.uri: gs://models/m.pt2: unsupported"),
        ({"dataset": {"uri": "file://host/d.npz"}}, "spec.dataset.uri: invalid file URI"),
        ({"artifacts": {"uri": "s3://x"}}, "spec.artifacts.uri: invalid S3 URI 's3://x'"),
    ],
)
def test_what_the_run_would_trip_on_is_refused_first(
    overrides: dict[str, Any], expected: str
) -> None:
    with pytest.raises(JobSpecError) as caught:
        validate(**overrides)
    assert expected in str(caught.value)


@pytest.mark.parametrize(
    "overrides",
    [
        {
            "dataset": {"uri": "s3://data/reg.npz", "task": "regression"},
            "objective": {"metric": "mse"},
        },
        {"dataset": {"uri": "file:///data/d.npz"}, "objective": {"metric": "fidelity"}},
        {"artifacts": {"uri": "s3://bucket/prefix"}},
        {"artifacts": {"uri": "file:///var/kompaktor"}, "dataset": {"uri": "sklearn:wine"}},
    ],
)
def test_supported_datasets_metrics_and_uris_pass(overrides: dict[str, Any]) -> None:
    validate(**overrides)
