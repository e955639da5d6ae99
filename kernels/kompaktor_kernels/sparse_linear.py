"""Sparse linear layers for pruned weights: CSR over output rows, fp32 or int8.

Why CSR by output row: each output is a private accumulation (no write conflicts, trivially
threaded by row with non-zero balancing), batch-1 becomes a gathered dot product, and for batch
> 1 the activations are transposed once so every non-zero is one broadcast-FMA over contiguous
batch lanes. Blocked formats only pay off when the pruning leaves blocks, and unstructured
magnitude pruning does not (measurements: kernels/README.md)."""

from __future__ import annotations

import weakref

import torch
from torch import nn

from kompaktor_kernels import _checks, _native
from kompaktor_kernels._dispatch import num_threads
from kompaktor_kernels._library import NAMESPACE, check, define, impl_cpu, register_fake
from kompaktor_kernels._quant import quantize_weight

# int32 accumulation bound: |u8 · s8| ≤ 255·127 per term.
_MAX_I8_ROW_NNZ = (2**31 - 1) // (255 * 127) // 2

define(
    "sparse_linear(Tensor x, Tensor row_ptr, Tensor col, Tensor values, Tensor? bias, "
    "int in_features) -> Tensor"
)
define(
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


def _validate_csr(
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
        _checks.contiguous(name, t)
    _checks.dtype("row_ptr", row_ptr, torch.int32)
    _checks.dtype("col", col, torch.int32)
    _checks.dtype("values", values, values_dtype)
    if row_ptr.dim() != 1 or row_ptr.numel() < 1 or col.dim() != 1 or values.dim() != 1:
        raise ValueError("row_ptr, col and values must be 1-D (CSR)")
    if col.numel() != values.numel():
        raise ValueError(f"col ({col.numel()}) and values ({values.numel()}) lengths differ")
    if int(row_ptr[0]) != 0 or int(row_ptr[-1]) != values.numel():
        raise ValueError("row_ptr must start at 0 and end at the number of values")
    if bool((row_ptr[1:] < row_ptr[:-1]).any()):
        raise ValueError("row_ptr must be non-decreasing")
    if col.numel() and (int(col.min()) < 0 or int(col.max()) >= in_features):
        raise ValueError(f"col indices must lie in [0, {in_features})")


# Weight buffers are fixed between calls, so their O(nnz) validation is cached per tensor object
# and version counter (an in-place edit bumps the version and forces a re-check).
_validated: dict[int, tuple[weakref.ref[torch.Tensor], tuple[int, ...]]] = {}


def _check_csr_cached(
    row_ptr: torch.Tensor,
    col: torch.Tensor,
    values: torch.Tensor,
    in_features: int,
    values_dtype: torch.dtype,
) -> None:
    if row_ptr.is_inference() or col.is_inference() or values.is_inference():
        # Inference tensors keep no version counter, so nothing proves them unchanged.
        _validate_csr(row_ptr, col, values, in_features, values_dtype)
        return
    key = (
        id(row_ptr), row_ptr._version, id(values), values._version, col._version,
        col.data_ptr(), values.data_ptr(), row_ptr.data_ptr(), in_features,
    )  # fmt: skip
    hit = _validated.get(id(col))
    if hit is not None and hit[0]() is col and hit[1] == key and values.dtype == values_dtype:
        return
    _validate_csr(row_ptr, col, values, in_features, values_dtype)
    if len(_validated) > 4096:
        _validated.clear()
    _validated[id(col)] = (weakref.ref(col), key)


def _check_vec(name: str, t: torch.Tensor | None, n: int, dtype: torch.dtype) -> None:
    if t is None:
        return
    _checks.tensor(name, t)
    _checks.cpu_dense(name, t)
    _checks.dtype(name, t, dtype)
    if t.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},), got {tuple(t.shape)}")
    _checks.contiguous(name, t)


def _plain(t: torch.Tensor | None) -> torch.Tensor | None:
    return t.clone() if t is not None and t.is_inference() else t


def _out_shape(x: torch.Tensor, out_features: int) -> list[int]:
    return [*x.shape[:-1], out_features]


def _ptr(t: torch.Tensor | None) -> int:
    return 0 if t is None else int(t.data_ptr())


