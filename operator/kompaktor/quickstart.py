"""`kompaktor init digits DIR`: a complete, runnable example job in one folder, offline.

Writes DIR/model.pt2 (a DigitsCNN trained here, 8 epochs: a minute or two on two CPU cores),
DIR/digits.npz (the built-in split, as a file a cluster can also be given) and DIR/job.yaml. The
job names both by relative paths, which the runner resolves against the job file's folder, so the
folder can move. Training reports each epoch through `progress`, so a wait of a minute is seen to
be working rather than hung.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from kompaktor.data import Dataset, load_dataset
from kompaktor.errors import KompaktorError
from kompaktor.evaluate import metric
from kompaktor.models import save_torch
from kompaktor.models.predict import TorchPredictor
from kompaktor.zoo import DIGITS_URI, train_digits_cnn

MODEL_FILE = "model.pt2"
DATA_FILE = "digits.npz"
JOB_FILE = "job.yaml"

#: receives one line per step of `init_digits` (the CLI prints them on stderr)
Progress = Callable[[str], None]


#: `--simple`: fine-tune, then benchmark (a minute on a laptop)
SHORT_STAGES: list[dict[str, Any]] = [
    {"name": "train", "type": "train", "params": {"epochs": 2, "lr": 0.0001}},
    {"name": "bench", "type": "benchmark", "params": {"batchSizes": [1, 16]}},
]

#: the default demo: every technique in a row, sized to finish in minutes on two CPU cores
FULL_STAGES: list[dict[str, Any]] = [
    {
        "name": "tune",
        "type": "hpo",
        "params": {
            "target": "train",
            "sampler": "tpe",
            "trials": 6,
            "parallelism": 2,
            "base": {"epochs": 2},
            "space": {
                "lr": {"low": 1.0e-5, "high": 1.0e-3, "log": True},
                "weightDecay": {"low": 0.0, "high": 1.0e-3},
            },
        },
    },
    {
        "name": "prune",
        "type": "prune",
        # structured: whole channels go, so the model really shrinks and speeds up
        "params": {"method": "structured", "sparsity": 0.5, "fineTuneEpochs": 4},
    },
    {
        "name": "distill",
        "type": "distill",
        "params": {"teacher": {"fromStage": "tune"}, "temperature": 4, "alpha": 0.7, "epochs": 3},
    },
    {
        "name": "quantize",
        "type": "quantize",
        "params": {"mode": "static", "perChannel": True, "calibrationSamples": 256},
    },
    {"name": "bench", "type": "benchmark", "params": {"batchSizes": [1, 16]}},
]


def job_document(
    name: str,
    model: str,
    dataset: str,
    stages: list[dict[str, Any]],
    *,
    max_drop: float = 0.01,
) -> dict[str, Any]:
    """An OptimizationJob for a classification model, gated on accuracy."""
    return {
        "apiVersion": "kompaktor.io/v1alpha1",
        "kind": "OptimizationJob",
        "metadata": {"name": name},
        "spec": {
            "model": {"uri": model},
            "dataset": {"uri": dataset, "task": "classification"},
            "objective": {"metric": "accuracy", "maxDrop": max_drop},
            "stages": stages,
        },
    }


def digits_job(*, full: bool = False, name: str = "digits-cnn") -> dict[str, Any]:
    """The example OptimizationJob, gated at 1 point of accuracy; `full` runs every technique."""
    return job_document(name, MODEL_FILE, DATA_FILE, FULL_STAGES if full else SHORT_STAGES)


def init_digits(
    directory: Path,
    *,
    seed: int = 0,
    epochs: int = 8,
    full: bool = False,
    force: bool = False,
    progress: Progress | None = None,
) -> Path:
    """Train and save the digits CNN, its data and a job into `directory`; returns job.yaml.

    `full` writes the whole pipeline (hpo, prune, distill, quantize, benchmark) instead of
    train + benchmark. Refuses to overwrite an existing job.yaml unless `force` (a user's
    edits are worth more than a regenerated example). `progress` gets a line per file and per
    training epoch (with validation accuracy); reporting leaves the model as it would be
    without it.
    """
    job_path = directory / JOB_FILE
    if job_path.exists() and not force:
        raise KompaktorError(
            f"{job_path} already exists; pass --force to overwrite it and the model and data "
            "beside it, or choose another folder"
        )
    say = progress if progress is not None else _silent
    directory.mkdir(parents=True, exist_ok=True)
    dataset = load_dataset(DIGITS_URI)
    say(f"writing {directory / DATA_FILE}")
    dataset.save_npz(directory / DATA_FILE)
    say(f"training the demo model (DigitsCNN, {epochs} epochs)")
    report = _epoch_reporter(dataset, epochs, say) if progress is not None else None
    model = train_digits_cnn(seed, epochs=epochs, dataset=dataset, after_epoch=report)
    say(f"writing {directory / MODEL_FILE} (torch.export)")
    example = (torch.from_numpy(dataset.inputs("train")[0][:2]),)
    save_torch(model, example, directory / MODEL_FILE)
    name = "digits-pipeline" if full else "digits-cnn"
    say(f"writing {job_path}")
    job_path.write_text(yaml.safe_dump(digits_job(full=full, name=name), sort_keys=False))
    return job_path


def _silent(_line: str) -> None:
    """No progress wanted (library callers, tests)."""


def _epoch_reporter(
    dataset: Dataset, epochs: int, say: Progress
) -> Callable[[nn.Module, int], None]:
    """Reports each epoch's validation accuracy and the time so far: the number a user can
    trust (it should climb towards 0.99), and proof that a minute's wait is progress."""
    started = time.monotonic()

    def report(model: nn.Module, epoch: int) -> None:
        accuracy = metric("accuracy", TorchPredictor(model), dataset, "val")
        elapsed = time.monotonic() - started
        say(f"  epoch {epoch}/{epochs}: validation accuracy {accuracy:.4f} ({elapsed:.0f} s)")

    return report
