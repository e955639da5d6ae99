"""An S3 endpoint that is malformed, or that answers but is not S3, said so where users look:
in the store's errors, in `kompaktor stage run`'s failure and in `kompaktor run`'s error."""

from __future__ import annotations

import functools
import http.server
import json
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from tests.unit.api.test_jobfile import GOOD

from kompaktor.api.run import EXIT_FAILED, EXIT_INVALID, RunFailure
from kompaktor.artifacts import ArtifactError, S3Settings, S3Store
from kompaktor.cli import build_parser, main

if TYPE_CHECKING:
    from tests.support.s3 import S3Server


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


class _AlwaysPage(_Quiet):
    """A web app that answers every path with 200 and a page (a catch-all route)."""

    def do_GET(self) -> None:
        body = b'<!doctype html><html><head><meta charset="utf-8"></head><body>welcome'
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def _serve(handler: Callable[..., http.server.BaseHTTPRequestHandler]) -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.fixture
def web_server(tmp_path: Path) -> Iterator[str]:
    """A plain file server on an empty folder: 404 text/html for GET and HEAD, 501 for PUT."""
    (tmp_path / "www").mkdir()
    yield from _serve(functools.partial(_Quiet, directory=str(tmp_path / "www")))


@pytest.fixture
def page_server() -> Iterator[str]:
    yield from _serve(_AlwaysPage)


