"""A few batches of a job's dataset as tensors, for saliency scores and shape checks."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from kompaktor.data import Dataset, Split
from kompaktor.surgery.saliency import Batch, LossFn


def batches(
    dataset: Dataset, split: Split, batch_size: int, count: int, seed: int
) -> Iterator[Batch]:
    """Up to `count` shuffled batches (fewer if the split is smaller), reproducible by seed."""
    inputs, targets = dataset.inputs(split), dataset.targets(split)
    order = np.random.default_rng(seed).permutation(len(targets))
    for start in range(0, min(len(order), count * batch_size), batch_size):
        rows = order[start : start + batch_size]
        yield tuple(torch.as_tensor(x[rows]) for x in inputs), _target(dataset, targets[rows])


def sample(dataset: Dataset, split: Split = "train", size: int = 8) -> tuple[torch.Tensor, ...]:
    """The first `size` rows of every input: an example for tracing and shape checks."""
    return tuple(torch.as_tensor(x[:size]) for x in dataset.inputs(split))


def task_loss(dataset: Dataset) -> LossFn:
    """Cross-entropy for classification, mean squared error for regression."""
    if dataset.task == "classification":
        return F.cross_entropy
    return lambda output, target: F.mse_loss(output.reshape(target.shape), target)


def _target(dataset: Dataset, values: np.ndarray) -> torch.Tensor:
    tensor = torch.as_tensor(values)
    return tensor.long() if dataset.task == "classification" else tensor.float()
