"""Remove channels for real: slice the producer's rows and every tensor indexed by them.

The rewritten GraphModule has smaller parameters (not zero masks), so it re-exports with
torch.export as a smaller, faster model, and computes exactly what the original computed
with those channels' weights zeroed.
"""

from __future__ import annotations

import copy

import torch
from torch import fx, nn

from kompaktor.surgery.graph import (
    NO_REMOVABLE_CHANNELS,
    ChannelGroup,
    as_graph_module,
    channel_groups,
    fetch_tensor,
)
from kompaktor.surgery.saliency import channel_l1_scores

aten = torch.ops.aten


def remove_channels(
    gm: fx.GraphModule, groups: dict[str, ChannelGroup], keep: dict[str, torch.Tensor]
) -> int:
    """Keep only channels `keep[name]` (sorted indices) of each named group; returns how many
    channels were removed. Groups come from `channel_groups` on this same module."""
    removed = 0
    for name, indices in keep.items():
        group = groups[name]
        index = indices.sort().values.to(torch.long)
        if index.numel() == 0:
            raise ValueError(f"{name}: cannot remove every channel")
        removed += group.channels - index.numel()
        for target in [group.weight, group.bias, *group.followers]:
            if target is not None:
                _replace(gm, target, fetch_tensor(gm, target).index_select(0, index))
        for target, per in group.consumers.items():
            columns = (index[:, None] * per + torch.arange(per)).flatten()
            _replace(gm, target, fetch_tensor(gm, target).index_select(1, columns))
        for node in group.reshapes:
            node.target = aten.flatten.using_ints
            node.args, node.kwargs = (node.args[0], 1), {}
    gm.recompile()
    return removed


def keep_top(scores: torch.Tensor, count: int) -> torch.Tensor:
    """Indices of the `count` highest scores (at least one), in channel order."""
    count = max(1, min(int(count), scores.numel()))
    return torch.topk(scores, count).indices.sort().values


def width_reduce(
    module: nn.Module, multiplier: float, example: tuple[torch.Tensor, ...]
) -> tuple[fx.GraphModule, int]:
    """A thinner copy: each removable layer keeps round(C * multiplier) channels, the ones
    with the largest filter L1 norms (a better start for a student than the first ones)."""
    gm = as_graph_module(copy.deepcopy(module), example)
    groups = channel_groups(gm, example)
    if not groups:
        raise ValueError(NO_REMOVABLE_CHANNELS)
    scores = channel_l1_scores(gm, groups)
    keep = {
        name: keep_top(scores[name], round(group.channels * multiplier))
        for name, group in groups.items()
    }
    return gm, remove_channels(gm, groups, keep)


def channel_count(gm: fx.GraphModule, groups: dict[str, ChannelGroup]) -> dict[str, int]:
    """Current output channels of each group's producer."""
    return {name: int(fetch_tensor(gm, g.weight).shape[0]) for name, g in groups.items()}


def _replace(gm: nn.Module, target: str, value: torch.Tensor) -> None:
    """Swap a parameter, buffer or plain tensor attribute, keeping its kind."""
    owner_name, _, leaf = target.rpartition(".")
    owner = gm.get_submodule(owner_name) if owner_name else gm
    if leaf in owner._parameters:
        old = owner._parameters[leaf]
        grad = old.requires_grad if old is not None else True
        owner._parameters[leaf] = nn.Parameter(value.detach().clone(), requires_grad=grad)
    elif leaf in owner._buffers:
        owner._buffers[leaf] = value.detach().clone()
    else:
        setattr(owner, leaf, value.detach().clone())


def stored_elements(module: nn.Module) -> int:
    """Parameters plus buffers: what evaluate.parameter_count counts for a saved model."""
    return sum(t.numel() for t in [*module.parameters(), *module.buffers()])
