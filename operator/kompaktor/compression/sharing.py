"""Weight sharing: each layer's weights snapped to k shared values (1-D k-means).

The model keeps float weights (so it runs anywhere), but every layer holds at most k distinct
values, i.e. it can ship as a k-entry codebook plus ⌈log2 k⌉-bit indices.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from kompaktor.surgery.kernels import optional_kernel


@dataclass(frozen=True)
class Shared:
    """One layer's codebook and each weight's index into it."""

    layer: str
    codebook: torch.Tensor
    indices: torch.Tensor


def cluster_1d(
    values: torch.Tensor, k: int, iterations: int = 30
) -> tuple[torch.Tensor, torch.Tensor]:
    """Lloyd's k-means on a flat tensor, started at evenly spaced quantiles (deterministic).

    Returns (sorted centroids, index of each value's centroid)."""
    flat = values.detach().flatten().double()
    k = min(k, flat.numel())
    quantiles = torch.linspace(0, 1, k, dtype=flat.dtype)
    centroids = torch.quantile(flat, quantiles) if flat.numel() <= 16_000_000 else flat[:k]
    for _ in range(iterations):
        sums, counts = _lloyd_statistics(flat, centroids)
        updated = torch.where(counts > 0, sums / counts.clamp(min=1), centroids)
        if torch.allclose(updated, centroids):
            break
        centroids = updated.sort().values
    indices = _nearest(flat, centroids)
    used = torch.unique(indices)
    centroids, indices = centroids[used], torch.searchsorted(used, indices)
    return centroids.to(values.dtype), indices.reshape(values.shape)


def _nearest(flat: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """Index of the nearest sorted centroid: a bucket search on the midpoints."""
    assign = optional_kernel("kmeans1d_assign")
    if assign is not None:
        found: torch.Tensor = assign(flat, centroids)
        return found
    midpoints = (centroids[1:] + centroids[:-1]) / 2
    return torch.bucketize(flat, midpoints)


def _lloyd_statistics(
    flat: torch.Tensor, centroids: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum, count) of the values nearest each centroid: one fused pass in kompaktor_kernels
    (≈5× faster than the three passes below, same result), PyTorch without it."""
    step = optional_kernel("kmeans1d_step")
    if step is not None:
        sums, counts = step(flat, centroids)
        return sums.to(flat.dtype), counts.to(flat.dtype)
    indices = _nearest(flat, centroids)
    sums = torch.zeros_like(centroids).index_add_(0, indices, flat)
    counts = torch.bincount(indices, minlength=len(centroids)).to(flat.dtype)
    return sums, counts


def sharable_weights(module: nn.Module, skip: Sequence[str] = ()) -> dict[str, nn.Parameter]:
    """Conv and linear weights (parameters named *weight with two or more dims)."""
    return {
        name.removesuffix(".weight"): param
        for name, param in module.named_parameters()
        if name.split(".")[-1].startswith("weight")
        and param.dim() >= 2
        and not any(fnmatch.fnmatchcase(name.removesuffix(".weight"), p) for p in skip)
    }


def share_weights(weights: dict[str, nn.Parameter], k: int) -> list[Shared]:
    """Cluster each layer's weights into k values and write the centroids back in place."""
    shared = []
    with torch.no_grad():
        for layer, weight in weights.items():
            codebook, indices = cluster_1d(weight, k)
            weight.copy_(codebook[indices])
            shared.append(Shared(layer, codebook, indices))
    return shared


def recenter(weights: dict[str, nn.Parameter], shared: Sequence[Shared]) -> list[Shared]:
    """After fine-tuning moved the weights: each cluster takes the mean of its members again
    (the indices stay), so the layer is back to at most k values."""
    updated = []
    with torch.no_grad():
        for item in shared:
            weight = weights[item.layer]
            flat, idx = weight.detach().flatten(), item.indices.flatten()
            sums = torch.zeros(len(item.codebook), dtype=flat.dtype).index_add_(0, idx, flat)
            counts = torch.bincount(idx, minlength=len(item.codebook)).clamp(min=1)
            codebook = sums / counts.to(flat.dtype)
            weight.copy_(codebook[item.indices])
            updated.append(Shared(item.layer, codebook, item.indices))
    return updated
