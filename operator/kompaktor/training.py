"""The one training loop every stage uses (train, prune fine-tuning, distill, HPO trials).

Deterministic for a seed on CPU: the seed fixes the initial RNG state and the shuffling order.

Exported programs: in torch 2.13 the GraphModule from `ExportedProgram.module()` refuses
`.train()` / `.eval()` (NotImplementedError), and the torch.ao `move_exported_model_to_train`
helpers are gone. Its graph keeps the mode it was traced in — inference mode, since models are
exported in eval mode — so such a module fine-tunes with BatchNorm statistics frozen and dropout
off, which is the usual way to fine-tune a trained model anyway. Gradients flow normally.
Plain nn.Modules (e.g. a student built by distill) switch modes as usual.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Literal

import numpy as np
import torch
from torch import nn

from kompaktor.data import Dataset
from kompaktor.timing_lock import paused_seconds, working

Optimizer = Literal["adam", "adamw", "sgd"]
#: loss_fn(module, inputs, targets): inputs is a tuple with one tensor per model input.
LossFn = Callable[[nn.Module, tuple[torch.Tensor, ...], torch.Tensor], torch.Tensor]


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch so a run repeats exactly."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def set_training(module: nn.Module, mode: bool) -> nn.Module:
    """`module.train(mode)`, also for exported GraphModules that refuse it (see module doc)."""
    try:
        module.train(mode)
    except NotImplementedError:
        for sub in module.modules():
            sub.training = mode
    return module


def task_loss(task: str) -> LossFn:
    """Cross-entropy on logits for classification, MSE for regression."""

    def loss(module: nn.Module, x: tuple[torch.Tensor, ...], y: torch.Tensor) -> torch.Tensor:
        out = module(*x)
        if task == "classification":
            return nn.functional.cross_entropy(out, y)
        return nn.functional.mse_loss(out.reshape(y.shape), y)

    return loss


def make_optimizer(
    params: Sequence[nn.Parameter],
    name: Optimizer,
    lr: float,
    weight_decay: float = 0.0,
    momentum: float = 0.0,
) -> torch.optim.Optimizer:
    """Adam/SGD apply weight_decay as an L2 penalty; AdamW decouples it."""
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, weight_decay=weight_decay, momentum=momentum)
    raise ValueError(f"optimizer: must be one of adam, adamw, sgd (got {name!r})")


def as_tensors(
    inputs: np.ndarray | torch.Tensor | Sequence[np.ndarray | torch.Tensor],
) -> tuple[torch.Tensor, ...]:
    """One tensor per model input; float64 arrays become float32 (what models expect)."""
    items = [inputs] if isinstance(inputs, np.ndarray | torch.Tensor) else list(inputs)
    tensors = []
    for item in items:
        tensor = torch.as_tensor(item)
        tensors.append(tensor.float() if tensor.dtype == torch.float64 else tensor)
    return tuple(tensors)


def targets(dataset: Dataset, split: Literal["train", "val", "test"]) -> torch.Tensor:
    """Labels as int64 for classification, float32 values for regression."""
    y = torch.as_tensor(dataset.targets(split))
    return y.long() if dataset.task == "classification" else y.float()


def l1_norm(params: Sequence[torch.Tensor]) -> torch.Tensor:
    """Σ|w| over `params` (what the `l1` penalty scales)."""
    return torch.stack([p.abs().sum() for p in params]).sum()


def _batches(n: int, batch_size: int, generator: torch.Generator) -> list[torch.Tensor]:
    order = torch.randperm(n, generator=generator)
    chunks = list(torch.split(order, batch_size))
    if len(chunks) > 1 and len(chunks[-1]) == 1:  # BatchNorm cannot train on one row
        chunks.pop()
    return chunks


def _step(opt: torch.optim.Optimizer, objective: torch.Tensor) -> None:
    """One optimizer step on `objective`'s gradients."""
    opt.zero_grad(set_to_none=True)
    torch.autograd.backward(objective)
    opt.step()


def fit(
    module: nn.Module,
    dataset: Dataset,
    *,
    epochs: int,
    lr: float,
    batch_size: int,
    optimizer: Optimizer = "adam",
    weight_decay: float = 0.0,
    l1: float = 0.0,
    momentum: float = 0.0,
    seed: int,
    loss_fn: LossFn | None = None,
    log: Callable[[str], None] | None = None,
    on_epoch: Callable[[int, float], bool | None] | None = None,
) -> nn.Module:
    """Train `module` in place on the train split; returns it in eval mode.

    `l1` adds l1 × Σ|w| over trainable parameters; `weight_decay` is L2 (see make_optimizer).
    `on_epoch(epoch, mean_loss)` runs after each epoch (epoch counts from 1) with the module in
    eval mode, so it may evaluate it; the mean is the task (or `loss_fn`) loss without the L1
    term. When it returns True, training stops there (an HPO pruner's verdict).
    Under a timing lock (`kompaktor.timing_lock`) training pauses between batches while a
    sibling run times a model, so its figure is not set by this run's training.
    """
    if epochs < 1 or batch_size < 1 or lr <= 0:
        raise ValueError("fit: epochs and batch_size must be >= 1 and lr > 0")
    seed_everything(seed)
    generator = torch.Generator().manual_seed(seed)
    x = as_tensors(dataset.inputs("train"))
    y = targets(dataset, "train")
    compute_loss = loss_fn or task_loss(dataset.task)
    params = [p for p in module.parameters() if p.requires_grad]
    opt = make_optimizer(params, optimizer, lr, weight_decay, momentum)
    paused = paused_seconds()
    set_training(module, True)
    try:
        with working() as checkpoint:  # lets go of the lock before the caller times the model
            for epoch in range(1, epochs + 1):
                total, rows = 0.0, 0
                for index in _batches(len(y), batch_size, generator):
                    checkpoint()  # pauses here while a sibling run times a model
                    loss = compute_loss(module, tuple(t[index] for t in x), y[index])
                    _step(opt, loss + l1 * l1_norm(params) if l1 > 0 else loss)
                    total += float(loss.detach()) * len(index)
                    rows += len(index)
                mean = total / max(rows, 1)
                if log is not None:
                    log(f"epoch {epoch}/{epochs}: loss {mean:.4f}")
                if on_epoch is not None:
                    set_training(module, False)
                    stop = on_epoch(epoch, mean)
                    set_training(module, True)
                    if stop:
                        break
    finally:
        set_training(module, False)
    paused = paused_seconds() - paused
    if paused and log is not None:
        log(f"paused {paused:.2f} s in all while sibling runs timed their models")
    return module


@torch.no_grad()
def predict_logits(
    module: nn.Module,
    inputs: np.ndarray | torch.Tensor | Sequence[np.ndarray | torch.Tensor],
    batch_size: int = 512,
) -> torch.Tensor:
    """The module's raw outputs on `inputs` (eval mode, no autograd), batch by batch."""
    set_training(module, False)
    x = as_tensors(inputs)
    n = len(x[0])
    outs = [module(*(t[i : i + batch_size] for t in x)) for i in range(0, n, batch_size)]
    return torch.cat(outs) if outs else torch.empty(0)
