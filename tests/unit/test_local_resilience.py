"""`kompaktor run` rides out a short outage of the store that holds its status file, and the S3
client's retries last long enough for one (a blip of a few seconds failed runs within 0.3 s)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from botocore.retries.standard import ExponentialBackoff

import kompaktor.local as local
from kompaktor.api.jobfile import load_job_file
from kompaktor.api.status import OptimizationJobStatus
from kompaktor.artifacts import ArtifactError, S3Settings
from kompaktor.local import STATUS_GRACE_SECONDS, LocalRun, localize
from tests.unit.api.test_jobfile import GOOD


class FlakyStore:
    """Stands in for the artifact store: puts fail while `down` is true."""

    def __init__(self) -> None:
        self.down = False
        self.puts: list[bytes] = []
        self.failed = 0

    def exists(self, key: str) -> bool:
        return False

    def put_bytes(self, key: str, data: bytes) -> None:
        if self.down:
            self.failed += 1
            raise ArtifactError(f"cannot upload to s3://bucket/{key}: S3 endpoint unreachable")
        self.puts.append(data)


class IdleExecutor:
    """An executor with nothing to do: the scripted plan below decides how the run goes."""

    def __init__(self) -> None:
        self.running: list[Any] = []
        self.shut_down = False

    def claim(self, job: str, artifacts_uri: str) -> list[str]:
        return []

    def ensure(self, request: object) -> None: ...

    def cancel(self, run_id: str) -> None: ...

    def poll(self, timeout: float) -> list[Any]:
        return []

    def shutdown(self) -> None:
        self.shut_down = True


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def scripted(
    phases: list[str], store: FlakyStore, clock: Clock, outage: range | None, changing: bool
) -> Iterator[SimpleNamespace]:
    """One reconcile result per tick (a new message each tick if `changing`); each tick takes
    1 s, and the store is down in `outage`."""
    for tick, phase in enumerate(phases):
        store.down = outage is not None and tick in outage
        message = f"tick {tick}" if changing else None
        status = OptimizationJobStatus(phase=phase, message=message)  # type: ignore[arg-type]
        yield SimpleNamespace(status=status, actions=[])
        clock.now += 1.0


@pytest.fixture
def setup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    job_path = tmp_path / "job.yaml"
    job_path.write_text(GOOD)
    ctx = localize(load_job_file(job_path), job_path.parent, "s3://bucket/prefix")
    store, clock, executor = FlakyStore(), Clock(), IdleExecutor()
    monkeypatch.setattr(local, "open_store", lambda uri: store)

    def start(phases: list[str], outage: range | None = None, changing: bool = True) -> LocalRun:
        ticks = scripted(phases, store, clock, outage, changing)
        monkeypatch.setattr(local, "reconcile", lambda *args: next(ticks))
        return LocalRun(ctx, executor, clock=clock, sleep=clock.sleep)  # type: ignore[arg-type]

    return SimpleNamespace(start=start, store=store, clock=clock, executor=executor)


def test_status_is_written_only_when_it_changes(setup: Any) -> None:
    """The runner PUT status.json every second even when nothing had changed."""
    status = setup.start(["Running"] * 5 + ["Succeeded"], changing=False).run()
    assert status.phase == "Succeeded"
    assert len(setup.store.puts) == 2  # Running once, then Succeeded


def test_a_short_outage_is_a_warning_and_the_run_finishes(
    setup: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    """The store down for a few ticks while stages run: warned once, retried, and the run ends
    with its final status written."""
    status = setup.start(["Running"] * 6 + ["Succeeded"], outage=range(1, 5)).run()
    assert status.phase == "Succeeded"
    assert setup.store.failed == 4  # ticks 1 to 4, each retried on the next
    assert [b"tick 0" in setup.store.puts[0], b"tick 5" in setup.store.puts[1]] == [True, True]
    assert b'"phase": "Succeeded"' in setup.store.puts[-1]
    err = capsys.readouterr().err
    assert err.count("warning: cannot write s3://bucket/prefix/jobs/demo/status.json") == 1
    assert "the stages go on" in err and "written again" in err


def test_an_outage_longer_than_the_grace_period_fails_the_run(setup: Any) -> None:
    ticks = int(STATUS_GRACE_SECONDS) + 5
    run = setup.start(["Running"] * ticks, outage=range(1, 10_000))
    with pytest.raises(ArtifactError, match=r"for 60s, stopping the run"):
        run.run()
    assert setup.clock.now == pytest.approx(STATUS_GRACE_SECONDS + 1, abs=1)
    assert setup.executor.shut_down


def test_the_final_status_is_retried_through_an_outage(setup: Any) -> None:
    store, clock = setup.store, setup.clock
    run = setup.start(["Running", "Succeeded"], outage=range(1, 2))
    original = clock.sleep

    def sleep(seconds: float) -> None:  # the store comes back after 10 s of tries
        original(seconds)
        store.down = clock.now < 11

    run.sleep = sleep
    assert run.run().phase == "Succeeded"
    assert b'"phase": "Succeeded"' in store.puts[-1]
    assert store.failed == 5  # every 2 s


def test_a_final_status_that_cannot_be_written_says_why_the_run_ended(setup: Any) -> None:
    """It said the stages' outputs were in the store, which a failed upload had just proved
    wrong, and not why the run failed: the status it could not write held that."""
    run = setup.start(["Running", "Failed"], outage=range(1, 2))
    with pytest.raises(ArtifactError) as caught:
        run.run()
    message = str(caught.value)
    assert message.startswith("the run ended Failed (tick 1), but its status could not be written")
    assert "s3://bucket/prefix/jobs/demo/status.json" in message
    assert setup.clock.now == pytest.approx(1 + STATUS_GRACE_SECONDS)


def test_an_interrupt_during_an_outage_still_stops_the_run(
    setup: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    run = setup.start(["Running"])

    def interrupt(timeout: float) -> list[Any]:
        setup.store.down = True
        raise KeyboardInterrupt

    monkeypatch.setattr(setup.executor, "poll", interrupt)
    with pytest.raises(KeyboardInterrupt):
        run.run()
    assert "cannot write s3://bucket/prefix/jobs/demo/status.json on the way out" in (
        capsys.readouterr().err
    )
    assert setup.executor.shut_down


def test_an_interrupt_while_the_store_fails_does_not_wait_for_it(
    setup: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Ctrl-C in an outage: no more tries (each waits out the S3 client's retries)."""
    run = setup.start(["Running", "Running"], outage=range(1, 2))
    polls = iter([[], KeyboardInterrupt()])

    def poll(timeout: float) -> list[Any]:
        event = next(polls)
        if isinstance(event, BaseException):
            raise event
        return event

    monkeypatch.setattr(setup.executor, "poll", poll)
    with pytest.raises(KeyboardInterrupt):
        run.run()
    assert setup.store.failed == 1  # the running write, not one more on the way out
    assert "not updated on the way out: the store is failing" in capsys.readouterr().err


