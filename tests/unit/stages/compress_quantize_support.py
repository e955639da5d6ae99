"""Shared by the compress and quantize stage tests: a breast-cancer MLP and ONNX scoring.

The digits CNN fixtures come from prune_distill_support (trained once per session)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper
from sklearn.datasets import load_breast_cancer
from torch import nn

from kompaktor.data import Dataset


def breast_cancer() -> Dataset:
    """sklearn breast_cancer, standardized with train statistics, split 60/20/20."""
    data = load_breast_cancer()
    order = np.random.default_rng(0).permutation(len(data.target))
    a, b = int(0.6 * len(order)), int(0.8 * len(order))
    parts = {"train": order[:a], "val": order[a:b], "test": order[b:]}
    mean, std = data.data[parts["train"]].mean(0), data.data[parts["train"]].std(0) + 1e-8
    x = ((data.data - mean) / std).astype(np.float32)
    y = data.target.astype(np.int64)
    return Dataset(
        name="breast_cancer",
        task="classification",
        x={split: (x[rows],) for split, rows in parts.items()},  # type: ignore[misc]
        y={split: y[rows] for split, rows in parts.items()},  # type: ignore[misc]
        num_classes=2,
    )


def mlp() -> nn.Module:
    return nn.Sequential(
        nn.Linear(30, 128), nn.ReLU(), nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 2)
    )


def onnx_accuracy(path: Path, dataset: Dataset, split: str = "test") -> float:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = dataset.x[split][0]  # type: ignore[index]
    logits = session.run(None, {session.get_inputs()[0].name: x})[0]
    return float((logits.argmax(1) == dataset.y[split]).mean())  # type: ignore[index]


def weight_bytes(path: Path) -> int:
    """Bytes of the model's stored tensors (initializers), without graph overhead."""
    model = onnx.load(str(path))
    return sum(numpy_helper.to_array(t).nbytes for t in model.graph.initializer)


@pytest.fixture(scope="session")
def cancer_data() -> Dataset:
    return breast_cancer()


@pytest.fixture(scope="session")
def cancer_mlp_state(cancer_data: Dataset) -> dict[str, torch.Tensor]:
    from kompaktor.training import fit

    torch.manual_seed(0)
    model = fit(mlp(), cancer_data, epochs=20, lr=1e-3, batch_size=32, seed=0)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.fixture
def cancer_mlp(cancer_mlp_state: dict[str, torch.Tensor]) -> torch.fx.GraphModule:
    """A fresh exported copy of the trained MLP, as the runner hands it to a stage."""
    model = mlp()
    model.load_state_dict(cancer_mlp_state)
    program = torch.export.export(
        model.eval(), (torch.zeros(4, 30),), dynamic_shapes=({0: torch.export.Dim.AUTO},)
    )
    gm = program.module()
    for name in ("train", "eval"):
        gm.__dict__.pop(name, None)
    return gm
