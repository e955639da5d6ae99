"""Weight sharing: each layer's weights snapped to k shared values (1-D k-means).

The model keeps float weights (so it runs anywhere), but every layer holds at most k distinct
values, i.e. it can ship as a k-entry codebook plus ⌈log2 k⌉-bit indices.

Fine-tuning trains the codebooks, not the weights (Han et al. 2016, "Deep Compression":
trained quantization): while `train_codebooks` runs, each shared weight is
`codebook[indices]` with the indices fixed, so a centroid's gradient is the sum of its
members' gradients and the layer holds at most k values at every step. Training the free
weights and averaging each cluster afterwards instead throws away what the weights learned
together.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils import parametrize

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


def cluster_means(weight: torch.Tensor, indices: torch.Tensor, k: int) -> torch.Tensor:
    """Each cluster's mean (summed in float64, so a cluster of equal values gives that value
    exactly); a cluster with no members keeps 0."""
    flat, idx = weight.detach().flatten().double(), indices.flatten()
    sums = torch.zeros(k, dtype=flat.dtype).index_add_(0, idx, flat)
    counts = torch.bincount(idx, minlength=k).clamp(min=1)
    return (sums / counts.to(flat.dtype)).to(weight.dtype)


class CodebookParametrization(nn.Module):
    """`weight = codebook[indices]` with the indices fixed: registered on a weight, it makes the
    codebook (the cluster means, see `right_inverse`) the trainable tensor in its place."""

    indices: torch.Tensor

    def __init__(self, indices: torch.Tensor, clusters: int) -> None:
        super().__init__()
        self.clusters = clusters
        self.register_buffer("indices", indices.detach().to(torch.int64).clone())

    def forward(self, codebook: torch.Tensor) -> torch.Tensor:
        return codebook[self.indices]  # backward sums each centroid's members' gradients

    def right_inverse(self, weight: torch.Tensor) -> torch.Tensor:
        return cluster_means(weight, self.indices, self.clusters)


def train_codebooks(
    module: nn.Module,
    shared: Sequence[Shared],
    train: Callable[[nn.Module], object],
    *,
    train_others: bool = False,
) -> list[Shared]:
    """Run `train(module)` with each shared weight parametrized as `codebook[indices]`, so only
    the codebooks (and, with `train_others`, the parameters no layer shares: biases, norm
    scales, skipped layers) learn; then store each weight as its trained `codebook[indices]`
    again (a float parameter, at most k values, no gradient) and return the trained codebooks.
    In place; every parameter's `requires_grad` is as before afterwards."""
    names = dict(module.named_parameters())
    paths = [parameter_path(names, item.layer) for item in shared]
    trainable = {param: param.requires_grad for param in module.parameters()}
    if not train_others:
        for param in trainable:
            param.requires_grad_(False)
    registered: list[tuple[nn.Module, str]] = []
    try:
        for item, path in zip(shared, paths, strict=True):
            owner_path, _, leaf = path.rpartition(".")
            owner = module.get_submodule(owner_path) if owner_path else module
            parametrization = CodebookParametrization(item.indices, len(item.codebook))
            parametrize.register_parametrization(owner, leaf, parametrization)
            registered.append((owner, leaf))
            _codebook(owner, leaf).requires_grad_(True)
        train(module)
        return [
            Shared(item.layer, _codebook(owner, leaf).detach().clone(), item.indices)
            for item, (owner, leaf) in zip(shared, registered, strict=True)
        ]
    finally:
        for owner, leaf in registered:
            _codebook(owner, leaf).grad = None  # the weight keeps the tensor, not its shape
            parametrize.remove_parametrizations(owner, leaf, leave_parametrized=True)
        for param, required in trainable.items():
            param.requires_grad_(required)


def _codebook(owner: nn.Module, leaf: str) -> torch.Tensor:
    """The tensor a parametrized weight is computed from: its codebook."""
    parametrizations = owner.parametrizations
    assert isinstance(parametrizations, nn.ModuleDict)
    original = parametrizations[leaf].original
    assert isinstance(original, torch.Tensor)
    return original


def parameter_path(parameters: dict[str, nn.Parameter], layer: str) -> str:
    """The parameter a `Shared` layer name stands for (`fc1` → `fc1.weight`; lowrank's
    `fc1.weight_low` is already a parameter path)."""
    return f"{layer}.weight" if f"{layer}.weight" in parameters else layer