def test_an_interrupt_does_not_wait_for_a_store_that_hangs(
    setup: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Ctrl-C while S3 hung (answering nothing): the last status write sat in the S3 client's
    retries, 11 × a 30 s read timeout, and a second Ctrl-C did not stop it either."""
    run = setup.start(["Running"])
    release = threading.Event()

    def hang(key: str, data: bytes) -> None:
        release.wait(30)

    def interrupt(timeout: float) -> list[Any]:
        monkeypatch.setattr(setup.store, "put_bytes", hang)
        raise KeyboardInterrupt

    monkeypatch.setattr(setup.executor, "poll", interrupt)
    monkeypatch.setattr(local, "EXIT_WRITE_SECONDS", 0.2)
    started = time.monotonic()
    try:
        with pytest.raises(KeyboardInterrupt):
            run.run()
        assert time.monotonic() - started < 5
    finally:
        release.set()
    assert "status.json not updated on the way out: the store did not answer in 0.2s" in (
        capsys.readouterr().err
    )


def test_s3_retries_outlast_a_short_outage() -> None:
    """botocore's standard mode backs off 50 ms doubling with full jitter: 5 attempts gave up
    after ~0.4 s; the default now waits ~23 s on average (jitter at its mean, 0.5)."""
    backoff = ExponentialBackoff(random=lambda: 0.5, service_name="s3")
    attempts = S3Settings().max_attempts
    total = sum(
        backoff.delay_amount(SimpleNamespace(attempt_number=n, http_response=None))
        for n in range(1, attempts)  # a delay after each failed attempt but the last
    )
    assert total >= 10.0
