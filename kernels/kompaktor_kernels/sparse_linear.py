"""Sparse linear layers for pruned weights: CSR over output rows, fp32 or int8.

Why CSR by output row: each output is a private accumulation (no write conflicts, trivially
threaded by row with non-zero balancing), batch-1 becomes a gathered dot product, and for batch
> 1 the activations are transposed once so every non-zero is one broadcast-FMA over contiguous
batch lanes. Blocked formats only pay off when the pruning leaves blocks, and unstructured
magnitude pruning does not (measurements: kernels/README.md)."""

from __future__ import annotations

import torch
from torch import nn

from kompaktor_kernels import _checks, _native
from kompaktor_kernels._dispatch import num_threads
from kompaktor_kernels._library import LIB, NAMESPACE
from kompaktor_kernels._quant import quantize_weight

# int32 accumulation bound: |u8 · s8| ≤ 255·127 per term.
_MAX_I8_ROW_NNZ = (2**31 - 1) // (255 * 127) // 2

LIB.define(
    "sparse_linear(Tensor x, Tensor row_ptr, Tensor col, Tensor values, Tensor? bias, "
    "int in_features) -> Tensor"
)
LIB.define(
    "sparse_linear_int8(Tensor x, Tensor row_ptr, Tensor col, Tensor values, Tensor scales, "
    "Tensor rowsum, Tensor? bias, int in_features) -> Tensor"
)


def _check_x(x: torch.Tensor, in_features: int) -> None:
    _checks.tensor("x", x)
    _checks.cpu_dense("x", x)
    _checks.dtype("x", x, torch.float32)
    if x.dim() < 1 or x.shape[-1] != in_features:
        raise ValueError(
            f"x must have shape [..., {in_features}] (in_features), got {tuple(x.shape)}"
        )
    _checks.contiguous("x", x)


def _check_csr(
    row_ptr: torch.Tensor, col: torch.Tensor, values: torch.Tensor, bias: torch.Tensor | None
) -> int:
    _checks.dtype("row_ptr", row_ptr, torch.int32)
    _checks.dtype("col", col, torch.int32)
    if row_ptr.dim() != 1 or row_ptr.numel() < 1 or col.dim() != 1 or values.dim() != 1:
        raise ValueError("row_ptr, col and values must be 1-D (CSR)")
    if col.numel() != values.numel():
        raise ValueError(f"col ({col.numel()}) and values ({values.numel()}) lengths differ")
    out_features = row_ptr.numel() - 1
    if bias is not None:
        _checks.dtype("bias", bias, torch.float32)
        if bias.shape != (out_features,):
            raise ValueError(f"bias must have shape ({out_features},), got {tuple(bias.shape)}")
    for name, t in (("row_ptr", row_ptr), ("col", col), ("values", values)):
        _checks.contiguous(name, t)
    return out_features


def _out_shape(x: torch.Tensor, out_features: int) -> list[int]:
    return [*x.shape[:-1], out_features]


def _sparse_linear_cpu(
    x: torch.Tensor,
    row_ptr: torch.Tensor,
    col: torch.Tensor,
    values: torch.Tensor,
    bias: torch.Tensor | None,
    in_features: int,
) -> torch.Tensor:
    _check_x(x, in_features)
    out_features = _check_csr(row_ptr, col, values, bias)
    _checks.dtype("values", values, torch.float32)
    x2 = x.reshape(-1, in_features)
    y = torch.empty((x2.shape[0], out_features), dtype=torch.float32)
    _native.spmm_f32(x2, row_ptr, col, values, bias, y, num_threads())
    return y.reshape(_out_shape(x, out_features))


def _sparse_linear_int8_cpu(
    x: torch.Tensor,
    row_ptr: torch.Tensor,
    col: torch.Tensor,
    values: torch.Tensor,
    scales: torch.Tensor,
    rowsum: torch.Tensor,
    bias: torch.Tensor | None,
    in_features: int,
) -> torch.Tensor:
    _check_x(x, in_features)
    out_features = _check_csr(row_ptr, col, values, bias)
    _checks.dtype("values", values, torch.int8)
    _checks.dtype("scales", scales, torch.float32)
    _checks.dtype("rowsum", rowsum, torch.int32)
    if scales.shape != (out_features,) or rowsum.shape != (out_features,):
        raise ValueError(f"scales and rowsum must have shape ({out_features},)")
    x2 = x.reshape(-1, in_features)
    y = torch.empty((x2.shape[0], out_features), dtype=torch.float32)
    _native.spmm_i8(x2, row_ptr, col, values, scales, rowsum, bias, y, num_threads())
    return y.reshape(_out_shape(x, out_features))


