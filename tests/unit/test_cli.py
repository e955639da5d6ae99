"""The `kompaktor` command line itself: parsing and how errors reach the user."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from kompaktor.cli import EXIT_USAGE, build_parser, command_line_uri, invoked_as, main
from kompaktor.errors import JobSpecError


def test_debug_is_taken_before_or_after_the_subcommand(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Errors say "run with --debug"; users add it at the end of the line they ran, which the
    top-level flag alone refused."""
    missing = str(tmp_path / "none.yaml")
    assert main(["validate", missing]) == EXIT_USAGE
    assert "error: cannot read job file" in capsys.readouterr().err
    for argv in (["--debug", "validate", missing], ["validate", missing, "--debug"]):
        with pytest.raises(JobSpecError, match="cannot read job file"):
            main(argv)
    stage = ["stage", "run", "--type", "t", "--input", "m", "--dataset", "d", "--output", "o"]
    assert build_parser().parse_args([*stage, "--debug"]).debug is True
    assert build_parser().parse_args(["--debug", *stage]).debug is True


def test_a_relative_artifacts_path_on_the_command_line_is_relative_to_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`--artifacts out` resolved beside the job file, while `--logs out` resolved here."""
    monkeypatch.chdir(tmp_path)
    assert command_line_uri("out") == str(tmp_path / "out")
    assert command_line_uri("s3://bucket/prefix") == "s3://bucket/prefix"
    assert command_line_uri(None) is None


def test_a_logs_folder_that_cannot_be_written_names_the_flag(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A job in a read-only folder failed with PermissionError on .kompaktor and no hint."""
    from kompaktor.quickstart import init_digits

    job = init_digits(tmp_path / "demo", full=False)
    blocker = tmp_path / "file"
    blocker.write_text("")  # a folder cannot be made under a file, even by root
    assert main(["run", str(job), "--logs", str(blocker / "logs")]) == 1
    assert "choose a folder with --logs" in capsys.readouterr().err


def test_run_json_prints_a_summary_even_when_the_job_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A bad job file printed its error on stderr and nothing on stdout, so a script reading
    the promised JSON summary failed on empty input instead of seeing the failure."""
    job = tmp_path / "job.yaml"
    job.write_text("apiVersion: kompaktor.io/v1alpha1\nkind: OptimizationJob\nspec: {}\n")
    assert main(["run", str(job), "--json"]) == EXIT_USAGE
    out = json.loads(capsys.readouterr().out)
    assert out["phase"] == "Failed" and "metadata" in out["message"]


def test_the_next_hint_names_the_command_as_it_was_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`next: kompaktor run …` did not run in a fresh clone, where only .venv/bin has it."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    on_path = bin_dir / "kompaktor"
    on_path.write_text("#!/bin/sh\n")
    on_path.chmod(0o755)
    monkeypatch.setenv("PATH", str(bin_dir))
    assert invoked_as(".venv/bin/kompaktor") == [".venv/bin/kompaktor"]
    assert invoked_as(str(on_path)) == ["kompaktor"]
    assert invoked_as("kompaktor") == ["kompaktor"]
    assert invoked_as("/src/operator/kompaktor/cli.py")[1:] == ["-m", "kompaktor.cli"]


def test_init_refuses_an_existing_job_and_names_force(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The refusal said only "remove it", not the flag that redoes the folder."""
    job = tmp_path / "job.yaml"
    job.write_text("edited")
    assert main(["init", "digits", str(tmp_path)]) == 1
    assert "pass --force" in capsys.readouterr().err
    assert job.read_text() == "edited"


@pytest.mark.slow
def test_init_force_reports_progress_and_the_next_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Init was silent for a minute or more, could not redo a folder, and its `next:` line
    named a `kompaktor` that is not on PATH after the install."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    monkeypatch.setattr(sys, "argv", [".venv/bin/kompaktor"])
    Path("demo").mkdir()
    Path("demo/job.yaml").write_text("edited")
    assert main(["init", "digits", "demo", "--simple", "--force"]) == 0
    out, err = capsys.readouterr()
    assert out.splitlines() == [
        "wrote demo/job.yaml",
        "next: .venv/bin/kompaktor run demo/job.yaml",
    ]
    assert "epoch 8/8: validation accuracy" in err
    assert "writing demo/model.pt2" in err
    assert Path("demo/job.yaml").read_text() != "edited"
