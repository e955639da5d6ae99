"""Measure a model the same way everywhere: objective metric, size, parameters, latency.

Every stage output and every benchmark goes through these, so figures from different stages
compare honestly.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from kompaktor.data import Dataset, Split
from kompaktor.errors import KompaktorError
from kompaktor.models import LoadedModel, Predictor

if TYPE_CHECKING:
    import torch

METRICS = ("accuracy", "fidelity", "mse")
EVAL_BATCH = 512


def predict_all(
    predictor: Predictor, inputs: tuple[np.ndarray, ...], batch_size: int = EVAL_BATCH
) -> np.ndarray:
    """The predictor's outputs for all rows, in batches (bounded memory, same result)."""
    rows = len(inputs[0])
    outs = [
        predictor(*(a[start : start + batch_size] for a in inputs))
        for start in range(0, rows, batch_size)
    ]
    return np.concatenate(outs, axis=0)


def predicted_classes(outputs: np.ndarray) -> np.ndarray:
    """argmax over logits; a single logit per row is a binary model thresholded at 0."""
    if outputs.ndim == 1 or (outputs.ndim == 2 and outputs.shape[1] == 1):
        return (outputs.reshape(-1) > 0).astype(np.int64)
    return np.asarray(outputs.reshape(len(outputs), -1).argmax(axis=1), dtype=np.int64)


def metric(
    name: str,
    predictor: Predictor,
    dataset: Dataset,
    split: Split = "test",
    reference: Predictor | None = None,
) -> float:
    """accuracy (argmax vs labels), fidelity (argmax agreement with `reference`), or mse."""
    inputs = dataset.inputs(split)
    if name == "accuracy":
        if dataset.task != "classification":
            raise KompaktorError(f"metric accuracy needs a classification dataset ({dataset.name})")
        classes = predicted_classes(predict_all(predictor, inputs))
        return float(np.mean(classes == dataset.targets(split)))
    if name == "fidelity":
        if reference is None:
            raise KompaktorError("metric fidelity needs the reference model's predictor")
        ours = predicted_classes(predict_all(predictor, inputs))
        theirs = predicted_classes(predict_all(reference, inputs))
        return float(np.mean(ours == theirs))
    if name == "mse":
        out = predict_all(predictor, inputs)
        target = dataset.targets(split).astype(np.float64)
        return float(np.mean((out.reshape(target.shape).astype(np.float64) - target) ** 2))
    raise KompaktorError(f"unknown metric {name!r}; use one of {', '.join(METRICS)}")


def scorer(
    name: str, dataset: Dataset, split: Split = "val", reference: Predictor | None = None
) -> Callable[[Predictor], float]:
    """`metric(name, ·, dataset, split)` as a function of the predictor, for scoring a model
    again and again (a validation curve): the reference's predictions are computed once."""
    if name != "fidelity":
        return lambda predictor: metric(name, predictor, dataset, split)
    if reference is None:
        raise KompaktorError("metric fidelity needs the reference model's predictor")
    inputs = dataset.inputs(split)
    theirs = predicted_classes(predict_all(reference, inputs))

    def fidelity(predictor: Predictor) -> float:
        return float(np.mean(predicted_classes(predict_all(predictor, inputs)) == theirs))

    return fidelity


def has_rows(dataset: Dataset, split: Split) -> bool:
    return len(dataset.targets(split)) > 0


def higher_is_better(metric_name: str) -> bool:
    return metric_name != "mse"


def model_size_bytes(model: LoadedModel) -> int:
    """Bytes of the model file on disk (what ships)."""
    return model.path.stat().st_size


def _torch_parameter_count(module: torch.nn.Module) -> int:
    seen: set[int] = set()
    total = 0
    for tensor in [*module.parameters(), *module.buffers()]:
        if id(tensor) not in seen:  # tied weights count once
            seen.add(id(tensor))
            total += tensor.numel()
    return total


def _onnx_parameter_count(model: LoadedModel) -> int:
    import onnx

    graph = onnx.load(str(model.path)).graph
    return sum(int(np.prod(init.dims, dtype=np.int64)) for init in graph.initializer)


def parameter_count(model: LoadedModel) -> int:
    """Stored weight elements (torch parameters+buffers, or ONNX initializers)."""
    if model.module is not None:
        return _torch_parameter_count(model.module)
    return _onnx_parameter_count(model)


@dataclass(frozen=True)
class Latency:
    batch_size: int
    p50_ms: float
    p95_ms: float
    p99_ms: float
    throughput: float  # samples per second (batch size / mean call time)


def make_batch(sample: tuple[np.ndarray, ...], batch_size: int) -> tuple[np.ndarray, ...]:
    """`batch_size` rows cycled from `sample` (any number of rows ≥ 1)."""
    rows = np.arange(batch_size) % len(sample[0])
    return tuple(np.ascontiguousarray(a[rows]) for a in sample)


def measure_latency(
    predictor: Predictor,
    sample: tuple[np.ndarray, ...],
    batch_size: int,
    *,
    warmup: int = 10,
    iterations: int = 100,
    min_seconds: float = 0.0,
) -> Latency:
    """Time `predictor` on a batch built from `sample` rows; percentiles over iterations.

    Runs at least `iterations` calls and keeps going until `min_seconds` have passed, so fast
    models get enough samples for a stable p99.
    """
    if batch_size < 1 or iterations < 1:
        raise ValueError("batch_size and iterations must be ≥ 1")
    batch = make_batch(sample, batch_size)
    for _ in range(warmup):
        predictor(*batch)
    times_ns: list[int] = []
    deadline = time.perf_counter_ns() + int(min_seconds * 1e9)
    while len(times_ns) < iterations or time.perf_counter_ns() < deadline:
        start = time.perf_counter_ns()
        predictor(*batch)
        times_ns.append(time.perf_counter_ns() - start)
    ms = np.asarray(times_ns, dtype=np.float64) / 1e6
    p50, p95, p99 = np.percentile(ms, [50, 95, 99])
    return Latency(
        batch_size=batch_size,
        p50_ms=float(p50),
        p95_ms=float(p95),
        p99_ms=float(p99),
        throughput=float(batch_size / (ms.mean() / 1e3)),
    )
