"""The `kompaktor` command line itself: parsing and how errors reach the user."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kompaktor.cli import EXIT_USAGE, build_parser, command_line_uri, main
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
