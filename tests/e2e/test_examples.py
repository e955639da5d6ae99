"""The job files in examples/ run as they are, and the pipeline keeps its promises."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.slow
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def run(job: Path, artifacts: Path) -> dict[str, Any]:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "kompaktor.cli",
            "run",
            str(job),
            "--json",
            "--artifacts",
            str(artifacts),
            "--logs",
            str(artifacts / "logs"),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    summary: dict[str, Any] = json.loads(done.stdout)
    return summary


def test_digits_pipeline_is_smaller_and_as_accurate(tmp_path: Path) -> None:
    """hpo(train) → prune(structured) → distill → quantize(static) → benchmark."""
    summary = run(EXAMPLES / "digits-pipeline" / "job.yaml", tmp_path)
    result = summary["result"]
    assert result["sizeRatio"] <= 0.25
    assert result["metric"] >= result["baselineMetric"] - 0.01
    by_name = {s["name"]: s for s in summary["stages"]}
    assert (
        by_name["prune"]["metrics"]["parameters"] < 0.5 * by_name["tune"]["metrics"]["parameters"]
    )
    assert by_name["quantize"]["output"]["uri"].endswith(".onnx")
    assert by_name["bench"]["metrics"]["speedup"] > 0


def test_tabular_mlp_example(tmp_path: Path) -> None:
    summary = run(EXAMPLES / "breast-cancer-mlp" / "job.yaml", tmp_path)
    prune = summary["stages"][0]["metrics"]
    assert prune["sparsity"] == pytest.approx(0.7, abs=0.01)
    assert summary["result"]["sizeRatio"] < 0.5


def test_onnx_example_quantizes(tmp_path: Path) -> None:
    summary = run(EXAMPLES / "onnx-quantize" / "job.yaml", tmp_path)
    assert summary["result"]["sizeRatio"] < 0.5
    assert summary["result"]["metric"] >= summary["result"]["baselineMetric"] - 0.02
