"""`kompaktor run`'s stage logs: each artifact root's runs keep their own.

Run ids follow from the job alone, so `kompaktor run job.yaml --artifacts A` and `--artifacts B`
start runs with the same ids. Each run here is a real `kompaktor stage run` process that finds
its output already finished (result.json) and reports it: a second or two, no training.
"""

from __future__ import annotations

from pathlib import Path

from kompaktor.api.run import RESULT_FILE, RunRecord
from kompaktor.api.status import OutputRef
from kompaktor.artifacts import FileStore
from kompaktor.executors.local import ROOT_FILE, LocalExecutor
from kompaktor.plan import Observation, RunFailed, RunRequest, RunStarted, RunSucceeded

RUN_ID = "tune-0123456789-a1"


def request(root: Path) -> RunRequest:
    """One run of the job, with its output under `root` (plan.keys.output_uri's layout)."""
    return RunRequest(run_id=RUN_ID, job="demo", stage="tune", stage_type="train", params={},
                      key="0123456789" * 3, input_uri=str(root / "model.pt2"),
                      dataset_uri="sklearn:digits", output_uri=f"{root.as_uri()}/runs/train-0123",
                      reference_uri=str(root / "model.pt2"), metric="accuracy",
                      task="classification", seed=0, attempt=1)  # fmt: skip


def finished(root: Path) -> Path:
    """`root` with the run already finished there: its result.json names a model in `root`."""
    output = OutputRef(
        uri=f"{root.as_uri()}/runs/train-0123/model.pt2", digest="sha256:" + "0" * 64
    )
    record = RunRecord(type="train", output=output, format="pt2")
    FileStore(root).put_bytes(f"runs/train-0123/{RESULT_FILE}", record.model_dump_json().encode())
    return root


def outcome(executors: list[LocalExecutor]) -> list[Observation]:
    """Each executor's end of its one run (after its RunStarted)."""
    ends: list[Observation | None] = [None] * len(executors)
    while None in ends:
        for index, executor in enumerate(executors):
            for event in executor.poll(0.05):
                if not isinstance(event, RunStarted):
                    ends[index] = event
    return [end for end in ends if end is not None]


def logs(folder: Path) -> dict[str, str]:
    return {path.parent.name: path.read_text() for path in folder.rglob("*.log")}


def assert_own(end: Observation, root: Path) -> None:
    assert isinstance(end, RunSucceeded), end
    assert end.record.output.uri.startswith(f"{root.as_uri()}/")


def test_runs_to_two_roots_one_after_the_other_keep_their_own_logs(tmp_path: Path) -> None:
    """`--artifacts B` after `--artifacts A` appended B's log to A's ("started again"), so the
    file showed both runs; a resumed run of A still appends to A's."""
    a, b = finished(tmp_path / "A"), finished(tmp_path / "B")
    folder = tmp_path / "logs"
    for root in (a, b):
        executor = LocalExecutor(folder)
        executor.ensure(request(root))
        (end,) = outcome([executor])
        assert_own(end, root)

    by_folder = logs(folder)
    assert len(by_folder) == 2
    for name, text in by_folder.items():
        root = a if name.startswith("A-") else b
        assert (folder / name / ROOT_FILE).read_text() == f"{root.as_uri()}\n"
        assert f"{root.as_uri()}/runs/train-0123 already has a finished run" in text
        other = b if root == a else a
        assert other.as_uri() not in text and "started again" not in text

    again = LocalExecutor(folder)  # A resumed: same root, same run id
    again.ensure(request(a))
    (end,) = outcome([again])
    assert_own(end, a)
    resumed = next(text for name, text in logs(folder).items() if name.startswith("A-"))
    assert resumed.count("already has a finished run") == 2 and "started again" in resumed


def test_runs_to_two_roots_at_once_keep_their_own_logs_and_results(tmp_path: Path) -> None:
    """Both wrote one log and one termination message file: each log held both runs, and a
    run could be reported with the other's result (a model in the other root)."""
    a, b = finished(tmp_path / "A"), finished(tmp_path / "B")
    executors = [LocalExecutor(tmp_path / "logs"), LocalExecutor(tmp_path / "logs")]
    executors[0].ensure(request(a))
    executors[1].ensure(request(b))

    for end, root in zip(outcome(executors), (a, b), strict=True):
        assert_own(end, root)
    texts = logs(tmp_path / "logs")
    assert len(texts) == 2
    assert sum(a.as_uri() in text for text in texts.values()) == 1
    assert sum(b.as_uri() in text for text in texts.values()) == 1


def test_a_failed_run_keeps_its_log_beside_its_roots_other_logs(tmp_path: Path) -> None:
    root = tmp_path / "A"  # nothing there: the input does not exist
    executor = LocalExecutor(tmp_path / "logs")
    executor.ensure(request(root))
    (end,) = outcome([executor])
    assert isinstance(end, RunFailed) and end.reason == "ArtifactError"
    ((name, text),) = logs(tmp_path / "logs").items()
    assert name.startswith("A-") and f"failed (ArtifactError): no artifact at {root}/" in text
