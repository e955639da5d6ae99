"""Controller latency and memory against the emulated API server.

Creates N OptimizationJobs (default 200) one after another and measures, for each, the time
from its creation to the first batch Job the operator creates for it (p50 / p99), and the
operator's resident memory (MiB) idle, before the first job, and with all N live. Stages never
run (no kubelet): the figures are the controller's own. The operator runs in a child process so
its RSS is its own.

    python bench/controller.py [--jobs 200]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support.cluster import Cluster, optimization_job  # noqa: E402


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def main(jobs: int) -> None:
    with tempfile.TemporaryDirectory(prefix="kompaktor-bench-") as folder:
        await measure(jobs, Path(folder))


def has_batch_job(cluster: Cluster, name: str) -> bool:
    """Whether the operator has created a batch Job for the OptimizationJob `name`."""
    return any(j["metadata"]["labels"]["kompaktor.io/job"] == name for j in cluster.jobs())


async def measure(jobs: int, tmp: Path) -> None:
    """Create `jobs` OptimizationJobs against an emulated API server in `tmp`; print figures."""
    model = tmp / "model.pt2"
    model.write_bytes(b"bench")
    config = {"pools": [{"name": "cpu"}], "artifactsUri": (tmp / "store").as_uri()}
    async with Cluster(tmp, config, stub_inputs=True) as cluster:
        operator = await cluster.start_operator()  # its own process: its RSS is its own
        assert operator.process is not None
        pid = operator.process.pid
        try:
            await asyncio.sleep(2)  # settle, as before the figure with jobs live
            idle = rss_mib(pid)
            latencies = []
            for index in range(jobs):
                name = f"bench-{index:04d}"
                started = time.perf_counter()
                cluster.apply(
                    optimization_job(
                        name,
                        {
                            "model": {"uri": model.as_uri()},
                            "dataset": {"uri": "sklearn:digits"},
                            "stages": [
                                {
                                    "name": "p",
                                    "type": "prune",
                                    "params": {"sparsity": 0.5 + index / 1e4},
                                }
                            ],
                        },
                    )
                )
                await cluster.wait_for(
                    partial(has_batch_job, cluster, name), 60, f"the first Job of {name}"
                )
                latencies.append(time.perf_counter() - started)
            await asyncio.sleep(2)
            memory = rss_mib(pid)
        finally:
            await cluster.kill_operator()
    ms = sorted(x * 1000 for x in latencies)
    p99 = ms[min(len(ms) - 1, int(len(ms) * 0.99))]
    print(
        f"CR created -> first Job: p50 {statistics.median(ms):.1f} ms, p99 {p99:.1f} ms "
        f"over {jobs} jobs (target p50 <= 200 ms)"
    )
    print(f"operator RSS idle: {idle:.0f} MiB")
    print(f"operator RSS with {jobs} live jobs: {memory:.0f} MiB (target <= 300 MiB)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=200)
    asyncio.run(main(parser.parse_args().jobs))
