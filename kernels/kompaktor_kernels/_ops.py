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
from kompaktor_kernels._plan import empty_out, feature_major, run, y_feature_major

# feature_major_out (None: y in x's layout) comes last with a default, so programs exported
# before it existed load and run as they did.
define(
    "sparse_linear(Tensor x, Tensor row_ptr, Tensor col, Tensor values, Tensor? bias, "
    "int in_features, bool? feature_major_out=None) -> Tensor"
)
define(
    "sparse_linear_int8(Tensor x, Tensor row_ptr, Tensor col, Tensor values, Tensor scales, "
    "Tensor rowsum, Tensor? bias, int in_features, bool? feature_major_out=None) -> Tensor"
)


def _checked_x(x: torch.Tensor, in_features: int) -> torch.Tensor:
    """x as the kernels may read it. A negated view is resolved here, not by torch's Negative
    fallback, for callers that skip the dispatcher (EAGER_CPU_KERNELS, the module)."""
    _checks.tensor("x", x)
    _checks.cpu_dense("x", x)
    _checks.dtype("x", x, torch.float32)
    if x.dim() < 1 or x.shape[-1] != in_features:
        raise ValueError(
            f"x must have shape [..., {in_features}] (in_features), got {tuple(x.shape)}"
        )
    if not x.is_contiguous() and not feature_major(x):
        raise ValueError(
            f"x must be contiguous or feature-major (x.movedim(-1, 0) contiguous), got shape "
            f"{tuple(x.shape)} with strides {x.stride()}; call .contiguous() first"
        )
    return x.resolve_neg()


def sparse_linear_cpu(
    x: torch.Tensor,
    row_ptr: torch.Tensor,
    col: torch.Tensor,
    values: torch.Tensor,
    bias: torch.Tensor | None,
    in_features: int,
    feature_major_out: bool | None = None,
) -> torch.Tensor:
    x = _checked_x(x, in_features)
    buffers = (row_ptr, col, values, bias, None, None)
    return run(x, buffers, in_features, torch.float32, feature_major_out)


def sparse_linear_int8_cpu(
    x: torch.Tensor,
    row_ptr: torch.Tensor,
    col: torch.Tensor,
    values: torch.Tensor,
    scales: torch.Tensor,
    rowsum: torch.Tensor,
    bias: torch.Tensor | None,
    in_features: int,
    feature_major_out: bool | None = None,
) -> torch.Tensor:
    x = _checked_x(x, in_features)
    buffers = (row_ptr, col, values, bias, scales, rowsum)
    return run(x, buffers, in_features, torch.int8, feature_major_out)


impl_cpu("sparse_linear", sparse_linear_cpu)
impl_cpu("sparse_linear_int8", sparse_linear_int8_cpu)


def _fake(name: str) -> Callable[..., torch.Tensor]:
    """An op's output for tracing: y in the layout the kernel gives it. A fake gets the
    arguments as the call gave them (positional or by name, defaults left out), so they are
    bound to the schema's names here."""
    names = [
        arg.name for arg in getattr(torch.ops.kompaktor_kernels, name).default._schema.arguments
    ]

    def fake(*args: object, **kwargs: object) -> torch.Tensor:
        bound = {**dict(zip(names, args, strict=False)), **kwargs}
        x, row_ptr, in_features = bound["x"], bound["row_ptr"], bound["in_features"]
        asked = bound.get("feature_major_out")
        assert isinstance(x, torch.Tensor) and isinstance(row_ptr, torch.Tensor)
        assert isinstance(in_features, int) and (asked is None or isinstance(asked, bool))
        check(x.shape[-1] == in_features, f"x must have shape [..., {in_features}]")
        # The meta kernel also runs when any argument is on the meta device; a CPU x there
        # would get an uninitialised y back.
        devices = {str(t.device) for t in bound.values() if isinstance(t, torch.Tensor)}
        if len(devices) > 1:
            raise ValueError(f"{name}'s tensors must be on one device, got {sorted(devices)}")
        return empty_out(x, row_ptr.shape[0] - 1, y_feature_major(x, feature_major(x), asked))

    return fake


for _op in ("sparse_linear", "sparse_linear_int8"):
    register_fake(_op)(_fake(_op))


def _setup(
    ctx: torch.autograd.function.FunctionCtx, inputs: tuple[object, ...], output: torch.Tensor
) -> None:
    """Both ops: (x, row_ptr, col, values, [scales, rowsum,] bias, in_features[,
    feature_major_out])."""
    row_ptr, col, values = inputs[1:4]
    assert isinstance(values, torch.Tensor)
    int8 = values.dtype == torch.int8
    scales = inputs[4] if int8 else None
    in_features = inputs[7 if int8 else 5]
    assert isinstance(row_ptr, torch.Tensor) and isinstance(col, torch.Tensor)
    assert isinstance(in_features, int)
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


def _vmap(name: str) -> Callable[..., tuple[torch.Tensor, int | None]]:
    """An op's batching rule (torch.func.vmap): the op takes any leading batch dimensions, so
    the vmapped one moves to the front and the call is one kernel call, not one per sample."""
    op = getattr(torch.ops.kompaktor_kernels, name).default

    def rule(
        info: object, in_dims: tuple[int | None, ...], x: torch.Tensor, *rest: object
    ) -> tuple[torch.Tensor, int | None]:
        if any(dim is not None for dim in in_dims[1:]):
            raise ValueError(f"{name}: vmap over the weights is not supported, only over x")
        if in_dims[0] is None:
            return op(x, *rest), None
        x = x.movedim(in_dims[0], 0)
        if not x.is_contiguous() and not feature_major(x):
            x = x.contiguous()
        return op(x, *rest), 0

    return rule


for _op in ("sparse_linear", "sparse_linear_int8"):
    torch.library.register_vmap(f"{NAMESPACE}::{_op}", _vmap(_op))


#: Each op's CPU kernel, for graphs run eagerly under torch.inference_mode (no autograd, no
#: tracing): called directly, they skip the dispatcher's round trip back into Python, ≈8 µs a
#: call (kompaktor.models.lifted does this). The kernels check their inputs themselves.
EAGER_CPU_KERNELS: dict[torch._ops.OpOverload, Callable[..., torch.Tensor]] = {
    torch.ops.kompaktor_kernels.sparse_linear.default: sparse_linear_cpu,
    torch.ops.kompaktor_kernels.sparse_linear_int8.default: sparse_linear_int8_cpu,
}
