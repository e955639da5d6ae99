"""1-D k-means for weight sharing: nearest-centroid assignment and the Lloyd-step statistics
in one pass over the weights, without an index tensor in between.

The eager form (`reference.kmeans1d_step_reference`) is bucketize on the centroid midpoints,
then index_add and bincount over the int64 indices: three passes and an 8-byte index per weight.
"""

from __future__ import annotations

import torch

from kompaktor_kernels import _checks, _native
from kompaktor_kernels._dispatch import num_threads


def _check(values: torch.Tensor, centroids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    for name, t in (("values", values), ("centroids", centroids)):
        _checks.tensor(name, t)
        _checks.cpu_dense(name, t)
    if values.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"values must be float32 or float64, got {values.dtype}")
    if centroids.dim() != 1 or centroids.numel() == 0:
        raise ValueError(f"centroids must be a non-empty 1-D tensor, got {tuple(centroids.shape)}")
    c = centroids.detach().resolve_neg().to(torch.float64).contiguous()  # memory as read
    if not bool(torch.isfinite(c).all()):  # NaN compares false and would pass as sorted
        raise ValueError("centroids must be finite")
    if c.numel() > 1 and bool((c[1:] < c[:-1]).any()):
        raise ValueError("centroids must be sorted ascending")
    return values.detach().resolve_neg().reshape(-1).contiguous(), c


def kmeans1d_assign(values: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """Index of each value's nearest centroid (sorted ascending; a value exactly halfway goes
    to the lower one), shaped like `values`: `torch.bucketize(values, midpoints)`."""
    flat, c = _check(values, centroids)
    indices = torch.empty(flat.numel(), dtype=torch.int64)
    _native.kmeans1d_step(flat, c, indices, None, None, num_threads())
    return indices.reshape(values.shape)


def kmeans1d_step(
    values: torch.Tensor, centroids: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """One Lloyd step's statistics: (float64 sum, int64 count) of the values nearest to each
    sorted centroid. The new centroids are `sums / counts` where counts > 0.

    Sums are accumulated in float64 in a fixed order (independent of the thread count)."""
    flat, c = _check(values, centroids)
    sums = torch.empty(c.numel(), dtype=torch.float64)
    counts = torch.empty(c.numel(), dtype=torch.int64)
    _native.kmeans1d_step(flat, c, None, sums, counts, num_threads())
    return sums, counts


__all__ = ["kmeans1d_assign", "kmeans1d_step"]
