"""`spec.artifacts.deleteOnJobDeletion` against the emulated cluster: what a deleted job may
take with it. Its own root (the operator's `<artifactsUri>/<namespace>/<name>`) goes whole; on
an explicit, shared `spec.artifacts.uri` only its runs that no other job uses."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from tests.support.cluster import Cluster, optimization_job
from tests.support.kubelet import TestKubelet

from kompaktor.artifacts import local_path

pytestmark = pytest.mark.cluster

FakeCluster = tuple[Cluster, TestKubelet]


def spec(model_uri: str, *stages: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {
        "model": {"uri": model_uri},
        "dataset": {"uri": "sklearn:digits"},
        "stages": list(stages),
        **extra,
    }


def prune(name: str, sparsity: float) -> dict[str, Any]:
    return {"name": name, "type": "prune", "params": {"sparsity": sparsity}}


def run_dir(stage: dict[str, Any]) -> Path:
    """The run folder a stage's output lives in (`<root>/runs/<type>-<key>`)."""
    path = local_path(stage["output"]["uri"])
    assert path is not None
    return path.parent


def whole(folder: Path) -> bool:
    return (folder / "model.pt2").is_file() and (folder / "result.json").is_file()


async def delete(cluster: Cluster, name: str) -> None:
    cluster.emulator.remove(cluster.oj, "default", name)
    await cluster.wait_for(
        lambda: cluster.emulator.get_live(cluster.oj, "default", name) is None,
        30,
        f"{name} to be deleted (its finalizer released)",
    )


async def test_deleting_a_job_on_a_shared_root_keeps_the_runs_other_jobs_use(
    fake_cluster: FakeCluster, model_file: Path, tmp_path: Path
) -> None:
    """`second` reuses `first`'s run of stage a (same key, same root) and `third` reads
    second's output c as its model: deleting `second` takes only its run d; deleting `first`
    later takes a and b, which nobody uses any more, and still not c."""
    cluster, _ = fake_cluster
    await cluster.start_operator()
    shared = tmp_path / "shared"
    artifacts = {"uri": shared.as_uri(), "deleteOnJobDeletion": True}
    model = model_file.as_uri()
    cluster.apply(
        optimization_job(
            "first", spec(model, prune("a", 0.2), prune("b", 0.4), artifacts=artifacts)
        )
    )
    first = (await cluster.wait_phase("first", ("Succeeded", "Failed"), 60))["stages"]
    second_spec = spec(model, prune("a", 0.2), prune("c", 0.5), prune("d", 0.6),
                       artifacts=artifacts)  # fmt: skip
    cluster.apply(optimization_job("second", second_spec))
    second = (await cluster.wait_phase("second", ("Succeeded", "Failed"), 60))["stages"]
    assert second[0]["cached"] and second[0]["output"] == first[0]["output"]
    cluster.apply(optimization_job("third", spec(second[1]["output"]["uri"], prune("e", 0.3))))
    third = (await cluster.wait_phase("third", ("Succeeded", "Failed"), 60))["stages"]
    a, b, c, d = run_dir(first[0]), run_dir(first[1]), run_dir(second[1]), run_dir(second[2])
    assert all(whole(folder) for folder in (a, b, c, d))
    assert {a, b, c, d} <= set((shared / "runs").iterdir())
    stray = shared / "notes.txt"  # under the shared root, but nobody's run
    stray.write_text("kept")

    await delete(cluster, "second")
    assert whole(a) and whole(b), "first's runs (a is shared with second) must stay"
    assert whole(c), "third reads c as its model"
    assert not d.exists(), "second's own run d, used by no other job, must go"
    assert cluster.status("first")["phase"] == "Succeeded"
    assert stray.read_text() == "kept"
    log = cluster.operator_logs()
    assert "runs/" + a.name in log and "default/first has its run key" in log
    assert "default/third names a file in it" in log

    await delete(cluster, "first")
    assert not a.exists() and not b.exists()
    assert whole(c) and stray.read_text() == "kept"
    assert whole(run_dir(third[0])), "third's own root is not touched"


async def test_deleting_a_job_with_its_own_root_deletes_the_whole_root(
    fake_cluster: FakeCluster, model_file: Path, tmp_path: Path
) -> None:
    """No spec.artifacts.uri: the root is the job's alone and goes whole, files that are no
    run's included; a neighbour's root (same config, same runs by key) is not touched."""
    cluster, _ = fake_cluster
    await cluster.start_operator()
    model = model_file.as_uri()
    cluster.apply(
        optimization_job(
            "own", spec(model, prune("a", 0.2), artifacts={"deleteOnJobDeletion": True})
        )
    )
    cluster.apply(optimization_job("near", spec(model, prune("a", 0.2))))
    own = await cluster.wait_phase("own", ("Succeeded", "Failed"), 60)
    near = await cluster.wait_phase("near", ("Succeeded", "Failed"), 60)
    assert own["stages"][0]["key"] == near["stages"][0]["key"]
    root = tmp_path / "store" / "default" / "own"
    assert run_dir(own["stages"][0]).is_relative_to(root) and whole(run_dir(own["stages"][0]))
    (root / "notes.txt").write_text("the job's own root: goes with it")

    await delete(cluster, "own")
    assert not [path for path in root.rglob("*") if path.is_file()]
    assert whole(run_dir(near["stages"][0]))
