"""`benchmark`: how much faster, smaller and cheaper the model is than the job's original.

Both models run in the same process, on the same batches, in alternating blocks (and the
order flips every block), so drift in clock speed or noisy neighbours hits both alike and the
speedup is a fair ratio. Every model gets at least `iterations` calls and `minSeconds` of timed
calls per batch size, spread evenly over the blocks: a fast model is sampled as long as a slow
one, so its p50 does not move with the few milliseconds a fixed call count would take. Each
block's pair of p50s gives a speed-up of its own; their range is the headline's spread.
Energy is metered per block and attributed to the model that ran it.
Under `kompaktor run` the timing holds the artifact root's timing lock (`kompaktor.timing_lock`),
so no sibling run times or trains meanwhile.
Exported torch models run with their weights as arguments (`kompaktor.models.lifted`), so the
figures are the models', not torch's per-call Python framing around them.
The output is the input, unchanged: a benchmark only measures.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
from pydantic import Field, field_validator

from kompaktor.evaluate import make_batch, metric, model_size_bytes, time_calls
from kompaktor.metrics import EnergyMeter
from kompaktor.metrics.hardware import describe
from kompaktor.models import Predictor
from kompaktor.stages.base import SparseLayers, Stage, StageContext, StageParams, StageResult
from kompaktor.timing_lock import timing_lock

MODELS = ("input", "reference")
#: Alternating blocks per batch size (fewer when `iterations` is smaller).
BLOCKS = 10
#: Per-model, per-size figures: the table's rows, and the flat metrics' `KEY@size`.
ROW_KEYS = ("p50Ms", "p10Ms", "p90Ms", "p95Ms", "p99Ms", "throughput", "joulesPerInference")


class BenchmarkParams(StageParams):
    batch_sizes: list[int] = Field(
        default_factory=lambda: [1, 16],
        min_length=1,
        description="Batch sizes to time; headline figures use the smallest.",
    )
    iterations: int = Field(
        default=100, ge=1, description="Timed calls per model and batch size, at least."
    )
    min_seconds: float = Field(
        default=0.5,
        ge=0,
        description="Seconds of timed calls per model and batch size, at least: a fast model "
        "gets as many seconds of samples as a slow one, so its p50 holds still between runs.",
    )
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
    #: The p50 of each block, in block order: paired with the other model's for a speed-up.
    block_p50s: list[float] = field(default_factory=list)
    joules: float = 0.0
    method: str = "estimate"

    def run(
        self, predictor: Predictor, batch: tuple[np.ndarray, ...], calls: int, seconds: float
    ) -> None:
        """One block: at least `calls` calls and `seconds` of timed calls."""
        with EnergyMeter(poll_seconds=None) as meter:
            timed = time_calls(lambda: predictor(*batch), calls=calls, seconds=seconds)
        assert meter.reading is not None
        self.seconds.extend(timed)
        self.block_p50s.append(float(np.median(timed)))
        self.joules += meter.reading.joules
        self.method = meter.reading.method

    def row(self, batch_size: int) -> dict[str, float]:
        """Percentiles (p10–p90 is the spread), throughput, energy and how many calls."""
        ms = np.asarray(self.seconds) * 1e3
        p10, p50, p90, p95, p99 = np.percentile(ms, [10, 50, 90, 95, 99])
        samples = batch_size * len(self.seconds)
        return {
            "p50Ms": float(p50),
            "p10Ms": float(p10),
            "p90Ms": float(p90),
            "p95Ms": float(p95),
            "p99Ms": float(p99),
            "throughput": samples / float(np.sum(self.seconds)),
            "joulesPerInference": self.joules / samples,
            "calls": float(len(self.seconds)),
        }


@dataclass
class SideBySide:
    """Every model's tally at one batch size, and the order each block ran them in."""

    tallies: dict[str, _Tally]
    order: list[list[str]] = field(default_factory=list)

    def speedups(self, mine: str, base: str) -> list[float]:
        """`base`'s p50 over `mine`'s in each block: timed moments apart, so the spread of
        these ratios is the speed-up's own, drift between blocks cancelled."""
        pairs = zip(self.tallies[base].block_p50s, self.tallies[mine].block_p50s, strict=True)
        return [theirs / ours for theirs, ours in pairs]


