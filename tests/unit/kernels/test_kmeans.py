from __future__ import annotations

import pytest
import torch

import kompaktor_kernels as kk
from kompaktor_kernels.reference import kmeans1d_step_reference


def sorted_centroids(values: torch.Tensor, k: int) -> torch.Tensor:
    q = torch.linspace(0, 1, k, dtype=torch.float64)
    return torch.quantile(values.flatten().double(), q)


@pytest.mark.parametrize("k", [1, 2, 3, 16, 255])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_matches_reference(k: int, dtype: torch.dtype) -> None:
    values = torch.randn(37, 101, dtype=dtype)  # one block, odd length
    centroids = sorted_centroids(values, k)
    ref_idx, ref_sums, ref_counts = kmeans1d_step_reference(values, centroids)
    idx = kk.kmeans1d_assign(values, centroids)
    assert idx.shape == values.shape and idx.dtype == torch.int64
    assert torch.equal(idx, ref_idx)
    sums, counts = kk.kmeans1d_step(values, centroids)
    assert torch.equal(counts, ref_counts)
    torch.testing.assert_close(sums, ref_sums, rtol=1e-12, atol=1e-12)


def test_many_blocks_and_threads_are_deterministic() -> None:
    values = torch.randn(200_003)  # > 6 blocks of 2^15, odd tail
    centroids = sorted_centroids(values, 8)
    _, ref_sums, ref_counts = kmeans1d_step_reference(values, centroids)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = kk.kmeans1d_step(values, centroids)
        torch.set_num_threads(max(2, before))
        many = kk.kmeans1d_step(values, centroids)
    finally:
        torch.set_num_threads(before)
    assert torch.equal(one[0], many[0]) and torch.equal(one[1], many[1])
    assert torch.equal(one[1], ref_counts)
    torch.testing.assert_close(one[0], ref_sums, rtol=1e-12, atol=1e-9)


def test_ties_duplicates_and_nan_follow_bucketize() -> None:
    centroids = torch.tensor([-1.0, 0.0, 0.0, 2.0], dtype=torch.float64)
    values = torch.tensor([-0.5, 0.0, 1.0, 1.0000001, -3.0, 5.0, float("nan"), float("inf")])
    ref_idx, ref_sums, ref_counts = kmeans1d_step_reference(values, centroids)
    assert torch.equal(kk.kmeans1d_assign(values, centroids), ref_idx)
    sums, counts = kk.kmeans1d_step(values, centroids)
    assert torch.equal(counts, ref_counts)
    torch.testing.assert_close(sums, ref_sums, equal_nan=True)


def test_empty_values() -> None:
    sums, counts = kk.kmeans1d_step(torch.empty(0), torch.tensor([0.0, 1.0]))
    assert sums.tolist() == [0.0, 0.0] and counts.tolist() == [0, 0]
    assert kk.kmeans1d_assign(torch.empty(0, 3), torch.tensor([0.0])).shape == (0, 3)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_negated_views_are_read_as_their_values(dtype: torch.dtype) -> None:
    """A `_neg_view`'s memory holds the negated values; the kernel read memory."""
    values = torch.randn(1000, dtype=dtype)
    centroids = torch.tensor([-1.0, 0.25, 2.0], dtype=dtype)
    expected = kk.kmeans1d_assign(-values, centroids)
    assert torch.equal(kk.kmeans1d_assign(torch._neg_view(values), centroids), expected)
    flipped = torch._neg_view(-centroids.flip(0)).flip(0)  # the same centroids, negated view
    assert torch.equal(kk.kmeans1d_assign(-values, flipped), expected)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="sorted"):
        kk.kmeans1d_step(torch.randn(4), torch.tensor([1.0, 0.0]))
    with pytest.raises(ValueError, match="finite"):  # NaN is unordered: it passed as sorted
        kk.kmeans1d_step(torch.randn(4), torch.tensor([0.0, float("nan")]))
    with pytest.raises(ValueError, match="non-empty"):
        kk.kmeans1d_assign(torch.randn(4), torch.empty(0))
    with pytest.raises(TypeError, match="float32 or float64"):
        kk.kmeans1d_assign(torch.arange(4), torch.tensor([0.0]))
