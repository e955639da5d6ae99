"""One `kompaktor run` of a job to an S3 root at a time, whichever machine it runs on.

The run lock was a file in the logs folder: runs with other `--logs`, or on two machines sharing
the bucket (CI runners, two laptops), were not held off and both ran every stage. On S3 the lock
is a lease object beside status.json, taken and renewed with conditional writes (against moto's
server on 127.0.0.1).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

import pytest
from tests.unit.api.test_jobfile import GOOD
from tests.unit.test_local_exclusive import HOLDS_DEMO, wait_for

import kompaktor.local as local
from kompaktor.api.jobfile import load_job_file
from kompaktor.api.status import OptimizationJobStatus
from kompaktor.artifacts import S3Store
from kompaktor.artifacts.s3 import PreconditionFailedError
from kompaktor.executors.leftovers import process_start_time
from kompaktor.executors.local import LocalExecutor
from kompaktor.executors.run_lock import RUN_LOCK_KEY, RunInProgressError, RunLeaseLostError
from kompaktor.local import LocalRun, localize

if TYPE_CHECKING:
    from tests.support.s3 import S3Server

LEASE = RUN_LOCK_KEY.format(job="demo")


def lease_object(server: S3Server, root: str) -> dict[str, Any] | None:
    """The lease's record as the bucket holds it, None when there is none."""
    bucket, prefix = root.removeprefix("s3://").split("/", 1)
    client = server.client()
    try:
        body = client.get_object(Bucket=bucket, Key=f"{prefix}/{LEASE}")["Body"].read()
    except client.exceptions.NoSuchKey:
        return None
    record: dict[str, Any] = json.loads(body)
    return record


def test_conditional_writes_let_only_the_writer_that_saw_the_last_version_through(
    s3_server: S3Server, s3_bucket: str
) -> None:
    store = S3Store(s3_bucket)
    assert store.read_versioned("k") is None
    first = store.put_if("k", b"one", etag=None)
    with pytest.raises(PreconditionFailedError, match=r"cannot write .*/prefix/k: it changed"):
        store.put_if("k", b"two", etag=None)  # there is one now
    second = store.put_if("k", b"two", etag=first)
    with pytest.raises(PreconditionFailedError):
        store.put_if("k", b"three", etag=first)  # written since
    with pytest.raises(PreconditionFailedError):
        store.delete_if("k", etag=first)
    found = store.read_versioned("k")
    assert found is not None and (found.data, found.etag) == (b"two", second)
    assert 0 <= found.age_seconds < 5
    store.delete_if("k", etag=second)
    assert store.read_versioned("k") is None


def test_a_second_claim_is_refused_while_the_first_holds_whatever_its_logs(
    tmp_path: Path, s3_server: S3Server, s3_bucket: str
) -> None:
    """Refused naming the holder, its last heartbeat and when its lease expires; the first
    run's end deletes the lease, and the job can be run again at once."""
    first = LocalExecutor(tmp_path / "logs", heartbeat_seconds=0.2, lease_expiry_seconds=30)
    second = LocalExecutor(tmp_path / "other-logs")
    assert first.claim("demo", s3_bucket) == []
    holder = lease_object(s3_server, s3_bucket)
    assert holder is not None and holder["pid"] == os.getpid()
    assert holder["host"] == socket.gethostname()
    with pytest.raises(RunInProgressError) as refused:
        second.claim("demo", s3_bucket)
    message = str(refused.value)
    assert message.startswith(
        f"job demo is already running to {s3_bucket}: `kompaktor run` pid {os.getpid()} "
        f"(started {holder['started']}) on {socket.gethostname()} holds its lease "
        f"{s3_bucket}/{LEASE} (last renewed 20"
    )
    assert "the lease expires in 29s" in message or "the lease expires in 30s" in message

    renewed = holder["heartbeat"]
    wait_for(lambda: lease_object(s3_server, s3_bucket) != holder, 5, "a renewal")
    assert (lease_object(s3_server, s3_bucket) or {})["heartbeat"] >= renewed
    first.shutdown()
    assert lease_object(s3_server, s3_bucket) is None
    assert second.claim("demo", s3_bucket) == []
    second.shutdown()


def test_an_expired_lease_is_taken_over_and_its_old_holder_leaves_it_be(
    tmp_path: Path, s3_server: S3Server, s3_bucket: str
) -> None:
    """A lease not renewed for its holder's expiry (its machine died, or it hung) is taken
    over; the old holder, when it ends, does not delete the new holder's lease."""
    stalled = LocalExecutor(tmp_path / "logs", heartbeat_seconds=60, lease_expiry_seconds=1.5)
    stalled.claim("demo", s3_bucket)
    taker = LocalExecutor(tmp_path / "other-logs")
    with pytest.raises(RunInProgressError, match=r"expires in [12]s"):
        taker.claim("demo", s3_bucket)
    time.sleep(2.1)
    assert taker.claim("demo", s3_bucket) == []
    taken = lease_object(s3_server, s3_bucket)
    assert taken is not None and taken["processes"].startswith(str(tmp_path / "other-logs"))
    stalled.shutdown()
    assert lease_object(s3_server, s3_bucket) == taken
    taker.shutdown()
    assert lease_object(s3_server, s3_bucket) is None


