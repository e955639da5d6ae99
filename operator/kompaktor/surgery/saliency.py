"""How much each weight or channel matters, so pruning removes the least important.

Magnitude and filter L1 norm need only the weights. The first-order Taylor scores
(Molchanov et al. 2017/2019) estimate the loss change from removing a weight, |w·∂L/∂w|, or a
channel, |Σ a·∂L/∂a| over its activations, averaged over a few batches of training data.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import fx, nn
from torch.fx.interpreter import Interpreter

from kompaktor.surgery.graph import ChannelGroup, fetch_tensor

#: (model inputs, targets) — one training batch.
Batch = tuple[tuple[torch.Tensor, ...], torch.Tensor]
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def magnitude_scores(weights: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """|w| per weight."""
    return {name: w.detach().abs() for name, w in weights.items()}


def taylor_scores(
    module: nn.Module,
    weights: Mapping[str, nn.Parameter],
    batches: Iterable[Batch],
    loss_fn: LossFn,
) -> dict[str, torch.Tensor]:
    """mean over batches of |w·∂L/∂w| per weight (per batch, so gradients of opposite sign
    in different batches do not cancel out for a weight that matters)."""
    names = list(weights)
    params = [weights[n] for n in names]
    totals = [torch.zeros_like(p, requires_grad=False) for p in params]
    count = 0
    with _GradEnabled(params), torch.enable_grad():
        for inputs, target in batches:
            grads = torch.autograd.grad(loss_fn(module(*inputs), target), params)
            for total, p, g in zip(totals, params, grads, strict=True):
                total += (p.detach() * g).abs()
            count += 1
    if count == 0:
        raise ValueError("taylor scores need at least one batch")
    return {n: t / count for n, t in zip(names, totals, strict=True)}


def channel_l1_scores(
    gm: fx.GraphModule, groups: Mapping[str, ChannelGroup]
) -> dict[str, torch.Tensor]:
    """L1 norm of each output filter (Li et al. 2017)."""
    return {
        name: fetch_tensor(gm, g.weight).detach().abs().flatten(1).sum(1)
        for name, g in groups.items()
    }


def channel_taylor_scores(
    gm: fx.GraphModule,
    groups: Mapping[str, ChannelGroup],
    batches: Iterable[Batch],
    loss_fn: LossFn,
) -> dict[str, torch.Tensor]:
    """mean over batches of |Σ a·∂L/∂a| per channel: the gradient of the loss with respect to
    a gate of ones multiplied onto each producer's output is exactly that sum."""
    gates = {name: torch.ones(g.channels, requires_grad=True) for name, g in groups.items()}
    runner = _Gated(gm, {g.producer: (gates[name], g.channel_dim) for name, g in groups.items()})
    totals = {name: torch.zeros(g.channels) for name, g in groups.items()}
    count = 0
    for inputs, target in batches:
        with torch.enable_grad():
            loss = loss_fn(runner.run(*inputs), target)
        grads = torch.autograd.grad(loss, list(gates.values()))
        for name, grad in zip(groups, grads, strict=True):
            totals[name] += grad.abs()
        count += 1
    if count == 0:
        raise ValueError("taylor scores need at least one batch")
    return {name: total / count for name, total in totals.items()}


class _Gated(Interpreter):
    """Runs the graph, multiplying each gated node's output by its gate along the channels."""

    def __init__(self, gm: fx.GraphModule, gates: dict[fx.Node, tuple[torch.Tensor, int]]):
        super().__init__(gm)
        self.gates = gates

    def run_node(self, n: fx.Node) -> Any:
        out = super().run_node(n)
        if n in self.gates:
            gate, dim = self.gates[n]
            shape = [1] * out.dim()
            shape[dim] = -1
            out = out * gate.view(shape)
        return out


class _GradEnabled:
    """Temporarily make parameters require grad (a loaded model may have them frozen)."""

    def __init__(self, params: list[nn.Parameter]) -> None:
        self.params = params
        self.before = [p.requires_grad for p in params]

    def __enter__(self) -> None:
        for p in self.params:
            p.requires_grad_(True)

    def __exit__(self, *exc: object) -> None:
        for p, flag in zip(self.params, self.before, strict=True):
            p.requires_grad_(flag)
