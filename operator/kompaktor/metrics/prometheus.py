"""Prometheus metrics of the jobs an operator drives: cost, energy, outcome, per job and stage.

The figures are read from each job's latest status at scrape time, not counted as they happen:
the status is the source of truth, so a restarted operator (or a standby taking over) exports
the same numbers without double counting, and a replica that stops driving a job stops
exporting it. Sum cost or energy by `pool` in PromQL for per-pool totals.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import get_args

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from kompaktor.api.status import JobPhase, OptimizationJobStatus, TrialState

JOB = ["namespace", "job"]
STAGE = [*JOB, "stage", "type", "pool"]
PHASES: tuple[str, ...] = get_args(JobPhase)
TRIAL_STATES: tuple[str, ...] = get_args(TrialState)


class JobStatusCollector(Collector):
    """Holds the last status of every job this replica drives; renders it on scrape."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._jobs: dict[tuple[str, str], OptimizationJobStatus] = {}
        self._passes = 0
        self._errors = 0

    def record(self, namespace: str, name: str, status: OptimizationJobStatus) -> None:
        with self._lock:
            self._jobs[(namespace, name)] = status
            self._passes += 1

    def record_error(self) -> None:
        with self._lock:
            self._errors += 1

    def forget(self, namespace: str, name: str) -> None:
        with self._lock:
            self._jobs.pop((namespace, name), None)

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            jobs = dict(self._jobs)
            passes, errors = self._passes, self._errors
        yield from _job_metrics(jobs)
        yield from _stage_metrics(jobs)
        reconciles = CounterMetricFamily(
            "kompaktor_reconcile_passes", "Reconcile passes run by this replica.", labels=[]
        )
        reconciles.add_metric([], passes)
        failed = CounterMetricFamily(
            "kompaktor_reconcile_errors", "Reconcile passes that raised (and were retried).",
            labels=[],
        )  # fmt: skip
        failed.add_metric([], errors)
        yield reconciles
        yield failed


def _gauge(name: str, text: str, labels: list[str]) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, text, labels=labels)


def _job_metrics(jobs: dict[tuple[str, str], OptimizationJobStatus]) -> Iterator[Metric]:
    phase = _gauge("kompaktor_job_phase", "1 for the job's current phase.", [*JOB, "phase"])
    cost = _gauge("kompaktor_job_cost_usd", "What the job's runs cost so far (USD).", JOB)
    energy = _gauge("kompaktor_job_energy_joules", "Energy the job's runs used so far.", JOB)
    speedup = _gauge("kompaktor_job_speedup", "Final model speed-up over the input (batch 1).", JOB)
    size = _gauge("kompaktor_job_size_ratio", "Final model size / input model size.", JOB)
    metric = _gauge("kompaktor_job_metric", "Final model's objective metric.", JOB)
    baseline = _gauge("kompaktor_job_baseline_metric", "Input model's objective metric.", JOB)
    trials = _gauge("kompaktor_job_trials", "HPO trials by state.", [*JOB, "state"])
    for (namespace, name), status in sorted(jobs.items()):
        labels = [namespace, name]
        for value in PHASES:
            phase.add_metric([*labels, value], float(status.phase == value))
        cost.add_metric(labels, status.cost_usd or 0.0)
        energy.add_metric(labels, status.energy_joules or 0.0)
        if (result := status.result) is not None:
            for family, figure in (
                (speedup, result.speedup),
                (size, result.size_ratio),
                (metric, result.metric),
                (baseline, result.baseline_metric),
            ):
                if figure is not None:
                    family.add_metric(labels, figure)
        if status.trials:
            for state in TRIAL_STATES:
                count = sum(1 for trial in status.trials if trial.state == state)
                trials.add_metric([*labels, state], count)
    yield from (phase, cost, energy, speedup, size, metric, baseline, trials)


def _stage_metrics(jobs: dict[tuple[str, str], OptimizationJobStatus]) -> Iterator[Metric]:
    cost = _gauge("kompaktor_stage_cost_usd", "What the stage's runs cost (USD).", STAGE)
    energy = _gauge(
        "kompaktor_stage_energy_joules", "Energy the stage's runs used, and how it was known.",
        [*STAGE, "method"],
    )  # fmt: skip
    attempts = _gauge("kompaktor_stage_attempts", "Runs started for the stage's key.", STAGE)
    cached = _gauge("kompaktor_stage_cached", "1 when the output was reused from a cache.", STAGE)
    for (namespace, name), status in sorted(jobs.items()):
        for stage in status.stages:
            for run in stage.runs():  # a stage on several pools: a series per pool
                labels = [namespace, name, stage.name, stage.type, run.pool or ""]
                attempts.add_metric(labels, run.attempts)
                cached.add_metric(labels, float(run.cached))
                if run.cost_usd is not None:
                    cost.add_metric(labels, run.cost_usd)
                if run.energy_joules is not None:
                    method = run.energy_method or "estimate"
                    energy.add_metric([*labels, method], run.energy_joules)
    yield from (cost, energy, attempts, cached)


def serve(collector: JobStatusCollector, port: int, address: str = "0.0.0.0") -> None:
    """Serve /metrics from a thread of its own (the operator's loop is never blocked by it)."""
    registry = CollectorRegistry(auto_describe=True)
    registry.register(collector)
    start_http_server(port, addr=address, registry=registry)
