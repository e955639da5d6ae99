"""`benchmark`: how much faster, smaller and cheaper the model is than the job's original.

Both models run in the same process, on the same batches, in alternating blocks (and the
order flips every block), so drift in clock speed or noisy neighbours hits both alike and the
speedup is a fair ratio. Energy is metered per block and attributed to the model that ran it.
Under `kompaktor run` the timing holds the artifact root's timing lock (`kompaktor.timing_lock`),
so no sibling run times or trains meanwhile.
Exported torch models run with their weights as arguments (`kompaktor.models.lifted`), so the
figures are the models', not torch's per-call Python framing around them.
The output is the input, unchanged: a benchmark only measures.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
from pydantic import Field, field_validator

from kompaktor.evaluate import metric, model_size_bytes
from kompaktor.metrics import EnergyMeter
from kompaktor.metrics.hardware import describe
from kompaktor.models import Predictor
from kompaktor.stages.base import SparseLayers, Stage, StageContext, StageParams, StageResult
from kompaktor.timing_lock import timing_lock

MODELS = ("input", "reference")


class BenchmarkParams(StageParams):
    batch_sizes: list[int] = Field(
        default_factory=lambda: [1, 16],
        min_length=1,
        description="Batch sizes to time; headline figures use the smallest.",
    )
    iterations: int = Field(default=100, ge=1, description="Timed calls per model and batch size.")
    warmup: int = Field(default=10, ge=0, description="Untimed calls first, per model and size.")
    threads: int = Field(
        default=1,
        ge=1,
        description="CPU threads for both models. One by default: batch-1 latency is what a "
        "serving replica sees, and one thread keeps figures stable on a shared node.",
    )

    @field_validator("batch_sizes")
    @classmethod
    def _positive_unique(cls, sizes: list[int]) -> list[int]:
        if any(size < 1 for size in sizes):
            raise ValueError("every batch size must be >= 1")
        return sorted(set(sizes))


@dataclass
class _Tally:
    """One model's timings and energy at one batch size."""

    seconds: list[float] = field(default_factory=list)
    joules: float = 0.0
    method: str = "estimate"

    def run(self, predictor: Predictor, batch: tuple[np.ndarray, ...], calls: int) -> None:
        with EnergyMeter(poll_seconds=None) as meter:
            for _ in range(calls):
                start = time.perf_counter()
                predictor(*batch)
                self.seconds.append(time.perf_counter() - start)
        assert meter.reading is not None
        self.joules += meter.reading.joules
        self.method = meter.reading.method

    def row(self, batch_size: int) -> dict[str, float]:
        ms = np.asarray(self.seconds) * 1e3
        samples = batch_size * len(self.seconds)
        return {
            "p50Ms": float(np.percentile(ms, 50)),
            "p95Ms": float(np.percentile(ms, 95)),
            "p99Ms": float(np.percentile(ms, 99)),
            "throughput": samples / float(np.sum(self.seconds)),
            "joulesPerInference": self.joules / samples,
        }


def make_batch(sample: tuple[np.ndarray, ...], batch_size: int) -> tuple[np.ndarray, ...]:
    """`batch_size` rows from `sample`, cycling through it when it has fewer."""
    rows = np.arange(batch_size) % len(sample[0])
    return tuple(np.ascontiguousarray(x[rows]) for x in sample)