@pytest.fixture
def s3_env(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """Credentials and a quick give-up, with the endpoint for the test to set."""
    monkeypatch.setenv("KOMPAKTOR_S3_MAX_ATTEMPTS", "2")
    return monkeypatch


def not_s3(endpoint: str, reply: str) -> str:
    return f"the endpoint {endpoint} (from endpoint_url) did not answer as S3 ({reply})"


# -- the store ------------------------------------------------------------------------------


def test_a_web_server_that_is_not_s3_is_named_not_taken_for_a_missing_bucket(
    s3_env: pytest.MonkeyPatch, web_server: str, tmp_path: Path
) -> None:
    """Its 404 page read as NoSuchBucket ("bucket 'models' does not exist") or as a missing
    artifact, which sent users looking for a bucket instead of at the endpoint."""
    store = S3Store("s3://models/p", settings=S3Settings(endpoint_url=web_server))
    page = "Content-Type text/html;charset=utf-8"
    calls: list[tuple[Callable[[], object], str]] = [
        (lambda: store.exists("m.pt2"), f"HTTP 404, {page}"),
        (lambda: store.digest("m.pt2"), f"HTTP 404, {page}"),
        (lambda: store.get_bytes("m.pt2"), f"HTTP 404, {page}"),
        (lambda: store.get_file("m.pt2", tmp_path / "m.pt2"), f"HTTP 404, {page}"),
        (lambda: store.list(), f"HTTP 404, {page}"),
        (lambda: store.put_bytes("m.pt2", b"x"), f"HTTP 501, {page}"),
    ]
    for call, reply in calls:
        with pytest.raises(ArtifactError) as caught:
            call()
        message = str(caught.value)
        assert message.startswith("cannot ") and "s3://models/p" in message
        assert not_s3(web_server, reply) in message
        assert "does not exist" not in message and "no such artifact" not in message


def test_a_page_with_status_200_is_not_taken_for_a_listing(
    s3_env: pytest.MonkeyPatch, page_server: str
) -> None:
    """botocore makes an unreadable 200 reply a 500 without an S3 error code."""
    store = S3Store("s3://models/p", settings=S3Settings(endpoint_url=page_server, max_attempts=1))
    with pytest.raises(ArtifactError) as caught:
        store.list()
    assert not_s3(page_server, "HTTP 500, Content-Type text/html") in str(caught.value)


def test_a_missing_bucket_on_real_s3_is_still_a_missing_bucket(s3_env: pytest.MonkeyPatch) -> None:
    store = S3Store("s3://no-such-bucket/p")
    with pytest.raises(ArtifactError, match="bucket 'no-such-bucket' does not exist"):
        store.exists("m.pt2")


# -- kompaktor stage run ----------------------------------------------------------------------


def stage_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[int, RunFailure]:
    """`kompaktor stage run` with an S3 input and output; its exit code and failure."""
    termination = tmp_path / "termination-log"
    monkeypatch.setenv("KOMPAKTOR_TERMINATION_LOG", str(termination))
    argv = ["stage", "run", "--type", "train", "--params", "{}", "--input", "s3://models/m.pt2",
            "--dataset", "sklearn:breast_cancer", "--output", "s3://models/runs/t"]  # fmt: skip
    args = build_parser().parse_args(argv)
    code: int = args.handler(args)
    return code, RunFailure.model_validate_json(termination.read_text())


def test_a_stage_with_an_endpoint_without_scheme_fails_for_good_naming_the_variable(
    s3_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """botocore's ValueError ("Invalid endpoint: …") crashed the stage (StageCrashed, retried)."""
    s3_env.setenv("KOMPAKTOR_S3_ENDPOINT_URL", "127.0.0.1:9000")
    code, failure = stage_run(tmp_path, s3_env)
    assert code == EXIT_INVALID
    assert (failure.reason, failure.retryable) == ("ArtifactError", False)
    assert failure.message.startswith(
        "KOMPAKTOR_S3_ENDPOINT_URL='127.0.0.1:9000' is not a valid S3 endpoint: it has no scheme"
    )


def test_a_stage_against_a_web_server_says_it_is_not_s3(
    s3_env: pytest.MonkeyPatch, web_server: str, tmp_path: Path
) -> None:
    s3_env.setenv("KOMPAKTOR_S3_ENDPOINT_URL", web_server)
    code, failure = stage_run(tmp_path, s3_env)
    assert code == EXIT_FAILED and failure.reason == "ArtifactError"
    assert failure.message.startswith("cannot look up s3://models/runs/t/result.json: ")
    assert (
        f"the endpoint {web_server} (from KOMPAKTOR_S3_ENDPOINT_URL) did not answer as S3 "
        "(HTTP 404, Content-Type text/html;charset=utf-8)" in failure.message
    )


# -- kompaktor run ----------------------------------------------------------------------------


def local_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    job = tmp_path / "job.yaml"
    job.write_text(GOOD)
    (tmp_path / "model.pt2").write_bytes(b"a model")  # there, so the store is what fails
    code = main(["run", str(job), "--artifacts", "s3://models/runs", "--json"])
    captured = capsys.readouterr()
    assert json.loads(captured.out)["phase"] == "Failed"
    return code, captured.err


def test_kompaktor_run_with_a_mistyped_scheme_names_the_variable(
    s3_env: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    s3_env.setenv("AWS_ENDPOINT_URL", "htp://127.0.0.1:9000")
    s3_env.delenv("KOMPAKTOR_S3_ENDPOINT_URL")
    code, err = local_run(tmp_path, capsys)
    assert code == EXIT_FAILED
    assert err.startswith(
        "error: AWS_ENDPOINT_URL='htp://127.0.0.1:9000' is not a valid S3 endpoint: scheme 'htp' "
        "is not http or https; want http(s)://host[:port]"
    )


def test_kompaktor_run_against_a_web_server_says_it_is_not_s3(
    s3_env: pytest.MonkeyPatch, web_server: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    s3_env.setenv("KOMPAKTOR_S3_ENDPOINT_URL", web_server)
    code, err = local_run(tmp_path, capsys)
    assert code == EXIT_FAILED
    # the run's first call: reading the job's run lock (kompaktor.executors.run_lock)
    assert err.startswith("error: cannot read s3://models/runs/jobs/demo/run.lock: ")
    assert (
        f"the endpoint {web_server} (from KOMPAKTOR_S3_ENDPOINT_URL) did not answer as S3 "
        "(HTTP 404, Content-Type text/html;charset=utf-8)" in err
    )
