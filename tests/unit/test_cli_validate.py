"""`kompaktor validate` (and the same checks at the start of `kompaktor run`): the files a job
names, the failure summary of `--json`, and help that explains every argument."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest

from kompaktor.cli import EXIT_USAGE, build_parser, main
from kompaktor.stages import registry
from kompaktor.stages.runner import EXIT_INVALID, _check_max_drop

JOB = """\
apiVersion: kompaktor.io/v1alpha1
kind: OptimizationJob
metadata: {name: demo}
spec:
  model: {uri: MODEL}
  dataset: {uri: DATASET}
  stages:
    - {name: bench, type: benchmark}
"""
SPLITS = ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test")


def job_file(folder: Path, model: str = "model.pt2", dataset: str = "data.npz") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "job.yaml"
    path.write_text(JOB.replace("MODEL", model).replace("DATASET", dataset))
    return path


def npz(path: Path, *names: str) -> Path:
    np.savez(path, **{name: np.zeros((2, 3)) for name in names})  # type: ignore[arg-type]
    return path


def validate(job: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(["validate", str(job)])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def test_missing_model_and_dataset_are_named_with_the_path_looked_at(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`validate` said valid, and `kompaktor run` failed later in its first stage."""
    job = job_file(tmp_path / "jobs")
    monkeypatch.chdir(tmp_path)  # paths are relative to the job file, not to here
    code, text = validate(Path("jobs/job.yaml"), capsys)
    assert code == EXIT_USAGE
    assert f"spec.model.uri: file not found: {job.parent / 'model.pt2'}\n" in text
    assert f"spec.dataset.uri: file not found: {job.parent / 'data.npz'}\n" in text


