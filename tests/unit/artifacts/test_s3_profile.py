"""An AWS profile variable naming a profile no file defines is a configuration error that says
which variable named it and where profiles are read from, in the store, in `kompaktor stage run`
and in `kompaktor run`; botocore's bare ProfileNotFound named no setting."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from kompaktor.api.run import EXIT_INVALID, RunFailure
from kompaktor.artifacts import open_store
from kompaktor.artifacts.s3 import S3Store
from kompaktor.artifacts.s3_errors import S3ConfigError
from kompaktor.cli import EXIT_FAILED, main


@pytest.fixture(autouse=True)
def aws_files(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """A config file defining `other`, and a credentials file defining `default`; nothing
    else from the host's AWS environment. Returns the config file."""
    for name in list(os.environ):
        if name.startswith(("AWS_", "KOMPAKTOR_S3_")):
            monkeypatch.delenv(name)
    config = tmp_path / "config"
    config.write_text("[profile other]\nregion = eu-west-1\n")
    credentials = tmp_path / "credentials"
    credentials.write_text("[default]\naws_access_key_id = k\naws_secret_access_key = s\n")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(config))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(credentials))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("KOMPAKTOR_S3_ENDPOINT_URL", "http://127.0.0.1:9")
    return config


def profile_problem(variable: str, tmp_path: Path) -> str:
    """The start of the message for `variable`='missing', with the fixture's two files."""
    return (
        f"{variable}='missing' names an AWS profile that is not defined: profiles are read from "
        f"{tmp_path / 'config'} (from AWS_CONFIG_FILE) and {tmp_path / 'credentials'} (from "
        "AWS_SHARED_CREDENTIALS_FILE), which define: default, other; "
    )


@pytest.mark.parametrize("variable", ["AWS_PROFILE", "AWS_DEFAULT_PROFILE"])
def test_a_missing_profile_names_its_variable_and_the_files(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, variable: str
) -> None:
    monkeypatch.setenv(variable, "missing")
    with pytest.raises(S3ConfigError) as caught:
        open_store("s3://bucket/prefix")
    message = str(caught.value)
    assert message.startswith(profile_problem(variable, tmp_path))
    assert message.endswith(f"set {variable} to a defined profile, or unset it")


def test_default_files_are_named_as_defaults(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("AWS_CONFIG_FILE")
    monkeypatch.delenv("AWS_SHARED_CREDENTIALS_FILE")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("AWS_PROFILE", "missing")
    home = tmp_path / "home" / ".aws"
    with pytest.raises(S3ConfigError) as caught:
        open_store("s3://bucket/prefix")
    assert (
        f"read from {home / 'config'} (the default; AWS_CONFIG_FILE is unset, no such file) and "
        f"{home / 'credentials'} (the default; AWS_SHARED_CREDENTIALS_FILE is unset, no such "
        "file), which define: none; " in str(caught.value)
    )


def test_the_profile_once_defined_gets_a_client_that_is_shared(
    monkeypatch: pytest.MonkeyPatch, aws_files: Path
) -> None:
    """The client cache is not poisoned by the failure: editing the file is seen at once."""
    monkeypatch.setenv("AWS_PROFILE", "missing")
    with pytest.raises(S3ConfigError):
        open_store("s3://bucket/prefix")
    with aws_files.open("a") as config:
        config.write("[profile missing]\nregion = us-east-1\n")
    first, second = open_store("s3://bucket/prefix"), open_store("s3://bucket/other")
    assert isinstance(first, S3Store) and isinstance(second, S3Store)
    assert first.client is second.client
    assert first.client.meta.region_name == "us-east-1"


def test_a_stage_run_fails_without_retry_and_says_why(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("AWS_PROFILE", "missing")
    termination = tmp_path / "termination-log"
    monkeypatch.setenv("KOMPAKTOR_TERMINATION_LOG", str(termination))
    model = str(tmp_path / "model.pt2")
    output = "s3://bucket/runs/train-1"
    code = main(["stage", "run", "--type", "train", "--input", model,
                 "--dataset", "sklearn:digits", "--output", output])  # fmt: skip
    assert code == EXIT_INVALID
    failure = RunFailure.model_validate_json(termination.read_text())
    assert failure.reason == "ArtifactError" and not failure.retryable
    assert failure.message.startswith(profile_problem("AWS_PROFILE", tmp_path))


def test_kompaktor_run_says_why(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("AWS_PROFILE", "missing")
    job = tmp_path / "job.yaml"
    job.write_text(
        "apiVersion: kompaktor.io/v1alpha1\nkind: OptimizationJob\nmetadata: {name: demo}\n"
        "spec:\n  model: {uri: model.pt2}\n  dataset: {uri: 'sklearn:digits'}\n"
        "  stages: [{name: bench, type: benchmark}]\n"
    )
    (tmp_path / "model.pt2").write_bytes(b"a model")  # there, so the store is what fails
    assert main(["run", str(job), "--artifacts", "s3://bucket/demo", "--json"]) == EXIT_FAILED
    captured = capsys.readouterr()
    assert captured.err.startswith(f"error: {profile_problem('AWS_PROFILE', tmp_path)}")
    assert json.loads(captured.out)["message"].startswith(profile_problem("AWS_PROFILE", tmp_path))


def test_a_key_id_without_its_secret_names_the_missing_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """It was botocore's bare PartialCredentialsError, with no advice. (A secret alone is
    no environment credential to botocore: the next provider is asked.)"""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    with pytest.raises(S3ConfigError) as caught:
        open_store("s3://bucket/prefix")
    assert str(caught.value) == (
        "incomplete S3 credentials from env: AWS_SECRET_ACCESS_KEY is not set; set both "
        "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or neither (to use AWS_PROFILE or a pod "
        "identity)"
    )
