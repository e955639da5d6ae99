"""A newcomer's mistakes in a job file, and messages that say what to write instead."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from kompaktor.api.jobfile import job_name, load_job_file
from kompaktor.api.messages import closest_name
from kompaktor.api.spec import OptimizationJobSpec
from kompaktor.errors import JobSpecError
from kompaktor.stages import validate_job
from kompaktor.stages.hpo_checks import check as hpo_check
from kompaktor.stages.hpo_params import HpoParams
from kompaktor.stages.train import TrainParams
from kompaktor.stages.validate import parse_params

JOB = """\
apiVersion: kompaktor.io/v1alpha1
kind: OptimizationJob
metadata: {name: demo}
spec:
  model: {uri: model.pt2}
  dataset: {uri: "sklearn:digits"}
  stages:
    - {name: tune, type: train, params: {epochs: 2}}
"""


def load(tmp_path: Path, text: str) -> Any:
    path = tmp_path / "job.yaml"
    path.write_text(text)
    return load_job_file(path)


def refusal(tmp_path: Path, text: str) -> str:
    with pytest.raises(JobSpecError) as caught:
        load(tmp_path, text)
    return str(caught.value)


def params_refusal(stage_type: str, params: dict[str, Any]) -> str:
    with pytest.raises(JobSpecError) as caught:
        parse_params(stage_type, params, where="stage 'tune' (spec.stages[0], train)")
    return str(caught.value)


def test_an_unknown_param_names_the_one_meant_and_lists_the_params() -> None:
    """`params.learningRate: unknown field` left the user to guess the name."""
    message = params_refusal("train", {"epochs": 2, "learningRate": 0.001})
    head = (
        "stage 'tune' (spec.stages[0], train): params.learningRate: train has no param "
        "'learningRate'; did you mean 'lr'? (its params: "
    )
    assert message.startswith(head) and message.endswith(")")
    listed = message.removeprefix(head).removesuffix(")").split(", ")
    assert listed == sorted(info.alias or name for name, info in TrainParams.model_fields.items())
    assert {"batchSize", "epochs", "lr", "weightDecay"} <= set(listed)


@pytest.mark.parametrize(
    ("key", "meant"),
    [("batch_size", "batchSize"), ("batchsize", "batchSize"), ("bs", "batchSize"),
     ("epoch", "epochs"), ("learning_rate", "lr"), ("wieghtDecay", "weightDecay"),
     ("colour", None)],
)  # fmt: skip
def test_the_closest_name_is_a_spelling_initials_or_a_near_miss(key: str, meant: str) -> None:
    names = ["batchSize", "epochs", "lr", "weightDecay", "l1"]
    assert closest_name(key, names) == meant


def test_an_unknown_param_with_no_near_name_lists_the_params_only() -> None:
    message = params_refusal("benchmark", {"colour": "red"})
    assert re.search(
        r"params\.colour: benchmark has no param 'colour' \(its params: batchSizes, .*warmup\)$",
        message,
    )


def test_an_unknown_field_inside_a_param_gets_the_fields_of_that_mapping() -> None:
    message = params_refusal("distill", {"teacher": {"fromstage": "tune"}})
    assert message.endswith(
        "params.teacher.fromstage: unknown field; did you mean 'fromStage'? (known fields: "
        "digest, fromStage, uri)"
    )


def test_an_unknown_spec_field_gets_the_name_meant(tmp_path: Path) -> None:
    text = JOB.replace("  stages:", "  objective: {metric: accuracy, maxdrop: 0.02}\n  stages:")
    assert (
        "spec.objective.maxdrop: unknown field; did you mean 'maxDrop'? (known fields: "
        "maxDrop, metric)"
    ) in refusal(tmp_path, text)
    text = JOB.replace("params: {epochs: 2}", "param: {epochs: 2}")
    assert "stage 'tune' (spec.stages[0], train): param: unknown field; did you mean 'params'?" in (
        refusal(tmp_path, text)
    )


def test_hpo_search_space_names_get_the_same_suggestion() -> None:
    """The hpo check and job validation phrase an unknown target param alike (one function)."""
    params = HpoParams.model_validate(
        {"target": "prune", "trials": 2, "space": {"learningRate": {"low": 1e-4, "high": 1e-2}}}
    )
    with pytest.raises(ValueError) as caught:
        hpo_check(params)
    assert str(caught.value).startswith(
        "params.space.learningRate: prune has no param 'learningRate'; did you mean 'lr'? "
        "(its params: batchSize, "
    )


@pytest.mark.parametrize(
    ("metric", "max_drop", "meant"),
    [("accuracy", 1, "1 point write 0.01"), ("fidelity", 5, "5 points write 0.05")],
)
def test_a_percentage_max_drop_for_a_fraction_metric_is_refused(
    tmp_path: Path, metric: str, max_drop: float, meant: str
) -> None:
    """`maxDrop: 1` meant one point of accuracy and let every result pass the gate."""
    objective = f"  objective: {{metric: {metric}, maxDrop: {max_drop}}}\n  stages:"
    message = refusal(tmp_path, JOB.replace("  stages:", objective))
    assert (
        f"spec.objective.maxDrop: must be below 1 for {metric}, a fraction from 0 to 1, or any "
        f"result passes; maxDrop is a fraction too (0.01 = one point of {metric}): for "
        f"{meant}"
    ) in message


def test_max_drop_stays_unbounded_for_mse_and_below_1_for_fractions() -> None:
    stages = [{"name": "b", "type": "benchmark"}]
    base = {"model": {"uri": "m.pt2"}, "dataset": {"uri": "d.npz"}, "stages": stages}
    for objective in ({"metric": "mse", "maxDrop": 5}, {"metric": "accuracy", "maxDrop": 0.99}):
        spec = OptimizationJobSpec.model_validate({**base, "objective": objective})
        assert spec.objective.max_drop == objective["maxDrop"]


@pytest.mark.parametrize(
    ("documents", "found"),
    [
        ("kind: OptimisationJob\n", "found kind OptimisationJob"),
        ("kind: ConfigMap\n---\nkind: OptimisationJob\n", "found kind ConfigMap, OptimisationJob"),
        ("metadata: {name: x}\n", "found no document with a kind"),
    ],
)
def test_a_misspelled_kind_is_shown_beside_the_one_expected(
    tmp_path: Path, documents: str, found: str
) -> None:
    message = refusal(tmp_path, documents)
    assert message.endswith(
        f": {found}; expected OptimizationJob (apiVersion kompaktor.io/v1alpha1)"
    )


def test_two_jobs_in_one_file_are_still_counted(tmp_path: Path) -> None:
    assert refusal(tmp_path, JOB + "---\n" + JOB).endswith(
        "expected exactly one OptimizationJob document, found 2"
    )


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ("{epochs: two}", "params.epochs: Input should be a valid integer, unable to parse "
         "string as an integer (got 'two')"),
        ("{epochs: 2.5}", "params.epochs: Input should be a valid integer, got a number with a "
         "fractional part (got 2.5)"),
        ("{epochs: }", "params.epochs: Input should be a valid integer (got None)"),
        ("{lr: -1}", "params.lr: Input should be greater than 0 (got -1)"),
    ],
)  # fmt: skip
def test_a_wrong_value_is_quoted(tmp_path: Path, params: str, expected: str) -> None:
    """pydantic's message did not say what it read, which YAML may have turned into another
    value than the one written."""
    job = load(tmp_path, JOB.replace("{epochs: 2}", params))
    with pytest.raises(JobSpecError) as caught:
        validate_job(job.spec)
    assert f"stage 'tune' (spec.stages[0], train): {expected}" in str(caught.value)


def test_a_whole_mapping_is_not_quoted(tmp_path: Path) -> None:
    """A rule about several fields (pool and pools) quotes nothing: the input is the mapping."""
    text = JOB.replace("type: train,", "type: train, pool: a, pools: [b],")
    assert re.search(r"set either pool or pools, not both$", refusal(tmp_path, text))


def test_the_job_name_is_read_from_a_file_that_does_not_validate(tmp_path: Path) -> None:
    path = tmp_path / "job.yaml"
    path.write_text(JOB.replace("params: {epochs: 2}", "params: {epochs: 2}, colour: red"))
    assert job_name(path) == "demo"
    no_name = JOB.replace("{name: demo}", "{}")
    for text in ("a: [", "kind: OptimisationJob\nmetadata: {name: x}\n", no_name):
        path.write_text(text)
        assert job_name(path) is None
    assert job_name(tmp_path / "missing.yaml") is None
