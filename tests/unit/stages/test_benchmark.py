"""benchmark: honest side-by-side figures against the job's original model."""

from __future__ import annotations

import platform
from collections.abc import Callable
from itertools import groupby
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from kompaktor.data import Dataset
from kompaktor.errors import JobSpecError
from kompaktor.stages.base import StageContext
from kompaktor.stages.benchmark import BenchmarkParams, BenchmarkStage, time_side_by_side
from kompaktor.stages.validate import parse_params

ContextFactory = Callable[..., StageContext[Any]]

QUICK = BenchmarkParams(batch_sizes=[1, 16], iterations=40, min_seconds=0.05, warmup=5)


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


def recording(name: str, log: list[str]) -> Callable[..., np.ndarray]:
    """A predictor that does a little work and notes each call in `log`."""

    def predict(*batch: np.ndarray) -> np.ndarray:
        log.append(name)
        return np.tanh(batch[0])

    return predict


def test_side_by_side_interleaves_blocks_and_samples_for_the_minimum_time() -> None:
    log: list[str] = []
    predictors = {name: recording(name, log) for name in ("a", "b")}
    batch = (np.ones((4, 30), np.float32),)
    timing = time_side_by_side(
        predictors, batch, iterations=7, warmup=2, min_seconds=0.04, blocks=4
    )
    assert log[:4] == ["a", "a", "b", "b"]  # warm-up first, then the timed blocks
    assert timing.order == [["a", "b"], ["b", "a"], ["a", "b"], ["b", "a"]]
    # the calls ran in that order: a | b b | a a | b b | a, each block many calls long
    runs = [(name, len(list(calls))) for name, calls in groupby(log[4:])]
    assert [name for name, _ in runs] == ["a", "b", "a", "b", "a"]
    assert all(count > 10 for _, count in runs)
    for tally in timing.tallies.values():
        assert sum(tally.seconds) >= 0.04 * (1 - 1e-9)  # calls × per-call time, not wall time
        assert len(tally.seconds) > 7 and len(tally.block_p50s) == 4
    assert len(timing.speedups("a", "b")) == 4


def test_side_by_side_without_minimum_time_makes_exactly_the_calls() -> None:
    log: list[str] = []
    predictors = {name: recording(name, log) for name in ("a", "b")}
    timing = time_side_by_side(predictors, (np.ones((1, 3)),), iterations=3, warmup=0)
    assert log == ["a", "b", "b", "a", "a", "b"]  # three blocks of one call, order flipping
    assert [len(tally.seconds) for tally in timing.tallies.values()] == [3, 3]


def test_stage_honours_min_seconds_and_reports_spread(
    stage_context: ContextFactory, cancer_mlp_pt2: Path, cancer: Dataset
) -> None:
    params = BenchmarkParams(batch_sizes=[1, 8], iterations=5, min_seconds=0.1, warmup=2)
    result = BenchmarkStage().run(stage_context(params, cancer_mlp_pt2, cancer))
    m, details = result.metrics, result.details
    for model in details["models"].values():
        for size, row in model["batches"].items():
            assert row["calls"] > 5  # the minimum time, not the calls, ended the sampling
            assert row["calls"] * int(size) / row["throughput"] >= 0.1 * (1 - 1e-9)
            assert row["p10Ms"] <= row["p50Ms"] <= row["p90Ms"] <= row["p95Ms"]
    for size in ("1", "8"):
        blocks = details["blocks"][size]
        assert blocks["order"] == [["input", "reference"], ["reference", "input"]] * 2 + [
            ["input", "reference"]
        ]
        assert len(blocks["speedups"]) == 5
        assert m[f"speedupMin@{size}"] == min(blocks["speedups"])
        assert m[f"speedupMax@{size}"] == max(blocks["speedups"])
        assert m[f"p10Ms@{size}"] == details["models"]["input"]["batches"][size]["p10Ms"]
    assert (m["speedupMin"], m["speedupMax"]) == (m["speedupMin@1"], m["speedupMax@1"])
    assert 0 < m["speedupMin"] <= m["speedupMax"]


def test_params_validation() -> None:
    parsed = parse_params("benchmark", {"batchSizes": [16, 1, 16]}, where="stage (benchmark)")
    assert isinstance(parsed, BenchmarkParams) and parsed.batch_sizes == [1, 16]
    with pytest.raises(JobSpecError, match=r"params.batchSizes: every batch size must be >= 1"):
        parse_params("benchmark", {"batchSizes": [0]}, where="stage (benchmark)")
    with pytest.raises(JobSpecError, match=r"params.iterations"):
        parse_params("benchmark", {"iterations": 0}, where="stage (benchmark)")
    with pytest.raises(JobSpecError, match=r"params.minSeconds"):
        parse_params("benchmark", {"minSeconds": -0.5}, where="stage (benchmark)")
    unhurried = parse_params("benchmark", {"minSeconds": 0}, where="stage (benchmark)")
    assert isinstance(unhurried, BenchmarkParams) and unhurried.min_seconds == 0
    with pytest.raises(JobSpecError, match=r"params.batchSizes: must be a number, not a boolean"):
        parse_params("benchmark", {"batchSizes": [1, True]}, where="stage (benchmark)")