LIB.impl("sparse_linear", _sparse_linear_cpu, "CPU")
LIB.impl("sparse_linear_int8", _sparse_linear_int8_cpu, "CPU")


@torch.library.register_fake(f"{NAMESPACE}::sparse_linear")
def _sparse_linear_fake(
    x: torch.Tensor,
    row_ptr: torch.Tensor,
    col: torch.Tensor,
    values: torch.Tensor,
    bias: torch.Tensor | None,
    in_features: int,
) -> torch.Tensor:
    torch._check(x.shape[-1] == in_features, lambda: f"x must have shape [..., {in_features}]")
    return x.new_empty(_out_shape(x, row_ptr.shape[0] - 1))


@torch.library.register_fake(f"{NAMESPACE}::sparse_linear_int8")
def _sparse_linear_int8_fake(
    x: torch.Tensor,
    row_ptr: torch.Tensor,
    col: torch.Tensor,
    values: torch.Tensor,
    scales: torch.Tensor,
    rowsum: torch.Tensor,
    bias: torch.Tensor | None,
    in_features: int,
) -> torch.Tensor:
    torch._check(x.shape[-1] == in_features, lambda: f"x must have shape [..., {in_features}]")
    return x.new_empty(_out_shape(x, row_ptr.shape[0] - 1))


def _setup_fp32(ctx: torch.autograd.function.FunctionCtx, inputs: tuple[object, ...], output: torch.Tensor) -> None:  # noqa: E501
    _, row_ptr, col, values, _, in_features = inputs
    assert isinstance(row_ptr, torch.Tensor) and isinstance(col, torch.Tensor)
    assert isinstance(values, torch.Tensor) and isinstance(in_features, int)
    ctx.save_for_backward(row_ptr, col, values)
    ctx.in_features = in_features  # type: ignore[attr-defined]


def _backward_fp32(
    ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor
) -> tuple[torch.Tensor | None, ...]:
    """dL/dx = dL/dy · W (weights are frozen buffers: no weight gradient)."""
    row_ptr, col, values = ctx.saved_tensors  # type: ignore[attr-defined]
    in_features: int = ctx.in_features  # type: ignore[attr-defined]
    w = torch.sparse_csr_tensor(row_ptr, col, values, (row_ptr.numel() - 1, in_features))
    return grad @ w.to_dense(), None, None, None, None, None


torch.library.register_autograd(
    f"{NAMESPACE}::sparse_linear", _backward_fp32, setup_context=_setup_fp32
)