def time_side_by_side(
    predictors: dict[str, Predictor],
    batch: tuple[np.ndarray, ...],
    *,
    iterations: int,
    warmup: int,
    blocks: int = 10,
) -> dict[str, _Tally]:
    """Time every predictor on `batch` in alternating blocks (order reversed each block)."""
    for predictor in predictors.values():
        for _ in range(warmup):
            predictor(*batch)
    tallies = {name: _Tally() for name in predictors}
    per_block = max(1, -(-iterations // blocks))
    done, flip = 0, False
    while done < iterations:
        calls = min(per_block, iterations - done)
        order = list(predictors)[::-1] if flip else list(predictors)
        for name in order:
            tallies[name].run(predictors[name], batch, calls)
        done, flip = done + calls, not flip
    return tallies


class BenchmarkStage(Stage[BenchmarkParams]):
    type = "benchmark"
    Params = BenchmarkParams
    sparse_layers: ClassVar[SparseLayers] = "run"  # it measures them
    accepts = frozenset({"pt2", "torchscript", "onnx"})
    produces = None
    multi_pool = True

    def run(self, ctx: StageContext[BenchmarkParams]) -> StageResult:
        import torch

        from kompaktor.models import predictor_for

        p = ctx.params
        torch.set_num_threads(p.threads)
        hardware = describe()
        isa = f", kernels {hardware['kernelsIsa']}" if "kernelsIsa" in hardware else ""
        ctx.log(f"on {hardware['cpu']} ({hardware['arch']}, {hardware['cpus']} cores{isa})")
        models = {"input": ctx.model, "reference": ctx.reference}
        predictors = {name: predictor_for(model, p.threads) for name, model in models.items()}
        sample = ctx.dataset.inputs("test")
        table: dict[str, dict[str, Any]] = {name: {"batches": {}} for name in MODELS}
        method = "estimate"
        with timing_lock() as waited:  # `kompaktor run`: no sibling times or trains meanwhile
            for size in p.batch_sizes:
                ctx.log(f"timing batch size {size}: {p.iterations} calls per model")
                tallies = time_side_by_side(
                    predictors, make_batch(sample, size), iterations=p.iterations, warmup=p.warmup
                )
                for name, tally in tallies.items():
                    table[name]["batches"][str(size)] = tally.row(size)
                    method = tally.method
        against = predictors["reference"] if ctx.metric == "fidelity" else None
        for name, model in models.items():
            table[name]["sizeBytes"] = model_size_bytes(model)
            table[name]["format"] = model.format
            table[name]["metric"] = metric(
                ctx.metric, predictors[name], ctx.dataset, "test", reference=against
            )
        metrics = headline(table, p.batch_sizes)
        metrics.update(latencyBatch=float(p.batch_sizes[0]), latencyThreads=float(p.threads))
        if waited is not None:
            metrics["latencyLockWaitSeconds"] = waited
        details = {
            "models": table,
            "metric": ctx.metric,
            "threads": p.threads,
            "pool": os.environ.get("KOMPAKTOR_POOL"),
            "hardware": hardware,
            "energyMethod": method,
        }
        ctx.log(f"speedup {metrics['speedup']:.2f}x, size ratio {metrics['sizeRatio']:.3f}")
        return StageResult(
            path=ctx.model.path, output_format=ctx.model.format, metrics=metrics, details=details
        )


def headline(table: dict[str, dict[str, Any]], batch_sizes: list[int]) -> dict[str, float]:
    """Flat metrics: speedup/latency/energy at the smallest batch size, plus per-size keys."""
    mine, base = table["input"]["batches"], table["reference"]["batches"]
    first = str(batch_sizes[0])
    metrics = {
        "speedup": base[first]["p50Ms"] / mine[first]["p50Ms"],
        "sizeRatio": table["input"]["sizeBytes"] / table["reference"]["sizeBytes"],
        "latencyMs": mine[first]["p50Ms"],
        "baselineLatencyMs": base[first]["p50Ms"],
        "joulesPerInference": mine[first]["joulesPerInference"],
        "baselineJoulesPerInference": base[first]["joulesPerInference"],
    }
    for size in map(str, batch_sizes):
        for key in ("p50Ms", "p95Ms", "p99Ms", "throughput", "joulesPerInference"):
            metrics[f"{key}@{size}"] = mine[size][key]
        metrics[f"baselineP50Ms@{size}"] = base[size]["p50Ms"]
        metrics[f"speedup@{size}"] = base[size]["p50Ms"] / mine[size]["p50Ms"]
    return metrics