def time_side_by_side(
    predictors: dict[str, Predictor],
    batch: tuple[np.ndarray, ...],
    *,
    iterations: int,
    warmup: int,
    min_seconds: float = 0.0,
    blocks: int = BLOCKS,
) -> SideBySide:
    """Time every predictor on `batch` in alternating blocks (order reversed each block), each
    block an equal share of `iterations` calls and of `min_seconds`, so every predictor gets
    at least both, spread over the whole timing."""
    for predictor in predictors.values():
        for _ in range(warmup):
            predictor(*batch)
    count = min(blocks, iterations)
    names = list(predictors)
    timing = SideBySide({name: _Tally() for name in names})
    for block in range(count):
        calls = iterations // count + (block < iterations % count)
        order = names[::-1] if block % 2 else names
        for name in order:
            timing.tallies[name].run(predictors[name], batch, calls, min_seconds / count)
        timing.order.append(order)
    return timing


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
        table: dict[str, dict[str, Any]] = {name: {"batches": {}} for name in MODELS}
        with timing_lock() as waited:  # `kompaktor run`: no sibling times or trains meanwhile
            timings = time_sizes(ctx, predictors)
        for size, timing in timings.items():
            for name, tally in timing.tallies.items():
                table[name]["batches"][size] = tally.row(int(size))
        against = predictors["reference"] if ctx.metric == "fidelity" else None
        for name, model in models.items():
            table[name]["sizeBytes"] = model_size_bytes(model)
            table[name]["format"] = model.format
            table[name]["metric"] = metric(
                ctx.metric, predictors[name], ctx.dataset, "test", reference=against
            )
        blocks = {
            size: {"order": timing.order, "speedups": timing.speedups("input", "reference")}
            for size, timing in timings.items()
        }
        metrics = headline(table, blocks, p.batch_sizes)
        metrics.update(latencyBatch=float(p.batch_sizes[0]), latencyThreads=float(p.threads))
        if waited is not None:
            metrics["latencyLockWaitSeconds"] = waited
        details = {
            "models": table,
            "blocks": blocks,
            "metric": ctx.metric,
            "threads": p.threads,
            "pool": os.environ.get("KOMPAKTOR_POOL"),
            "hardware": hardware,
            "energyMethod": next(iter(timings.values())).tallies["input"].method,
        }
        ctx.log(
            f"speedup {metrics['speedup']:.2f}x (per block {metrics['speedupMin']:.2f}–"
            f"{metrics['speedupMax']:.2f}x), size ratio {metrics['sizeRatio']:.3f}"
        )
        return StageResult(
            path=ctx.model.path, output_format=ctx.model.format, metrics=metrics, details=details
        )


def time_sizes(
    ctx: StageContext[BenchmarkParams], predictors: dict[str, Predictor]
) -> dict[str, SideBySide]:
    """Each batch size's side-by-side timing, keyed by the size as text (as the table is)."""
    p, sample = ctx.params, ctx.dataset.inputs("test")
    timings = {}
    for size in p.batch_sizes:
        ctx.log(
            f"timing batch size {size}: at least {p.iterations} calls and {p.min_seconds:g} s "
            f"per model, in {min(BLOCKS, p.iterations)} alternating blocks"
        )
        timings[str(size)] = time_side_by_side(
            predictors,
            make_batch(sample, size),
            iterations=p.iterations,
            warmup=p.warmup,
            min_seconds=p.min_seconds,
        )
    return timings


def headline(
    table: dict[str, dict[str, Any]], blocks: dict[str, dict[str, Any]], batch_sizes: list[int]
) -> dict[str, float]:
    """Flat metrics: speedup (and its per-block range), latency and energy at the smallest
    batch size, plus per-size keys."""
    mine, base = table["input"]["batches"], table["reference"]["batches"]
    first = str(batch_sizes[0])
    metrics = {
        "speedup": base[first]["p50Ms"] / mine[first]["p50Ms"],
        "speedupMin": min(blocks[first]["speedups"]),
        "speedupMax": max(blocks[first]["speedups"]),
        "sizeRatio": table["input"]["sizeBytes"] / table["reference"]["sizeBytes"],
        "latencyMs": mine[first]["p50Ms"],
        "baselineLatencyMs": base[first]["p50Ms"],
        "joulesPerInference": mine[first]["joulesPerInference"],
        "baselineJoulesPerInference": base[first]["joulesPerInference"],
    }
    for size in map(str, batch_sizes):
        for key in ROW_KEYS:
            metrics[f"{key}@{size}"] = mine[size][key]
        metrics[f"baselineP50Ms@{size}"] = base[size]["p50Ms"]
        metrics[f"speedup@{size}"] = base[size]["p50Ms"] / mine[size]["p50Ms"]
        metrics[f"speedupMin@{size}"] = min(blocks[size]["speedups"])
        metrics[f"speedupMax@{size}"] = max(blocks[size]["speedups"])
    return metrics