def test_a_distill_teacher_file_is_checked_like_the_model(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A missing teacher failed the run at its distill stage, after the stages before it; one
    with a scheme no store reads failed at the input probe."""
    (tmp_path / "model.pt2").write_bytes(b"")
    npz(tmp_path / "data.npz", *SPLITS)
    job = job_file(tmp_path)
    hpo = (
        "    - {name: tune, type: hpo, params: {target: distill, trials: 2, base: {teacher: "
        "{uri: %s}}, space: {temperature: {low: 2, high: 4}}}}\n"
    )
    where = "stage 'tune' (spec.stages[1], hpo): params.base.teacher.uri"
    for teacher, problem in [
        ("teacher.pt2", f"file not found: {tmp_path / 'teacher.pt2'}"),
        ("hf://bert", "hf://bert: unsupported URI scheme 'hf' (use s3://, file:/// or a path)"),
    ]:
        job.write_text(
            JOB.replace("MODEL", "model.pt2").replace("DATASET", "data.npz") + hpo % teacher
        )
        code, text = validate(job, capsys)
        assert code == EXIT_USAGE and f"{where}: {problem}\n" in text, text
    (tmp_path / "teacher.pt2").write_bytes(b"")
    job.write_text(job.read_text().replace("hf://bert", "teacher.pt2"))
    code, text = validate(job, capsys)
    assert code == 0, text


def test_files_that_are_there_validate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "model.pt2").write_bytes(b"")  # validation reads no model
    npz(tmp_path / "data.npz", *SPLITS)
    elsewhere = npz(tmp_path / "other.npz", "x_train_0", "x_train_1", "y_train", "x_test_0",
                    "x_test_1", "y_test")  # fmt: skip
    for dataset in ("data.npz", elsewhere.as_uri(), "sklearn:wine"):
        code, text = validate(job_file(tmp_path, dataset=dataset), capsys)
        assert code == 0
        assert text == f"{tmp_path / 'job.yaml'}: OptimizationJob demo is valid (1 stages)\n"


@pytest.mark.parametrize(
    ("names", "missing"),
    [
        (("x_train", "y_train", "x_test"), "y_test"),
        (("X_train", "y_train", "X_test", "y_test"), "x_train, x_test"),
        (("x_train", "y_train", "x_val", "x_test", "y_test"), "y_val"),
        (("x_train_0", "y_train", "x_test", "y_test"), None),
    ],
)
def test_a_dataset_without_the_arrays_a_run_reads_is_refused(
    tmp_path: Path, names: tuple[str, ...], missing: str | None, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "model.pt2").write_bytes(b"")
    data = npz(tmp_path / "data.npz", *names)
    code, text = validate(job_file(tmp_path), capsys)
    if missing is None:
        assert code == 0
        return
    has = ", ".join(sorted(names))
    assert code == EXIT_USAGE
    assert (
        f"spec.dataset.uri: {data}: has no array {missing} (it has {has}); a dataset holds " in text
    )


def test_a_file_that_is_no_npz_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "model.pt2").write_bytes(b"")
    (tmp_path / "data.npz").write_text("x_train,y_train\n1,2\n")
    code, text = validate(job_file(tmp_path), capsys)
    assert (
        code == EXIT_USAGE and "spec.dataset.uri: " in text and "not a readable .npz file" in text
    )


def test_remote_files_are_not_looked_at(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Validation uses no network: an S3 object is the run's to fetch."""
    job = job_file(tmp_path, model="s3://models/m.pt2", dataset="s3://data/d.npz")
    code, text = validate(job, capsys)
    assert code == 0, text


def test_run_refuses_a_missing_model_before_it_makes_any_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    job = job_file(tmp_path / "jobs", dataset="sklearn:digits")
    assert main(["run", str(job)]) == EXIT_USAGE
    assert f"spec.model.uri: file not found: {job.parent / 'model.pt2'}" in capsys.readouterr().err
    assert sorted(p.name for p in job.parent.iterdir()) == ["job.yaml"]


def test_run_json_names_the_job_it_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The summary said `"job": null` though the file named the job."""
    job = job_file(tmp_path, dataset="sklearn:digits")
    assert main(["run", str(job), "--json"]) == EXIT_USAGE
    summary = json.loads(capsys.readouterr().out)
    assert summary["job"] == "demo" and "spec.model.uri: file not found" in summary["message"]


def test_stage_run_refuses_a_percentage_max_drop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """objective.maxDrop's rule holds for the flag that passes it to a standalone hpo run."""
    monkeypatch.setenv("KOMPAKTOR_TERMINATION_LOG", str(tmp_path / "termination-log"))
    argv = ["stage", "run", "--type", "hpo", "--input", "m.pt2", "--dataset", "sklearn:digits",
            "--output", str(tmp_path / "o"), "--max-drop", "2"]  # fmt: skip
    assert main(argv) == EXIT_INVALID
    err = capsys.readouterr().err
    assert "stage (hpo): --max-drop: must be below 1 for accuracy" in err and "write 0.02" in err
    assert not (tmp_path / "o").exists()
    _check_max_drop("hpo", "mse", 2.0)  # mse has no upper bound: 2 is a bound


def _parsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """Every command's parser by its words (`stage run`)."""
    found = {parser.prog.removeprefix("kompaktor").strip(): parser}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                found |= _parsers(child)
    return found


def test_every_argument_of_every_command_is_explained() -> None:
    """`kompaktor init --help` listed `example` and `directory` with no word about them."""
    unexplained = [
        f"{words}: {action.dest}"
        for words, parser in _parsers(build_parser()).items()
        for action in parser._actions
        if action.help is None and not isinstance(action, argparse._SubParsersAction)
    ]
    assert unexplained == []


def test_stage_run_type_lists_the_registered_types() -> None:
    run = _parsers(build_parser())["stage run"]
    (help_text,) = [a.help for a in run._actions if a.dest == "type"]
    assert help_text is not None
    assert all(name in help_text for name in registry())


@pytest.mark.parametrize(("argv", "choices"), [([], "{run,init,validate,"), (["stage"], "{run}")])
def test_a_missing_command_lists_the_commands(
    argv: list[str], choices: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """The error said `required: command` (or `stage_command`), names no user typed."""
    with pytest.raises(SystemExit):
        main(argv)
    err = capsys.readouterr().err
    assert f"the following arguments are required: {choices}" in err
    assert "command" not in err.splitlines()[-1]
