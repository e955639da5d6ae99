"""Pure-PyTorch eager references that the compiled kernels are tested and benchmarked against."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kompaktor_kernels._csr import check_weight_dtype
from kompaktor_kernels._quant import quantize_activation, quantize_weight


def kd_loss_reference(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    temperature: float,
    alpha: float,
    ignore_index: int = -100,
) -> torch.Tensor:
    """alpha·T²·KL(teacher ‖ student at temperature T) + (1-alpha)·CE(student, labels), mean
    over the rows not labelled ignore_index; the eager composition the fused kernel replaces.
    Logits [..., vocab], labels [...]."""
    T = temperature
    vocab = student_logits.shape[-1]
    student, labels = student_logits.reshape(-1, vocab), labels.reshape(-1)
    kl_rows = F.kl_div(
        F.log_softmax(student / T, dim=-1),
        F.log_softmax(teacher_logits.detach().reshape(-1, vocab) / T, dim=-1),
        log_target=True,
        reduction="none",
    ).sum(dim=-1)
    kept = labels != ignore_index
    kl = torch.where(kept, kl_rows, 0.0).sum() / kept.sum()
    ce = F.cross_entropy(student, labels, ignore_index=ignore_index)
    return kl * T * T * alpha + (1 - alpha) * ce


def sparse_linear_reference(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """What SparseLinear computes, from the dense weight.

    fp32 is plain F.linear. int8 reproduces the kernel's arithmetic exactly (per-channel s8
    weights, per-row dynamic u8 activations, integer accumulation in float64, which is exact
    here), so tests can hold the kernel to float rounding rather than quantisation error."""
    check_weight_dtype("dtype", dtype)
    if dtype == torch.float32:
        return F.linear(x, weight.to(torch.float32), bias)
    x2 = x.reshape(-1, x.shape[-1]).to(torch.float32)
    wq, wscale = quantize_weight(weight)
    xq, xscale, zp = quantize_activation(x2)
    acc = xq.double() @ wq.double().T
    rowsum = wq.double().sum(dim=1)
    y = (acc - zp.double()[:, None] * rowsum[None, :]).to(torch.float32)
    y = y * (xscale[:, None] * wscale[None, :])
    if bias is not None:
        y = y + bias.to(torch.float32)
    return y.reshape(*x.shape[:-1], weight.shape[0])


def kmeans1d_step_reference(
    values: torch.Tensor, centroids: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Eager 1-D Lloyd step: (nearest-centroid index per value, float64 sums, int64 counts).

    Nearest is bucketize on the midpoints of the sorted centroids (ties to the lower one), as in
    kompaktor.compression.sharing."""
    flat = values.detach().reshape(-1).double()
    c = centroids.detach().double()
    indices = torch.bucketize(flat, (c[1:] + c[:-1]) / 2)
    sums = torch.zeros_like(c).index_add_(0, indices, flat)
    counts = torch.bincount(indices, minlength=c.numel())
    return indices.reshape(values.shape), sums, counts
