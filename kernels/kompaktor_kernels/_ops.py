"""The sparse linear custom ops: `torch.ops.kompaktor_kernels.sparse_linear` (fp32) and
`sparse_linear_int8`, with their CPU kernels, fake implementations (export, compile) and
autograd (the input gradient). SparseLinear calls the CPU kernels directly where nothing traces
or differentiates (`sparse_linear`), and the ops otherwise."""

from __future__ import annotations

from collections.abc import Callable

import torch

from kompaktor_kernels import _checks
from kompaktor_kernels._csr import dense_weight
from kompaktor_kernels._library import NAMESPACE, check, define, impl_cpu, register_fake
from kompaktor_kernels._plan import empty_out, feature_major, run

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
    if not x.is_contiguous() and not feature_major(x):
        raise ValueError(
            f"x must be contiguous or feature-major (x.t() contiguous), got shape "
            f"{tuple(x.shape)} with strides {x.stride()}; call .contiguous() first"
        )


def sparse_linear_cpu(
    x: torch.Tensor,
    row_ptr: torch.Tensor,
    col: torch.Tensor,
    values: torch.Tensor,
    bias: torch.Tensor | None,
    in_features: int,
) -> torch.Tensor:
    _check_x(x, in_features)
    return run(x, (row_ptr, col, values, bias, None, None), in_features, torch.float32)


def sparse_linear_int8_cpu(
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
    return run(x, (row_ptr, col, values, bias, scales, rowsum), in_features, torch.int8)


impl_cpu("sparse_linear", sparse_linear_cpu)
impl_cpu("sparse_linear_int8", sparse_linear_int8_cpu)


def _fake(x: torch.Tensor, row_ptr: torch.Tensor, *rest: object) -> torch.Tensor:
    """Both ops' output for tracing: (x, row_ptr, ..., in_features) -> y in x's layout."""
    in_features = rest[-1]
    check(x.shape[-1] == in_features, f"x must have shape [..., {in_features}]")
    return empty_out(x, row_ptr.shape[0] - 1, feature_major(x))


for _op in ("sparse_linear", "sparse_linear_int8"):
    register_fake(_op)(_fake)


def _setup(
    ctx: torch.autograd.function.FunctionCtx, inputs: tuple[object, ...], output: torch.Tensor
) -> None:
    """Both ops: (x, row_ptr, col, values, [scales, rowsum,] bias, in_features)."""
    row_ptr, col, values = inputs[1:4]
    scales = inputs[4] if len(inputs) == 8 else None
    in_features = inputs[-1]
    assert isinstance(row_ptr, torch.Tensor) and isinstance(col, torch.Tensor)
    assert isinstance(values, torch.Tensor) and isinstance(in_features, int)
    saved = (row_ptr, col, values) if scales is None else (row_ptr, col, values, scales)
    ctx.save_for_backward(*saved)
    ctx.in_features = in_features  # type: ignore[attr-defined]
    ctx.n_inputs = len(inputs)  # type: ignore[attr-defined]


def _backward(
    ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor
) -> tuple[torch.Tensor | None, ...]:
    """dL/dx = dL/dy · W (weights are frozen buffers: no weight gradient). int8 layers give the
    straight-through gradient QAT uses: W is the dequantised weight, and the activations'
    rounding counts as the identity (their dynamic range always covers x)."""
    row_ptr, col, values, *scales = ctx.saved_tensors  # type: ignore[attr-defined]
    in_features: int = ctx.in_features  # type: ignore[attr-defined]
    w = dense_weight(row_ptr, col, values, scales[0] if scales else None, in_features)
    return (grad @ w, *(None,) * (ctx.n_inputs - 1))  # type: ignore[attr-defined]


for _op in ("sparse_linear", "sparse_linear_int8"):
    torch.library.register_autograd(f"{NAMESPACE}::{_op}", _backward, setup_context=_setup)


#: Each op's CPU kernel, for graphs run eagerly under torch.inference_mode (no autograd, no
#: tracing): called directly, they skip the dispatcher's round trip back into Python, ≈8 µs a
#: call (kompaktor.models.lifted does this). The kernels check their inputs themselves.
EAGER_CPU_KERNELS: dict[torch._ops.OpOverload, Callable[..., torch.Tensor]] = {
    torch.ops.kompaktor_kernels.sparse_linear.default: sparse_linear_cpu,
    torch.ops.kompaktor_kernels.sparse_linear_int8.default: sparse_linear_int8_cpu,
}