def _sparse_linear_cpu(
    x: torch.Tensor,
    row_ptr: torch.Tensor,
    col: torch.Tensor,
    values: torch.Tensor,
    bias: torch.Tensor | None,
    in_features: int,
) -> torch.Tensor:
    _check_x(x, in_features)
    _check_csr_cached(row_ptr, col, values, in_features, torch.float32)
    out_features = row_ptr.numel() - 1
    _check_vec("bias", bias, out_features, torch.float32)
    y = torch.empty(_out_shape(x, out_features), dtype=torch.float32)
    if in_features == 0:
        return y.fill_(0).add_(bias) if bias is not None else y.fill_(0)
    batch = x.numel() // in_features
    _native.spmm_f32_ptr(
        x.data_ptr(), batch, in_features, out_features, row_ptr.data_ptr(), col.data_ptr(),
        values.data_ptr(), _ptr(bias), y.data_ptr(), num_threads(),
    )  # fmt: skip
    return y


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
    _check_csr_cached(row_ptr, col, values, in_features, torch.int8)
    out_features = row_ptr.numel() - 1
    _check_vec("scales", scales, out_features, torch.float32)
    _check_vec("rowsum", rowsum, out_features, torch.int32)
    _check_vec("bias", bias, out_features, torch.float32)
    y = torch.empty(_out_shape(x, out_features), dtype=torch.float32)
    if in_features == 0:
        return y.fill_(0).add_(bias) if bias is not None else y.fill_(0)
    _native.spmm_i8_ptr(
        x.data_ptr(), x.numel() // in_features, in_features, out_features, row_ptr.data_ptr(),
        col.data_ptr(), values.data_ptr(), scales.data_ptr(), rowsum.data_ptr(), _ptr(bias),
        y.data_ptr(), num_threads(),
    )  # fmt: skip
    return y


impl_cpu("sparse_linear", _sparse_linear_cpu)
impl_cpu("sparse_linear_int8", _sparse_linear_int8_cpu)


@register_fake("sparse_linear")
def _sparse_linear_fake(
    x: torch.Tensor,
    row_ptr: torch.Tensor,
    col: torch.Tensor,
    values: torch.Tensor,
    bias: torch.Tensor | None,
    in_features: int,
) -> torch.Tensor:
    check(x.shape[-1] == in_features, f"x must have shape [..., {in_features}]")
    return x.new_empty(_out_shape(x, row_ptr.shape[0] - 1))


@register_fake("sparse_linear_int8")
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
    check(x.shape[-1] == in_features, f"x must have shape [..., {in_features}]")
    return x.new_empty(_out_shape(x, row_ptr.shape[0] - 1))


def _setup_fp32(
    ctx: torch.autograd.function.FunctionCtx, inputs: tuple[object, ...], output: torch.Tensor
) -> None:
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
    out_features = row_ptr.numel() - 1
    rows = torch.repeat_interleave(
        torch.arange(out_features), (row_ptr[1:] - row_ptr[:-1]).long(), output_size=col.numel()
    )
    w = values.new_zeros((out_features, in_features))
    w[rows, col.long()] = values
    return grad @ w, None, None, None, None, None


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
        _validate_csr(row_ptr, col, values, in_features, values.dtype)
        _check_vec("bias", bias, out_features, torch.float32)
        self.in_features = in_features
        self.out_features = out_features
        # Buffers made under inference_mode have no version counter, which the per-call
        # validation cache relies on; store ordinary copies instead.
        with torch.inference_mode(False):
            row_ptr, col, values = (
                t.clone() if t.is_inference() else t for t in (row_ptr, col, values)
            )
            bias, scales, rowsum = (_plain(t) for t in (bias, scales, rowsum))
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
        # Plain eager inference calls the implementation directly: the dispatcher round trip
        # costs ~6 us, a tenth of a batch-1 layer. Anything traced (compile/export sees
        # FakeTensors or runs under dynamo) or needing autograd goes through the custom op.
        direct = (
            type(x) is torch.Tensor
            and not (x.requires_grad and torch.is_grad_enabled())
            and not torch.compiler.is_compiling()
        )
        if self.values.dtype == torch.int8:
            args = (x, self.row_ptr, self.col, self.values, self.scales, self.rowsum, self.bias)
            if direct:
                return _sparse_linear_int8_cpu(*args, self.in_features)
            return torch.ops.kompaktor_kernels.sparse_linear_int8(  # type: ignore[no-any-return]
                *args, self.in_features
            )
        if direct:
            return _sparse_linear_cpu(
                x, self.row_ptr, self.col, self.values, self.bias, self.in_features
            )
        return torch.ops.kompaktor_kernels.sparse_linear(  # type: ignore[no-any-return]
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
