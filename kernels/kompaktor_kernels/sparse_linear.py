"""Sparse linear layers for pruned weights: CSR over output rows, fp32 or int8.

Why CSR by output row: each output is a private accumulation (no write conflicts, trivially
threaded by row with non-zero balancing), batch-1 becomes a gathered dot product, and for batch
> 1 the activations are transposed once so every non-zero is one broadcast-FMA over contiguous
batch lanes. Blocked formats only pay off when the pruning leaves blocks, and unstructured
magnitude pruning does not (measurements: kernels/README.md). The format and its validation:
`_csr`; the cached native plans that run it: `_plan`.

Layers also get derived, unsaved layouts (`_sliced`), each built the first time a batch runs
on it: a sliced one that replaces gathers with register permutes (int8 at every batch on
AVX512_VBMI, fp32 at batch 1 on AVX-512), and for fp32 on every CPU two panel layouts for
batches > 1 (L1-sized input panels, one width for tiles of up to 16 batch rows and one for wider
tiles; rows sorted by length and run 8 in lockstep)."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from kompaktor_kernels import _checks
from kompaktor_kernels._csr import (
    INDEX_DTYPES,
    default_index_dtype,
    row_ids,
    to_csr,
    validate_layer,
)
from kompaktor_kernels._dispatch import num_threads
from kompaktor_kernels._library import NAMESPACE, check, define, impl_cpu, register_fake
from kompaktor_kernels._plan import (
    BUFFERS,
    Plan,
    empty_out,
    feature_major,
    run,
    validated_start,
)
from kompaktor_kernels._quant import quantize_weight

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


def _sparse_linear_cpu(
    x: torch.Tensor,
    row_ptr: torch.Tensor,
    col: torch.Tensor,
    values: torch.Tensor,
    bias: torch.Tensor | None,
    in_features: int,
) -> torch.Tensor:
    _check_x(x, in_features)
    return run(x, (row_ptr, col, values, bias, None, None), in_features, torch.float32)


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
    return run(x, (row_ptr, col, values, bias, scales, rowsum), in_features, torch.int8)


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
    return empty_out(x, row_ptr.shape[0] - 1, feature_major(x))


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
    return empty_out(x, row_ptr.shape[0] - 1, feature_major(x))


def _dense_weight(
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
    w = _dense_weight(row_ptr, col, values, scales[0] if scales else None, in_features)
    return (grad @ w, *(None,) * (ctx.n_inputs - 1))  # type: ignore[attr-defined]


for _op in ("sparse_linear", "sparse_linear_int8"):
    torch.library.register_autograd(f"{NAMESPACE}::{_op}", _backward, setup_context=_setup)


def _plain(t: torch.Tensor | None) -> torch.Tensor | None:
    return t.clone() if t is not None and t.is_inference() else t


class SparseLinear(nn.Module):
    """Drop-in replacement for a pruned `nn.Linear`, holding only the non-zero weights.

    y has x's layout: contiguous for a contiguous x (as `nn.Linear`), feature-major for a
    feature-major one (`feature_major`, the layout torch's CSR matmul returns), so a chain of
    sparse layers keeps it and skips the batched kernel's transposes.

    The compressed weights are registered buffers, so state_dict, `torch.export` and `.pt2`
    round trips carry them; loading such a program needs `import kompaktor_kernels` first so the
    custom ops exist. `load_state_dict` takes any non-zero count and index width, and
    `load_sparse_state_dict` loads a sparsified model's checkpoint into its dense architecture."""

    row_ptr: torch.Tensor
    col: torch.Tensor
    values: torch.Tensor
    scales: torch.Tensor
    rowsum: torch.Tensor
    bias: torch.Tensor | None
    _plan: Plan | None = None  # class default: modules unpickled from older versions lack it

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
        validate_layer(in_features, out_features, row_ptr, col, values, bias, scales, rowsum)
        self.in_features = in_features
        self.out_features = out_features
        self._plan: Plan | None = None
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
            self.register_buffer("scales", scales)
            self.register_buffer("rowsum", rowsum)

    @property
    def dtype(self) -> torch.dtype:
        return self.values.dtype

    @property
    def nnz(self) -> int:
        return self.values.numel()

    @classmethod
    def from_dense(
        cls,
        linear: nn.Linear,
        dtype: torch.dtype = torch.float32,
        index_dtype: torch.dtype | None = None,
    ) -> SparseLinear:
        """Compress a (pruned) linear layer; exact zeros are dropped, nothing else is.

        index_dtype: torch.uint16 or torch.int32 column indices; by default uint16 whenever
        in_features <= 65536."""
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"expected nn.Linear, got {type(linear).__name__}")
        if dtype not in (torch.float32, torch.int8):
            raise TypeError(f"dtype must be torch.float32 or torch.int8, got {dtype}")
        if index_dtype is None:
            index_dtype = default_index_dtype(linear.in_features)
        if index_dtype not in INDEX_DTYPES:
            raise TypeError(f"index_dtype must be torch.uint16 or torch.int32, got {index_dtype}")
        weight = linear.weight.detach().to("cpu", torch.float32)
        bias = None
        if linear.bias is not None:
            bias = linear.bias.detach().to("cpu", torch.float32).contiguous().clone()
        if dtype == torch.float32:
            row_ptr, col, values = to_csr(weight, index_dtype)
            return cls(linear.in_features, linear.out_features, row_ptr, col, values, bias)
        wq, scales = quantize_weight(weight)
        row_ptr, col, values = to_csr(wq, index_dtype)
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

    @classmethod
    def empty(
        cls,
        in_features: int,
        out_features: int,
        bias: bool = True,
        dtype: torch.dtype = torch.float32,
        index_dtype: torch.dtype | None = None,
    ) -> SparseLinear:
        """A layer with no non-zeros (and a zero bias): a slot to load a checkpoint into."""
        if dtype not in (torch.float32, torch.int8):
            raise TypeError(f"dtype must be torch.float32 or torch.int8, got {dtype}")
        int8 = dtype == torch.int8
        return cls(
            in_features,
            out_features,
            row_ptr=torch.zeros(out_features + 1, dtype=torch.int32),
            col=torch.empty(0, dtype=index_dtype or default_index_dtype(in_features)),
            values=torch.empty(0, dtype=dtype),
            bias=torch.zeros(out_features) if bias else None,
            scales=torch.ones(out_features) if int8 else None,
            rowsum=torch.zeros(out_features, dtype=torch.int32) if int8 else None,
        )

    def _load_from_state_dict(
        self,
        state_dict: Mapping[str, Any],
        prefix: str,
        local_metadata: dict[str, Any],
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        """Take a checkpoint's weights whatever their number of non-zeros and index dtype.

        The default copies into the current buffers, so it needs the same non-zero count, which
        a checkpoint pruned apart from this layer rarely has. The checkpoint's tensors are
        validated as a whole first (a bad or partial set is reported and nothing changes);
        then the buffers take their shapes and dtypes, and the default copy (or assign) runs."""
        names = [n for n in BUFFERS if self._buffers.get(n) is not None]
        present = [n for n in names if prefix + n in state_dict]
        if 0 < len(present) < len(names):  # part of a layer: take none of it
            missing_keys.extend(prefix + n for n in names if n not in present)
            return
        if present:
            tensors = {n: state_dict[prefix + n] for n in names}
            try:
                values = _checks.tensor("values", tensors["values"])
                if values.dtype != self.values.dtype:
                    raise TypeError(
                        f"values are {values.dtype} in the checkpoint and {self.values.dtype} in "
                        "the layer (load_sparse_state_dict builds layers of the checkpoint's dtype)"
                    )
                validate_layer(
                    self.in_features, self.out_features, tensors["row_ptr"], tensors["col"],
                    values, tensors.get("bias"), tensors.get("scales"), tensors.get("rowsum"),
                )  # fmt: skip
            except (TypeError, ValueError) as e:
                error_msgs.append(f"invalid sparse weights for {prefix or 'the layer'}: {e}")
                return
            for name, t in tensors.items():
                held = self._buffers[name]
                if held is not None and (held.shape != t.shape or held.dtype != t.dtype):
                    self._buffers[name] = torch.empty(t.shape, dtype=t.dtype)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    def __getstate__(self) -> dict[str, Any]:
        # The plan holds raw pointers and a native function: never pickle or deep-copy it.
        state = self.__dict__.copy()
        state["_plan"] = None
        return state

    def _make_plan(self, ids: tuple[int, ...]) -> Plan | None:
        """Validate the current buffers once and bind their raw pointers (None when that cannot
        be cached: inference tensors have no version counter, or the layer is degenerate)."""
        buffers = tuple(map(self._buffers.get, BUFFERS))
        if self.in_features == 0 or any(t is not None and t.is_inference() for t in buffers):
            return None
        if self.row_ptr.shape != (self.out_features + 1,):
            raise ValueError(f"row_ptr must have shape ({self.out_features + 1},)")
        expected = torch.int8 if self.values.dtype == torch.int8 else torch.float32
        derived = validated_start(buffers, self.in_features, expected)
        return Plan(ids, buffers, self.in_features, derived)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Plain eager inference skips the dispatcher and all per-call validation of the weights:
        # a cached plan holds the native arguments while the buffers are the same objects at the
        # same versions (in-place edits and replacement both force a re-validation). That halves
        # the Python cost of a call (~5.5 us, about nn.Linear's). Anything traced (compile/export
        # sees FakeTensors or runs under dynamo) or needing autograd goes through the custom op.
        if (
            type(x) is torch.Tensor
            and x.dtype is torch.float32
            and x.is_cpu
            and x.layout is torch.strided
            and not (x.requires_grad and torch.is_grad_enabled())
            and not torch.compiler.is_compiling()
        ):
            ids = tuple(map(id, self._buffers.values()))
            plan = self._plan
            if plan is None or not plan.current(ids):
                plan = self._plan = self._make_plan(ids)
            shape = x.shape
            if plan is not None and shape and shape[-1] == self.in_features:
                lanes_inner = False
                if not x.is_contiguous():
                    lanes_inner = feature_major(x)
                    if not lanes_inner:
                        x = x.contiguous()
                y = empty_out(x, self.out_features, lanes_inner)  # x: float32 on the CPU
                args = (
                    x.data_ptr(), x.numel() // self.in_features, y.data_ptr(), num_threads(),
                    lanes_inner,
                )  # fmt: skip
                missing = plan.run(*args)
                if missing:  # this batch runs on a derived layout not built yet
                    plan = self._plan = plan.extended(missing, self.in_features)
                    plan.run(*args)
                return y
        return self._forward_checked(x)

    def _forward_checked(self, x: torch.Tensor) -> torch.Tensor:
        # nn.Linear accepts any layout; match it rather than fail on a transposed activation.
        x = _checks.tensor("x", x)
        if x.dtype != torch.float32:
            raise TypeError(f"SparseLinear expects float32 input, got {x.dtype}")
        if not feature_major(x):
            x = x.contiguous()
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


# Modules that read their nn.Linear children's weights instead of calling them: a
# SparseLinear there has no `weight`. MultiheadAttention hands out_proj's to its functional
# form; TransformerEncoderLayer's fused inference path (and TransformerEncoder's check of it)
# reads linear1's and linear2's.
_READS_CHILD_WEIGHTS = (nn.MultiheadAttention, nn.TransformerEncoderLayer)


def _why_dense(owner: nn.Module | None, layer: nn.Linear) -> str | None:
    """Why a SparseLinear cannot stand in for this layer, or None when it can."""
    if isinstance(owner, _READS_CHILD_WEIGHTS):
        return f"its owner, a {type(owner).__name__}, reads its weight instead of calling it"
    if type(layer) is not nn.Linear:
        return f"it is a {type(layer).__name__}, whose forward may differ from nn.Linear's"
    return None


_Replacement = Callable[[str, nn.Module | None, nn.Linear], nn.Module | None]


def _swap_linears(model: nn.Module, replace: _Replacement) -> nn.Module:
    """Put `replace(path, owner, layer)`, where it is not None, in place of each nn.Linear (a
    bare nn.Linear model is returned replaced), with the layer's hooks and training mode (as
    torch.ao's module swaps keep them). A layer registered at several paths is offered once, at
    its first, and its replacement stays shared."""

    def swapped(path: str, owner: nn.Module | None, layer: nn.Linear) -> nn.Module | None:
        new = replace(path, owner, layer)
        if new is not None:
            new.train(layer.training)
            for hooks in ("_forward_pre_hooks", "_forward_hooks"):
                getattr(new, hooks).update(getattr(layer, hooks))
        return new

    if isinstance(model, nn.Linear):
        return swapped("", None, model) or model
    done: dict[int, nn.Module | None] = {}
    for owner_path, owner in list(model.named_modules()):
        for name, child in list(owner._modules.items()):  # named_children() skips repeats
            if not isinstance(child, nn.Linear):
                continue
            if id(child) not in done:
                done[id(child)] = swapped(f"{owner_path}.{name}".lstrip("."), owner, child)
            new = done[id(child)]
            if new is not None:
                setattr(owner, name, new)
    return model


def sparsify(
    model: nn.Module, dtype: torch.dtype = torch.float32, min_sparsity: float = 0.5
) -> nn.Module:
    """Swap, in place, every nn.Linear whose weight sparsity is >= min_sparsity for a
    SparseLinear, and return the model (a bare nn.Linear is returned replaced).

    Layers whose owner reads their weight rather than calling them (nn.MultiheadAttention,
    nn.TransformerEncoderLayer) and subclasses of nn.Linear stay dense, with a warning naming
    them: swapping those would break the model or change what it computes.

    The default favours speed: at 50 % a fp32 SparseLinear already runs faster than the dense
    layer but, with the layouts its batches build, holds more bytes than it (kernels/README.md,
    "Built on first need"); pass 0.8 or more, or int8, where memory matters too."""
    if dtype not in (torch.float32, torch.int8):
        raise TypeError(f"dtype must be torch.float32 or torch.int8, got {dtype}")
    if not 0.0 <= min_sparsity <= 1.0:
        raise ValueError(f"min_sparsity must lie in [0, 1], got {min_sparsity}")
    kept: list[str] = []

    def replace(path: str, owner: nn.Module | None, layer: nn.Linear) -> nn.Module | None:
        if weight_sparsity(layer) < min_sparsity:
            return None
        why = _why_dense(owner, layer)
        if why is not None:
            kept.append(f"{path or 'the model'}: {why}")
            return None
        return SparseLinear.from_dense(layer, dtype)

    model = _swap_linears(model, replace)
    if kept:
        warnings.warn(
            f"sparsify kept {len(kept)} sparse layer(s) dense: {'; '.join(kept)}", stacklevel=2
        )
    return model


def load_sparse_state_dict(
    model: nn.Module, state_dict: Mapping[str, Any], strict: bool = True
) -> nn.Module:
    """Load a sparsified model's checkpoint into the dense architecture it came from: each
    nn.Linear the checkpoint holds in CSR becomes a SparseLinear of the checkpoint's dtype,
    then `load_state_dict` runs. Returns the model (a bare nn.Linear is returned replaced)."""

    def replace(path: str, owner: nn.Module | None, layer: nn.Linear) -> nn.Module | None:
        prefix = f"{path}." if path else ""
        values = state_dict.get(prefix + "values")
        if not isinstance(values, torch.Tensor) or prefix + "row_ptr" not in state_dict:
            return None
        why = _why_dense(owner, layer)
        if why is not None:
            raise ValueError(f"{path or 'the model'}: the checkpoint holds it sparse, but {why}")
        if values.dtype not in (torch.float32, torch.int8):
            raise TypeError(f"{prefix}values must be float32 or int8, got {values.dtype}")
        # The load gives the buffers the checkpoint's shapes and index dtype.
        return SparseLinear.empty(
            layer.in_features, layer.out_features, layer.bias is not None, values.dtype
        )

    model = _swap_linears(model, replace)
    model.load_state_dict(state_dict, strict=strict)
    return model


__all__ = ["SparseLinear", "load_sparse_state_dict", "sparsify", "weight_sparsity"]
