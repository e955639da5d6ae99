"""What `deleteOnJobDeletion` may delete on a shared artifacts root, decided without a cluster:
the run folders a job's status names, the other jobs that still use them, and the handler's
refusal to delete anything when it cannot list the other jobs."""

from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from kompaktor.artifacts import open_store
from kompaktor.config import OperatorConfig
from kompaktor.controller import handlers
from kompaktor.controller.cleanup import job_runs, shared_runs
from kompaktor.controller.handlers import Runtime
from kompaktor.controller.kube import ApiError, all_crs_path, cr_path
from kompaktor.plan.keys import output_uri

ROOT = "s3://bucket/shared"
K1, K2, K3, K4, K5 = ("1" * 64, "2" * 64, "3" * 64, "4" * 64, "5" * 64)
CONFIG = OperatorConfig.model_validate({"artifactsUri": "s3://bucket/default"})


def folder(stage_type: str, key: str) -> str:
    return output_uri("", stage_type, key).lstrip("/")


def job(
    name: str,
    status: dict[str, Any],
    *,
    uri: str | None = ROOT,
    namespace: str = "default",
    model: str = "s3://bucket/in.pt2",
    **meta: Any,
) -> dict[str, Any]:
    artifacts = {"deleteOnJobDeletion": True} | ({"uri": uri} if uri else {})
    return {
        "metadata": {"name": name, "namespace": namespace, **meta},
        "spec": {
            "model": {"uri": model},
            "dataset": {"uri": "sklearn:digits"},
            "stages": [{"name": "a", "type": "prune", "params": {"sparsity": 0.2}}],
            "artifacts": artifacts,
        },
        "status": status,
    }


def stage(name: str, stage_type: str, key: str, root: str = ROOT) -> dict[str, Any]:
    out = output_uri(root, stage_type, key)
    return {"name": name, "type": stage_type, "key": key,
            "output": {"uri": f"{out}/model.pt2", "digest": "sha256:0"}}  # fmt: skip


def test_a_jobs_runs_are_its_stages_pool_runs_and_trials() -> None:
    spec = {"stages": [
        {"name": "tune", "type": "hpo", "params": {"target": "prune"}},
        {"name": "bench", "type": "benchmark", "pools": ["cpu", "arm"]},
    ]}  # fmt: skip
    best = output_uri(ROOT, "prune", K2)
    status = {
        "stages": [
            {"name": "tune", "type": "hpo", "key": K1,
             "output": {"uri": f"{best}/model.pt2", "digest": "sha256:0"}},
            {"name": "bench", "type": "benchmark", "key": K3,
             "pools": [{"key": K3, "pool": "cpu"}, {"key": K4, "pool": "arm"}]},
            {"name": "later", "type": "prune"},  # not planned yet: no key
        ],
        "trials": [{"stage": "tune", "number": 0, "key": K2},
                   {"stage": "tune", "number": 1, "key": K5}],
        "result": {"uri": "s3://elsewhere/final.pt2"},
    }  # fmt: skip
    runs, outside = job_runs(ROOT + "/", spec, status)
    assert runs == sorted([
        folder("hpo", K1), folder("prune", K2), folder("prune", K5),
        folder("benchmark", K3), folder("benchmark", K4),
    ])  # fmt: skip
    assert outside == ["s3://elsewhere/final.pt2"]
    assert job_runs(ROOT, spec, None) == ([], [])


def test_only_runs_no_other_job_uses_may_go() -> None:
    mine = [folder("prune", key) for key in (K1, K2, K3, K4, K5)]
    others = [
        # Runs K1 right now (no output yet): its key is enough.
        job("same-root", {"stages": [{"name": "a", "type": "prune", "key": K1}]}),
        # The same key under another root is another run folder: it does not keep K2's.
        job("own-root", {"stages": [stage("a", "prune", K2, "s3://bucket/default/x")]}, uri=None),
        # Reads one of the runs as its model (a file under the folder, spelled differently).
        job("reader", {}, uri=None, model="s3://bucket//shared/" + mine[2] + "/model.pt2"),
        # Going away too, deleting its own runs: does not keep K4.
        job("leaving", {"stages": [stage("a", "prune", K4)]}, deletionTimestamp="2024-01-01"),
        # An invalid spec: its root is unknown, so its keys count wherever it writes.
        job("broken", {"trials": [{"stage": "t", "number": 0, "key": K5}]}) | {"spec": {}},
    ]
    doomed, kept = shared_runs(ROOT, mine, others, CONFIG)
    assert doomed == [folder("prune", K2), folder("prune", K4)]
    assert kept == {
        mine[0]: ["default/same-root has its run key"],
        mine[2]: ["default/reader names a file in it"],
        mine[4]: ["default/broken has its run key (its artifacts root is unknown)"],
    }


