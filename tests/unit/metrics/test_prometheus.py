"""The operator's Prometheus metrics are rendered from job statuses at scrape time."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from kompaktor.api.status import OptimizationJobStatus
from kompaktor.metrics.prometheus import JobStatusCollector

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]

STATUS = OptimizationJobStatus.model_validate({
    "phase": "Running",
    "costUSD": 0.75,
    "energyJoules": 5400.0,
    "stages": [
        {"name": "tune", "type": "hpo", "phase": "Succeeded", "pool": "gpu", "attempts": 1,
         "costUSD": 0.5, "energyJoules": 5000.0, "energyMethod": "nvml"},
        {"name": "quantize", "type": "quantize", "phase": "Running", "pool": "cpu",
         "attempts": 2, "cached": False, "costUSD": 0.25, "energyJoules": 400.0},
    ],
    "trials": [
        {"stage": "tune", "number": 0, "params": {}, "state": "Complete"},
        {"stage": "tune", "number": 1, "params": {}, "state": "Pruned"},
        {"stage": "tune", "number": 2, "params": {}, "state": "Complete"},
    ],
    "result": {"metric": 0.98, "baselineMetric": 0.99, "speedup": 4.0, "sizeRatio": 0.2},
})  # fmt: skip


def scrape(collector: JobStatusCollector) -> Samples:
    registry = CollectorRegistry()
    registry.register(collector)
    text = generate_latest(registry).decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def labels(**values: str) -> frozenset[tuple[str, str]]:
    return frozenset(values.items())


def test_job_figures_come_from_its_status() -> None:
    collector = JobStatusCollector()
    collector.record("team-a", "digits", STATUS)
    got = scrape(collector)
    job = {"namespace": "team-a", "job": "digits"}
    assert got["kompaktor_job_phase", labels(**job, phase="Running")] == 1
    assert got["kompaktor_job_phase", labels(**job, phase="Succeeded")] == 0
    assert got["kompaktor_job_cost_usd", labels(**job)] == 0.75
    assert got["kompaktor_job_energy_joules", labels(**job)] == 5400.0
    assert got["kompaktor_job_speedup", labels(**job)] == 4.0
    assert got["kompaktor_job_size_ratio", labels(**job)] == 0.2
    assert got["kompaktor_job_trials", labels(**job, state="Complete")] == 2
    assert got["kompaktor_job_trials", labels(**job, state="Pruned")] == 1
    tune = labels(**job, stage="tune", type="hpo", pool="gpu")
    assert got["kompaktor_stage_energy_joules", tune | labels(method="nvml")] == 5000.0
    quantize = labels(**job, stage="quantize", type="quantize", pool="cpu")
    assert got["kompaktor_stage_energy_joules", quantize | labels(method="estimate")] == 400.0
    assert got["kompaktor_stage_attempts", quantize] == 2
    assert got["kompaktor_reconcile_passes_total", labels()] == 1


def test_a_newer_status_replaces_the_old_one_and_a_forgotten_job_disappears() -> None:
    collector = JobStatusCollector()
    collector.record("ns", "a", STATUS)
    collector.record("ns", "b", STATUS)
    done = STATUS.model_copy(update={"phase": "Succeeded", "cost_usd": 1.0})
    collector.record("ns", "a", done)  # a status is a snapshot: no double counting
    got = scrape(collector)
    assert got["kompaktor_job_cost_usd", labels(namespace="ns", job="a")] == 1.0
    assert got["kompaktor_job_phase", labels(namespace="ns", job="a", phase="Succeeded")] == 1
    collector.forget("ns", "b")
    names = {key for key, _ in scrape(collector)}
    assert "kompaktor_job_cost_usd" in names
    assert not any(dict(lbl).get("job") == "b" for _, lbl in scrape(collector))


def test_a_job_without_a_result_exports_no_result_figures() -> None:
    collector = JobStatusCollector()
    collector.record("ns", "fresh", OptimizationJobStatus())
    got = scrape(collector)
    assert ("kompaktor_job_speedup", labels(namespace="ns", job="fresh")) not in got
    assert got["kompaktor_job_cost_usd", labels(namespace="ns", job="fresh")] == 0