def _to_csr(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    mask = weight != 0
    row_ptr = torch.zeros(weight.shape[0] + 1, dtype=torch.int64)
    torch.cumsum(mask.sum(dim=1), dim=0, out=row_ptr[1:])
    col = mask.nonzero()[:, 1]  # row-major order, matching weight[mask]
    return row_ptr.to(torch.int32), col.to(torch.int32).contiguous(), weight[mask].contiguous()


class SparseLinear(nn.Module):
    """Drop-in replacement for a pruned `nn.Linear`, holding only the non-zero weights.

    The compressed weights are registered buffers, so state_dict, `torch.export` and `.pt2`
    round trips carry them; loading such a program needs `import kompaktor_kernels` first so the
    custom ops exist."""

    row_ptr: torch.Tensor
    col: torch.Tensor
    values: torch.Tensor
    scales: torch.Tensor
    rowsum: torch.Tensor
    bias: torch.Tensor | None

    def __init__(
        self,
        in_features: int,
        out_features: int,
        row_ptr: torch.Tensor,
        col: torch.Tensor,
        values: torch.Tensor,
        bias: torch.Tensor | None = None,
        scales: torch.Tensor | None = None,
        rowsum: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        if values.dtype not in (torch.float32, torch.int8):
            raise TypeError(f"values must be float32 or int8, got {values.dtype}")
        if row_ptr.shape != (out_features + 1,):
            raise ValueError(
                f"row_ptr must have shape ({out_features + 1},), got {tuple(row_ptr.shape)}"
            )
        _check_csr(row_ptr, col, values, bias)
        if col.numel() and (int(col.min()) < 0 or int(col.max()) >= in_features):
            raise ValueError(f"col indices must lie in [0, {in_features})")
        if int(row_ptr[0]) != 0 or int(row_ptr[-1]) != values.numel():
            raise ValueError("row_ptr must start at 0 and end at the number of values")
        if bool((row_ptr[1:] < row_ptr[:-1]).any()):
            raise ValueError("row_ptr must be non-decreasing")
        self.in_features = in_features
        self.out_features = out_features
        self.register_buffer("row_ptr", row_ptr)
        self.register_buffer("col", col)
        self.register_buffer("values", values)
        self.register_buffer("bias", bias)
        if values.dtype == torch.int8:
            if scales is None or rowsum is None:
                raise ValueError("int8 values need per-channel scales and rowsum")
            if out_features and int((row_ptr[1:] - row_ptr[:-1]).max()) > _MAX_I8_ROW_NNZ:
                raise ValueError(f"int8 rows may hold at most {_MAX_I8_ROW_NNZ} non-zeros")
            self.register_buffer("scales", scales)
            self.register_buffer("rowsum", rowsum)

    @property
    def dtype(self) -> torch.dtype:
        return self.values.dtype

    @property
    def nnz(self) -> int:
        return self.values.numel()

    @classmethod
    def from_dense(cls, linear: nn.Linear, dtype: torch.dtype = torch.float32) -> SparseLinear:
        """Compress a (pruned) linear layer; exact zeros are dropped, nothing else is."""
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"expected nn.Linear, got {type(linear).__name__}")
        if dtype not in (torch.float32, torch.int8):
            raise TypeError(f"dtype must be torch.float32 or torch.int8, got {dtype}")
        weight = linear.weight.detach().to("cpu", torch.float32)
        bias = None
        if linear.bias is not None:
            bias = linear.bias.detach().to("cpu", torch.float32).contiguous().clone()
        if dtype == torch.float32:
            row_ptr, col, values = _to_csr(weight)
            return cls(linear.in_features, linear.out_features, row_ptr, col, values, bias)
        wq, scales = quantize_weight(weight)
        row_ptr, col, values = _to_csr(wq)
        rowsum = wq.to(torch.int32).sum(dim=1, dtype=torch.int32)
        return cls(
            linear.in_features,
            linear.out_features,
            row_ptr,
            col,
            values,
            bias,
            scales=scales.contiguous(),
            rowsum=rowsum.contiguous(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # nn.Linear accepts any layout; match it rather than fail on a transposed activation.
        x = _checks.tensor("x", x)
        if x.dtype != torch.float32:
            raise TypeError(f"SparseLinear expects float32 input, got {x.dtype}")
        x = x.contiguous()
        op = torch.ops.kompaktor_kernels
        if self.values.dtype == torch.int8:
            return op.sparse_linear_int8(  # type: ignore[no-any-return]
                x,
                self.row_ptr,
                self.col,
                self.values,
                self.scales,
                self.rowsum,
                self.bias,
                self.in_features,
            )
        return op.sparse_linear(  # type: ignore[no-any-return]
            x, self.row_ptr, self.col, self.values, self.bias, self.in_features
        )

    def extra_repr(self) -> str:
        total = self.in_features * self.out_features
        density = self.nnz / total if total else 0.0
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"dtype={self.dtype}, density={density:.3f}, bias={self.bias is not None}"
        )


def weight_sparsity(linear: nn.Linear) -> float:
    """Fraction of exactly-zero weights."""
    n = linear.weight.numel()
    return 1.0 - int(torch.count_nonzero(linear.weight.detach())) / n if n else 0.0


def sparsify(
    model: nn.Module, dtype: torch.dtype = torch.float32, min_sparsity: float = 0.5
) -> nn.Module:
    """Swap, in place, every nn.Linear whose weight sparsity is >= min_sparsity for a
    SparseLinear, and return the model (a bare nn.Linear is returned replaced)."""
    if dtype not in (torch.float32, torch.int8):
        raise TypeError(f"dtype must be torch.float32 or torch.int8, got {dtype}")
    if not 0.0 <= min_sparsity <= 1.0:
        raise ValueError(f"min_sparsity must lie in [0, 1], got {min_sparsity}")
    if isinstance(model, nn.Linear):
        if weight_sparsity(model) >= min_sparsity:
            return SparseLinear.from_dense(model, dtype)
        return model
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.Linear) and weight_sparsity(child) >= min_sparsity:
                setattr(parent, name, SparseLinear.from_dense(child, dtype))
    return model


__all__ = ["SparseLinear", "sparsify", "weight_sparsity"]