def test_a_dead_holder_on_this_machine_is_taken_over_at_once(
    tmp_path: Path, s3_server: S3Server, s3_bucket: str
) -> None:
    """A run killed outright leaves its lease; the next run on the same machine sees its pid
    gone and takes the job without waiting out the expiry (60 s here)."""
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDS_DEMO, str(tmp_path / "logs"), s3_bucket],
        stdout=subprocess.PIPE,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline(), "the holder did not claim"
        start = process_start_time(holder.pid)
        assert (lease_object(s3_server, s3_bucket) or {})["start"] == start
        other = LocalExecutor(tmp_path / "other-logs")
        with pytest.raises(RunInProgressError, match=rf"pid {holder.pid} .*expires in (59|60)s"):
            other.claim("demo", s3_bucket)
    finally:
        holder.kill()
        holder.wait(timeout=10)
    assert lease_object(s3_server, s3_bucket) is not None  # left behind by the kill
    assert other.claim("demo", s3_bucket) == []
    assert (lease_object(s3_server, s3_bucket) or {})["pid"] == os.getpid()
    other.shutdown()


# `kompaktor run` (LocalRun) to an S3 root, its plan scripted.


@pytest.fixture
def scripted_run(
    tmp_path: Path, s3_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> Callable[[list[str], Callable[[int], None]], LocalRun]:
    """A LocalRun of job demo to `s3_bucket` with a real executor renewing every 0.2 s, whose
    plan goes through `phases`, one per step, calling `at(step)` at each."""
    (tmp_path / "job.yaml").write_text(GOOD)
    ctx = localize(load_job_file(tmp_path / "job.yaml"), tmp_path, s3_bucket)

    def make(phases: list[str], at: Callable[[int], None]) -> LocalRun:
        def steps() -> Iterator[SimpleNamespace]:
            for step, phase in enumerate(phases):
                at(step)
                status = OptimizationJobStatus(phase=phase, message=f"step {step}")  # type: ignore[arg-type]
                yield SimpleNamespace(status=status, actions=[])

        plan = steps()
        monkeypatch.setattr(local, "reconcile", lambda *args: next(plan))
        executor = LocalExecutor(tmp_path / "logs", heartbeat_seconds=0.2)
        return LocalRun(ctx, executor)

    return make


def nothing(step: int) -> None: ...


def interrupt_at_second_step(step: int) -> None:
    if step == 1:
        raise KeyboardInterrupt


@pytest.mark.parametrize(
    ("phases", "at", "raised"),
    [
        (["Running", "Succeeded"], nothing, None),
        (["Running", "Failed"], nothing, None),
        (["Running", "Running"], interrupt_at_second_step, KeyboardInterrupt),
    ],
    ids=["success", "failure", "ctrl-c"],
)
def test_the_lease_is_held_while_the_run_goes_and_deleted_however_it_ends(
    scripted_run: Callable[[list[str], Callable[[int], None]], LocalRun],
    s3_server: S3Server,
    s3_bucket: str,
    phases: list[str],
    at: Callable[[int], None],
    raised: type[BaseException] | None,
) -> None:
    held: list[dict[str, Any] | None] = []

    def note(step: int) -> None:
        held.append(lease_object(s3_server, s3_bucket))
        at(step)

    run = scripted_run(phases, note)
    if raised is None:
        assert run.run().phase == phases[-1]
    else:
        with pytest.raises(raised):
            run.run()
    assert all(record is not None and record["pid"] == os.getpid() for record in held)
    assert lease_object(s3_server, s3_bucket) is None


def test_a_run_whose_lease_was_taken_stops_at_its_next_renewal(
    scripted_run: Callable[[list[str], Callable[[int], None]], LocalRun],
    s3_server: S3Server,
    s3_bucket: str,
) -> None:
    """Another run took the lease (as one on another machine does once it has expired): this
    run finds out at its next renewal and stops with an error naming the new holder, writing no
    more status and leaving the lease to its holder."""
    bucket, prefix = s3_bucket.removeprefix("s3://").split("/", 1)
    thief = {"pid": 4242, "host": "ci-runner-7", "started": "2030-01-01T00:00:00Z"}

    steps: list[int] = []

    def take_it(step: int) -> None:
        steps.append(step)
        if step == 1:
            s3_server.client().put_object(
                Bucket=bucket, Key=f"{prefix}/{LEASE}", Body=json.dumps(thief).encode()
            )

    run = scripted_run(["Running"] * 10, take_it)
    with pytest.raises(RunLeaseLostError) as lost:
        run.run()
    assert str(lost.value).startswith(
        f"job demo: this run's lease {s3_bucket}/{LEASE} was taken over by `kompaktor run` "
        "pid 4242 (started 2030-01-01T00:00:00Z) on ci-runner-7; so that two runs never run "
        "its stages at once, this run stops its stages and writes no more status"
    )
    assert lease_object(s3_server, s3_bucket) == thief
    # Found out while waiting after step 1 (renewals come every 0.2 s, steps every 1 s), or
    # after step 2 on a busy machine; no status was written after it did.
    assert steps in ([0, 1], [0, 1, 2])
    status = S3Store(s3_bucket).get_bytes("jobs/demo/status.json")
    assert json.loads(status)["message"] == f"step {steps[-1]}"


def test_a_lease_that_cannot_be_renewed_for_its_expiry_stops_the_run(
    tmp_path: Path, s3_server: S3Server, s3_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The store out of reach: once the lease has gone unrenewed as long as others wait before
    they take it over, the run stops rather than run beside the one that may have."""
    monkeypatch.setenv("KOMPAKTOR_S3_MAX_ATTEMPTS", "1")
    monkeypatch.setenv("KOMPAKTOR_S3_TIMEOUT", "0.5")
    executor = LocalExecutor(tmp_path / "logs", heartbeat_seconds=0.2, lease_expiry_seconds=1)
    executor.claim("demo", s3_bucket)
    s3_server.stop()
    try:
        with pytest.raises(RunLeaseLostError, match=r"could not be renewed for 1s \(cannot"):
            executor.poll(5)
    finally:
        executor.shutdown()
        s3_server.start()