def test_file_roots_match_however_the_uri_is_spelled(tmp_path: Path) -> None:
    root = (tmp_path / "shared").as_uri()
    mine = [folder("prune", K1)]
    reader = job("reader", {}, uri=None, model=str(tmp_path / "shared" / mine[0] / "model.pt2"))
    assert shared_runs(root, mine, [reader], CONFIG)[0] == []
    same_root = job("plain", {"stages": [{"key": K1}]}, uri=str(tmp_path / "shared") + "/")
    assert shared_runs(root, mine, [same_root], CONFIG)[0] == []


class FakeKube:
    def __init__(self, jobs: dict[str, list[dict[str, Any]] | ApiError]) -> None:
        self.jobs = jobs
        self.asked: list[str] = []

    async def list(self, path: str, selector: str | None = None) -> list[dict[str, Any]]:
        self.asked.append(path)
        found = self.jobs[path]
        if isinstance(found, ApiError):
            raise found
        return found


def memo(kube: FakeKube, **config: Any) -> SimpleNamespace:
    rt = Runtime(None, None)
    rt.config = OperatorConfig.model_validate(config)
    rt._kube = kube  # type: ignore[assignment]
    return SimpleNamespace(kompaktor=rt)


def shared_store(tmp_path: Path) -> tuple[str, list[str]]:
    root = (tmp_path / "shared").as_uri()
    store = open_store(root)
    runs = [folder("prune", K1), folder("prune", K2)]
    for run in runs:
        store.put_bytes(f"{run}/model.pt2", b"model")
        store.put_bytes(f"{run}/result.json", b"{}")
    store.put_bytes("notes.txt", b"nobody's run")
    return root, runs


async def delete(
    body: dict[str, Any], memo: SimpleNamespace, caplog: pytest.LogCaptureFixture
) -> None:
    meta = body["metadata"]
    logger = logging.getLogger("test.deletion")
    with caplog.at_level(logging.INFO, logger="test.deletion"):
        await handlers._delete_artifacts(
            body=body, name=meta["name"], namespace=meta["namespace"], memo=memo, logger=logger
        )


async def test_when_the_other_jobs_cannot_be_listed_nothing_is_deleted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root, runs = shared_store(tmp_path)
    gone = job("gone", {"stages": [stage("a", "prune", K1, root)]}, uri=root)
    kube = FakeKube({all_crs_path(): ApiError(500, "etcd is down")})
    await delete(gone, memo(kube), caplog)
    assert open_store(root).list() == sorted([f"{r}/{f}" for r in runs
                                              for f in ("model.pt2", "result.json")]
                                             + ["notes.txt"])  # fmt: skip
    assert "cannot list the OptimizationJobs" in caplog.text and "etcd is down" in caplog.text


async def test_without_cluster_wide_access_each_watched_namespace_is_listed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root, runs = shared_store(tmp_path)
    gone = job("gone", {"stages": [stage("a", "prune", K1, root), stage("b", "prune", K2, root)]},
               uri=root, namespace="team-a")  # fmt: skip
    user = job("user", {"stages": [stage("a", "prune", K1, root)]}, uri=root, namespace="team-b")
    kube = FakeKube({
        all_crs_path(): ApiError(403, "forbidden"),
        cr_path("team-a"): [gone],
        cr_path("team-b"): [user],
    })  # fmt: skip
    await delete(gone, memo(kube, namespaces=["team-b"]), caplog)
    assert kube.asked == [all_crs_path(), cr_path("team-b"), cr_path("team-a")]
    assert open_store(root).list() == sorted(
        [f"{runs[0]}/model.pt2", f"{runs[0]}/result.json", "notes.txt"]
    )
    assert f"kept {root}/{runs[0]}: team-b/user has its run key" in caplog.text

    # Namespaced access, but no namespaces configured: the watched ones are unknown.
    root, runs = shared_store(tmp_path / "again")
    kube = FakeKube({all_crs_path(): ApiError(403, "forbidden")})
    await delete(job("gone", {"stages": [stage("a", "prune", K2, root)]}, uri=root),
                 memo(kube), caplog)  # fmt: skip
    assert len(open_store(root).list()) == 5 and kube.asked == [all_crs_path()]


async def test_a_jobs_own_root_goes_whole_without_asking_the_cluster(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = tmp_path / "store"
    root = store / "default" / "mine"
    open_store(root.as_uri()).put_bytes("runs/x/model.pt2", b"m")
    open_store(root.as_uri()).put_bytes("notes.txt", b"n")
    open_store(store.as_uri()).put_bytes("default/other/runs/x/model.pt2", b"m")
    kube = FakeKube({})  # any call would fail
    await delete(job("mine", {}, uri=None), memo(kube, artifactsUri=store.as_uri()), caplog)
    assert open_store(store.as_uri()).list() == ["default/other/runs/x/model.pt2"]
    assert kube.asked == []
