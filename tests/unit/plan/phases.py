"""An OptimizationJob in each phase as the cluster holds it, its status made by the real plan:
what GitOps tools (Flux's kstatus, Argo CD's health checks) judge."""

from __future__ import annotations

from typing import Any

from kompaktor.api.spec import API_VERSION
from kompaktor.api.status import OptimizationJobStatus
from kompaktor.plan import CacheProbed, JobContext, ProbeCache, RunFailed, RunSucceeded, step
from tests.unit.plan.test_machine import T0, ctx, kinds, only_run, record, spec, started, suspended

Obj = dict[str, Any]


def cluster_object(status: OptimizationJobStatus | None, generation: int = 1) -> Obj:
    """The job as `kubectl get -o json` shows it: the spec's generation and the status."""
    obj: Obj = {
        "apiVersion": API_VERSION,
        "kind": "OptimizationJob",
        "metadata": {"name": "demo", "namespace": "default", "generation": generation},
    }
    if status is not None:
        obj["status"] = status.dump()
    return obj


def succeeded(job: JobContext) -> OptimizationJobStatus:
    """Both stages (train, bench) run and pass."""
    result = started(job)
    train = only_run(result).request
    after = step(job, result.status, [RunSucceeded(train.run_id, record("train", "d1"))], T0)
    (probe,) = kinds(after, ProbeCache)
    missed = step(job, after.status, [CacheProbed(probe.key, None)], T0)
    bench = only_run(missed).request
    benched = record("benchmark", "d1", speedup=3.5, sizeRatio=0.2, latencyMs=0.1)
    done = step(job, missed.status, [RunSucceeded(bench.run_id, benched)], T0)
    assert done.status.phase == "Succeeded"
    return done.status


def phases() -> dict[str, Obj]:
    """One object per phase (and per way into it) that the plan reaches."""
    job = ctx()
    running = started(job)
    run = only_run(running).request
    oom = RunFailed(run.run_id, "OOMKilled", "137")
    corrupt = RunFailed(run.run_id, "InvalidInput", "corrupt model", retryable=False)
    bad = spec(stages=[{"name": "t", "type": "train", "params": {"lr": -1}}])
    done = succeeded(job)
    return {
        "new": cluster_object(None),
        "pending": cluster_object(step(job, OptimizationJobStatus(), [], T0).status),
        "running": cluster_object(running.status),
        "retrying": cluster_object(step(job, running.status, [oom], T0).status),
        "failed": cluster_object(step(job, running.status, [corrupt], T0).status),
        "invalid": cluster_object(step(ctx(bad), OptimizationJobStatus(), [], T0).status),
        "suspended": cluster_object(step(suspended(job), running.status, [], T0).status, 2),
        "succeeded": cluster_object(done),
        # The spec edited in git and synced: the operator has not seen generation 2 yet.
        "edited": cluster_object(done, 2),
    }
