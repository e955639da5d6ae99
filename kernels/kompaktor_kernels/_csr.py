"""The CSR weights of sparse linear layers: conversion from a dense weight and full validation.

Column indices are uint16 when in_features <= 65536 (a quarter less memory for fp32 weights,
40 % for int8), else int32."""

from __future__ import annotations

import torch

from kompaktor_kernels import _checks

# int32 accumulation bound: |u8 · s8| ≤ 255·127 per term.
MAX_I8_ROW_NNZ = (2**31 - 1) // (255 * 127) // 2
# Widest layer whose column indices fit uint16.
MAX_UINT16_IN_FEATURES = 2**16
INDEX_DTYPES = (torch.uint16, torch.int32)
WEIGHT_DTYPES = (torch.float32, torch.int8)


def check_weight_dtype(name: str, dtype: torch.dtype) -> None:
    """A layer's weight dtype (requested or stored) is one the kernels run: fp32 or int8."""
    if dtype not in WEIGHT_DTYPES:
        raise TypeError(f"{name} must be torch.float32 or torch.int8, got {dtype}")


def default_index_dtype(in_features: int) -> torch.dtype:
    """uint16 column indices when every column fits, else int32."""
    return torch.uint16 if in_features <= MAX_UINT16_IN_FEATURES else torch.int32


def validate_csr(
    row_ptr: torch.Tensor,
    col: torch.Tensor,
    values: torch.Tensor,
    in_features: int,
    values_dtype: torch.dtype,
) -> None:
    """Full CSR invariants (O(nnz)): everything the C++ loops index with must be in range."""
    for name, t in (("row_ptr", row_ptr), ("col", col), ("values", values)):
        _checks.tensor(name, t)
        _checks.cpu_dense(name, t)
        _checks.not_negated(name, t)
        _checks.contiguous(name, t)
    _checks.dtype("row_ptr", row_ptr, torch.int32)
    if col.dtype not in INDEX_DTYPES:
        raise TypeError(f"col must have dtype torch.int32 or torch.uint16, got {col.dtype}")
    if col.dtype == torch.uint16 and in_features > MAX_UINT16_IN_FEATURES:
        raise ValueError(
            f"uint16 col indices need in_features <= {MAX_UINT16_IN_FEATURES}, got {in_features}"
        )
    _checks.dtype("values", values, values_dtype)
    if row_ptr.dim() != 1 or row_ptr.numel() < 1 or col.dim() != 1 or values.dim() != 1:
        raise ValueError("row_ptr, col and values must be 1-D (CSR)")
    if col.numel() != values.numel():
        raise ValueError(f"col ({col.numel()}) and values ({values.numel()}) lengths differ")
    if int(row_ptr[0]) != 0 or int(row_ptr[-1]) != values.numel():
        raise ValueError("row_ptr must start at 0 and end at the number of values")
    if bool((row_ptr[1:] < row_ptr[:-1]).any()):
        raise ValueError("row_ptr must be non-decreasing")
    c = col.to(torch.int32)  # uint16 has no min/max kernels
    if c.numel() and (int(c.min()) < 0 or int(c.max()) >= in_features):
        raise ValueError(f"col indices must lie in [0, {in_features})")


def check_vec(name: str, t: torch.Tensor | None, n: int, dtype: torch.dtype) -> None:
    """A per-output vector (bias, scales, rowsum), if given: CPU, dense, [n] of dtype."""
    if t is None:
        return
    _checks.tensor(name, t)
    _checks.cpu_dense(name, t)
    _checks.not_negated(name, t)
    _checks.dtype(name, t, dtype)
    if t.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},), got {tuple(t.shape)}")
    _checks.contiguous(name, t)


def validate_layer(
    in_features: int,
    out_features: int,
    row_ptr: torch.Tensor,
    col: torch.Tensor,
    values: torch.Tensor,
    bias: torch.Tensor | None,
    scales: torch.Tensor | None,
    rowsum: torch.Tensor | None,
) -> None:
    """Everything a layer's tensors must satisfy (O(nnz)), int8's scales and row sums included:
    a checkpoint or a caller can hand in any of them, and a wrong one gives wrong outputs, not
    an error, once it reaches the kernels."""
    check_weight_dtype("values", _checks.tensor("values", values).dtype)
    _checks.tensor("row_ptr", row_ptr)
    if row_ptr.shape != (out_features + 1,):
        raise ValueError(
            f"row_ptr must have shape ({out_features + 1},), got {tuple(row_ptr.shape)}"
        )
    validate_csr(row_ptr, col, values, in_features, values.dtype)
    check_vec("bias", bias, out_features, torch.float32)
    if values.dtype == torch.int8:
        validate_int8(row_ptr, values, scales, rowsum)


def validate_int8(
    row_ptr: torch.Tensor,
    values: torch.Tensor,
    scales: torch.Tensor | None,
    rowsum: torch.Tensor | None,
) -> None:
    """An int8 layer's quantisation over a valid CSR (O(nnz)): rows short enough for exact
    int32 sums, finite positive scales, and the row sums the zero-point correction uses."""
    out_features = row_ptr.numel() - 1
    if scales is None or rowsum is None:
        raise ValueError("int8 values need per-channel scales and rowsum")
    check_vec("scales", scales, out_features, torch.float32)
    check_vec("rowsum", rowsum, out_features, torch.int32)
    if out_features and int((row_ptr[1:] - row_ptr[:-1]).max()) > MAX_I8_ROW_NNZ:
        raise ValueError(f"int8 rows may hold at most {MAX_I8_ROW_NNZ} non-zeros")
    if not bool((torch.isfinite(scales) & (scales > 0)).all()):
        raise ValueError("scales must be finite and positive")
    sums = torch.zeros(out_features, dtype=torch.int64)
    sums.index_add_(0, row_ids(row_ptr, values.numel()), values.to(torch.int64))
    if not torch.equal(sums, rowsum.to(torch.int64)):
        raise ValueError("rowsum must hold each row's sum of values (the zero-point correction)")


def row_ids(row_ptr: torch.Tensor, nnz: int) -> torch.Tensor:
    """The output row of each non-zero, in storage order."""
    lengths = (row_ptr[1:] - row_ptr[:-1]).long()
    return torch.repeat_interleave(torch.arange(row_ptr.numel() - 1), lengths, output_size=nnz)


def dense_weight(
    row_ptr: torch.Tensor,
    col: torch.Tensor,
    values: torch.Tensor,
    scales: torch.Tensor | None,
    in_features: int,
) -> torch.Tensor:
    """The [out, in] fp32 weight the CSR holds; int8 values times their per-row scales."""
    rows = row_ids(row_ptr, col.numel())
    w = torch.zeros((row_ptr.numel() - 1, in_features), dtype=torch.float32)
    w[rows, col.long()] = values if scales is None else values.float() * scales[rows]
    return w


def to_csr(
    weight: torch.Tensor, index_dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """row_ptr, col and values of a dense [out, in] weight's non-zeros, rows in order."""
    mask = weight != 0
    row_ptr = torch.zeros(weight.shape[0] + 1, dtype=torch.int64)
    torch.cumsum(mask.sum(dim=1), dim=0, out=row_ptr[1:])
    col = mask.nonzero()[:, 1]  # row-major order, matching weight[mask]
    return row_ptr.to(torch.int32), col.to(index_dtype).contiguous(), weight[mask].contiguous()
