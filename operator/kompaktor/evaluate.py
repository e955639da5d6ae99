"""Measure a model the same way everywhere: objective metric, size, parameters, latency.

(CONTRACT STUB: to be implemented.) Every stage output and every benchmark goes through these,
so figures from different stages compare honestly.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kompaktor.data import Dataset, Split
from kompaktor.models import LoadedModel, Predictor


def metric(
    name: str,
    predictor: Predictor,
    dataset: Dataset,
    split: Split = "test",
    reference: Predictor | None = None,
) -> float:
    """accuracy (argmax vs labels), fidelity (argmax agreement with `reference`), or mse."""
    raise NotImplementedError


def higher_is_better(metric_name: str) -> bool:
    return metric_name != "mse"


def model_size_bytes(model: LoadedModel) -> int:
    """Bytes of the model file on disk (what ships)."""
    raise NotImplementedError


def parameter_count(model: LoadedModel) -> int:
    """Stored weight elements (torch parameters+buffers, or ONNX initializers)."""
    raise NotImplementedError


@dataclass(frozen=True)
class Latency:
    batch_size: int
    p50_ms: float
    p95_ms: float
    p99_ms: float
    throughput: float  # samples per second


def measure_latency(
    predictor: Predictor,
    sample: tuple[np.ndarray, ...],
    batch_size: int,
    *,
    warmup: int = 10,
    iterations: int = 100,
    min_seconds: float = 0.0,
) -> Latency:
    """Time `predictor` on a batch built from `sample` rows; percentiles over iterations."""
    raise NotImplementedError
