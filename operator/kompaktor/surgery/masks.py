"""Unstructured sparsity: which weights may be pruned, which to zero, and keeping them zero.

Masked weights are exactly zero in the output. During fine-tuning a gradient hook zeroes their
gradients (so Adam/SGD moments stay zero and the weights never move); the masks are applied
again when fine-tuning ends, so whatever the optimizer does the result is exact.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import fx, nn
from torch.utils.hooks import RemovableHandle

from kompaktor.surgery.graph import output_layers, torchscript_output_layers

Scope = Literal["global", "layer"]


def prunable_weights(
    module: nn.Module, skip: Sequence[str] = (), keep_output: bool = True
) -> dict[str, nn.Parameter]:
    """Conv/linear weight matrices by layer name, minus layers matching a `skip` glob and,
    with `keep_output`, the layer(s) producing the model's output."""
    weights = {
        name.removesuffix(".weight"): p
        for name, p in module.named_parameters()
        if name.rpartition(".")[2] == "weight" and p.dim() >= 2
    }
    pinned = set()
    if keep_output and weights:
        if isinstance(module, fx.GraphModule):
            pinned = output_layers(module)
        else:  # TorchScript's graph, else (an eager module) the last matrix by convention
            if isinstance(module, torch.jit.ScriptModule):
                pinned = torchscript_output_layers(module)
            pinned = pinned or {list(weights)[-1]}
    return {
        name: p
        for name, p in weights.items()
        if name not in pinned and not any(fnmatch.fnmatchcase(name, pat) for pat in skip)
    }


def excluded_weights(
    module: nn.Module, skip: Sequence[str] = (), keep_output: bool = True
) -> dict[str, list[str]]:
    """What `prunable_weights` leaves out, and why: `output` (the layers it keeps, as
    keepOutputLayer asks), `skip` (a glob names them), `other` (matrices that are no conv or
    linear `weight`: recurrent, attention in-projections, embeddings tables by another name)."""
    matrices = [name for name, p in module.named_parameters() if p.dim() >= 2]
    layers = prunable_weights(module, (), keep_output=False)
    kept = prunable_weights(module, (), keep_output)
    return {
        "output": sorted(set(layers) - set(kept)),
        "skip": sorted(n for n in kept if any(fnmatch.fnmatchcase(n, pat) for pat in skip)),
        "other": sorted(n for n in matrices if n.removesuffix(".weight") not in layers),
    }


def masks_for_sparsity(
    scores: Mapping[str, torch.Tensor], sparsity: float, scope: Scope
) -> dict[str, torch.Tensor]:
    """Keep-masks (True = keep) zeroing exactly round(sparsity * n) lowest-scored weights,
    counted over all layers together (global) or in each layer (layer)."""
    if scope == "layer":
        return {name: _keep_mask(s.flatten(), sparsity).view_as(s) for name, s in scores.items()}
    flat = torch.cat([s.flatten() for s in scores.values()])
    keep = _keep_mask(flat, sparsity)
    masks, start = {}, 0
    for name, s in scores.items():
        masks[name] = keep[start : start + s.numel()].view_as(s)
        start += s.numel()
    return masks


def _keep_mask(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    keep = torch.ones_like(scores, dtype=torch.bool)
    count = round(sparsity * scores.numel())
    if count > 0:
        keep[torch.topk(scores, count, largest=False).indices] = False
    return keep


def sparsity_of(weights: Mapping[str, torch.Tensor]) -> float:
    """Fraction of exactly-zero elements over all the given weights."""
    total = sum(w.numel() for w in weights.values())
    zeros = sum(int((w == 0).sum()) for w in weights.values())
    return zeros / total if total else 0.0


@dataclass
class MaskHold:
    """Masks in force on their weights; `apply` zeroes the masked weights again."""

    weights: Mapping[str, nn.Parameter]
    masks: Mapping[str, torch.Tensor]
    handles: list[RemovableHandle] = field(default_factory=list)

    def apply(self) -> None:
        with torch.no_grad():
            for name, mask in self.masks.items():
                self.weights[name].mul_(mask)


@contextmanager
def hold_masks(
    weights: Mapping[str, nn.Parameter], masks: Mapping[str, torch.Tensor]
) -> Iterator[MaskHold]:
    """Zero the masked weights and keep them zero for the duration (see module docstring)."""
    hold = MaskHold(weights, masks)
    hold.apply()
    for name, mask in masks.items():
        keep = mask.to(weights[name].dtype)
        handle = weights[name].register_hook(  # type: ignore[no-untyped-call]
            lambda g, keep=keep: g * keep
        )
        hold.handles.append(handle)
    try:
        yield hold
    finally:
        for handle in hold.handles:
            handle.remove()
        hold.apply()
