"""Load a job's dataset into train/val/test splits (CONTRACT STUB: to be implemented).

.npz layout: `x_train, y_train, x_val, y_val, x_test, y_test`; a model with several inputs
uses `x_train_0, x_train_1, …` (likewise for val/test) in the order of the model's arguments.
Built-ins: `sklearn:digits` (N,1,8,8 float32 in [0,1]), `sklearn:breast_cancer` and
`sklearn:wine` (standardized with train statistics); split 60/20/20 with a fixed seed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

Split = Literal["train", "val", "test"]


@dataclass(frozen=True)
class Dataset:
    name: str
    task: Literal["classification", "regression"]
    x: dict[Split, tuple[np.ndarray, ...]]   # one array per model input
    y: dict[Split, np.ndarray]
    num_classes: int | None                  # None for regression

    def inputs(self, split: Split) -> tuple[np.ndarray, ...]:
        return self.x[split]

    def targets(self, split: Split) -> np.ndarray:
        return self.y[split]


def load_dataset(uri: str, task: Literal["classification", "regression"] = "classification") -> Dataset:
    """Built-in name or .npz at any artifact URI; KompaktorError naming the URI/array if wrong."""
    raise NotImplementedError


def dataset_digest(uri: str) -> str:
    """sha256 of the .npz content, or of the built-in's name and scikit-learn version."""
    raise NotImplementedError
