"""benchmark: honest side-by-side figures against the job's original model."""

from __future__ import annotations

import platform
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from kompaktor.data import Dataset
from kompaktor.errors import JobSpecError
from kompaktor.stages.base import StageContext
from kompaktor.stages.benchmark import BenchmarkParams, BenchmarkStage, make_batch
from kompaktor.stages.validate import parse_params

ContextFactory = Callable[..., StageContext[Any]]

QUICK = BenchmarkParams(batch_sizes=[1, 16], iterations=40, warmup=5, threads=1)


def test_identical_models_have_speedup_near_one(
    stage_context: ContextFactory, digits_cnn_pt2: Path, digits: Dataset
) -> None:
    ctx = stage_context(QUICK, digits_cnn_pt2, digits)
    result = BenchmarkStage().run(ctx)
    m = result.metrics
    assert 0.5 < m["speedup"] < 2.0
    assert 0.5 < m["speedup@16"] < 2.0
    assert m["sizeRatio"] == 1.0
    assert m["latencyMs"] == m["p50Ms@1"] > 0
    assert m["p50Ms@16"] <= m["p95Ms@16"] <= m["p99Ms@16"]
    assert m["throughput@16"] > m["throughput@1"] > 0
    assert m["joulesPerInference"] > 0 and m["baselineJoulesPerInference"] > 0
    assert result.path == digits_cnn_pt2 and result.output_format == "pt2"  # output = input
    table = result.details["models"]
    assert table["input"]["metric"] == table["reference"]["metric"] > 0.8
    assert set(table["input"]["batches"]) == {"1", "16"}
    assert result.details["energyMethod"] in ("rapl", "estimate", "nvml")
    hardware = result.details["hardware"]
    assert hardware["arch"] == platform.machine() and hardware["torchThreads"] == 1
    assert hardware["cpu"] and hardware["cpus"] >= 1
    kernels = pytest.importorskip("kompaktor_kernels")
    assert hardware["kernelsIsa"] == kernels.active_isa()
    assert hardware["kernelsInt8"] == kernels.int8_path()


def test_smaller_model_reports_size_ratio_below_one(
    stage_context: ContextFactory,
    digits_cnn_small_pt2: Path,
    digits_cnn_pt2: Path,
    digits: Dataset,
) -> None:
    params = BenchmarkParams(batch_sizes=[4], iterations=10, warmup=2)
    ctx = stage_context(params, digits_cnn_small_pt2, digits, reference=digits_cnn_pt2)
    result = BenchmarkStage().run(ctx)
    sizes = {name: row["sizeBytes"] for name, row in result.details["models"].items()}
    assert sizes["input"] < sizes["reference"]
    assert result.metrics["sizeRatio"] == pytest.approx(sizes["input"] / sizes["reference"])
    assert result.metrics["sizeRatio"] < 1.0
    assert "speedup@4" in result.metrics and "p50Ms@1" not in result.metrics


def test_make_batch_cycles_rows(digits: Dataset) -> None:
    sample = tuple(x[:3] for x in digits.inputs("test"))
    (batch,) = make_batch(sample, 7)
    assert batch.shape == (7, 1, 8, 8)
    assert (batch[3] == sample[0][0]).all()


def test_params_validation() -> None:
    parsed = parse_params("benchmark", {"batchSizes": [16, 1, 16]}, where="stage (benchmark)")
    assert isinstance(parsed, BenchmarkParams) and parsed.batch_sizes == [1, 16]
    with pytest.raises(JobSpecError, match=r"params.batchSizes: every batch size must be >= 1"):
        parse_params("benchmark", {"batchSizes": [0]}, where="stage (benchmark)")
    with pytest.raises(JobSpecError, match=r"params.iterations"):
        parse_params("benchmark", {"iterations": 0}, where="stage (benchmark)")
    with pytest.raises(JobSpecError, match=r"params.batchSizes: must be a number, not a boolean"):
        parse_params("benchmark", {"batchSizes": [1, True]}, where="stage (benchmark)")
