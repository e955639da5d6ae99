"""Sparse linear layers for pruned weights: CSR over output rows, fp32 or int8.

Why CSR by output row: each output is a private accumulation (no write conflicts, trivially
threaded by row with non-zero balancing), batch-1 becomes a gathered dot product, and for batch
> 1 the activations are transposed once so every non-zero is one broadcast-FMA over contiguous
batch lanes. Blocked formats only pay off when the pruning leaves blocks, and unstructured
magnitude pruning does not (measurements: kernels/README.md, "Sparse format: CSR by output
row"). The format and its validation: `_csr`; the cached native plans that run it: `_plan`; the
custom ops: `_ops`; swapping layers of whole models: `_swap`.

Layers also get derived, unsaved layouts (`_sliced`), each built the first time a batch runs on
it: a sliced one that replaces gathers with register permutes (int8 on x86: every batch with
AVX512_VBMI, up to 8 on other AVX-512 CPUs, up to 4 on AVX2; fp32 at batch 1 on AVX-512), and
for fp32 on every CPU two panel layouts for batches > 1 (L1-sized input panels, one width for
tiles of up to 16 batch rows and one for wider tiles; rows sorted by length and run 8 in
lockstep)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Self

import torch
from torch import nn

from kompaktor_kernels import _checks
from kompaktor_kernels._csr import (
    INDEX_DTYPES,
    check_weight_dtype,
    default_index_dtype,
    dense_weight,
    to_csr,
    validate_layer,
)
from kompaktor_kernels._ops import sparse_linear_cpu, sparse_linear_int8_cpu
from kompaktor_kernels._plan import BUFFERS, Plan, call_args, feature_major, validated_start
from kompaktor_kernels._quant import quantize_weight

_HALF_DTYPES = (torch.float16, torch.bfloat16)


def _eager(x: torch.Tensor) -> bool:
    """Whether the CPU kernels may run directly: nothing traces the call (compile and export
    see FakeTensors or run under dynamo; torch.jit.trace records only torch ops, so a native
    call would leave its graph returning the empty output) and nothing differentiates through
    it. Otherwise the call goes through the custom op. x is a plain torch.Tensor (the caller
    checks its type first: a subclass such as FakeTensor goes through the op too)."""
    return (
        not (x.requires_grad and torch.is_grad_enabled())
        and not torch.compiler.is_compiling()
        and not torch._C._is_tracing()
        and not torch._C._are_functorch_transforms_active()  # vmap's x has no storage
    )


def _plain(t: torch.Tensor | None) -> torch.Tensor | None:
    return t.clone() if t is not None and t.is_inference() else t


class SparseLinear(nn.Module):
    """Drop-in replacement for a pruned `nn.Linear`, holding only the non-zero weights.

    y has x's layout: contiguous for a contiguous x (as `nn.Linear`), feature-major for a
    feature-major one (`feature_major`, the layout torch's CSR matmul returns), so a chain of
    sparse layers keeps it and skips the batched kernel's transposes. `feature_major_out` set
    to True or False fixes y's layout instead (True needs batch dimensions): a layer whose output
    only feeds layers that take either layout hands it on feature-major, saving the batched
    kernel the transposition of its sums into y (Kompaktor's prune stage chooses these:
    `kompaktor.surgery.chain_sparse_layouts`).

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
    _feature_major_out: bool | None = None  # None: y in x's layout

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
    def feature_major_out(self) -> bool | None:
        """y's layout: None follows x; True feature-major (x with batch dims); False contiguous."""
        return self._feature_major_out

    @feature_major_out.setter
    def feature_major_out(self, value: bool | None) -> None:
        if value is not None and not isinstance(value, bool):
            raise TypeError(f"feature_major_out must be True, False or None, got {value!r}")
        self._feature_major_out = value

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
        check_weight_dtype("dtype", dtype)
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
        if not bool(torch.isfinite(weight).all()):
            row = int((~torch.isfinite(weight)).any(dim=1).nonzero()[0])
            raise ValueError(
                f"int8 cannot represent a weight that is NaN or infinite (row {row}); "
                "the float32 layer keeps it"
            )
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
        check_weight_dtype("dtype", dtype)
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

    def _apply(self, fn: Callable[[torch.Tensor], torch.Tensor], recurse: bool = True) -> Self:
        """Device moves apply; dtype casts do not: `model.half()` or `.to(torch.bfloat16)` keeps
        this layer's float32 (or int8) weights, and half-precision inputs are computed in
        float32 and returned in their dtype, as the rest of such a model expects."""

        def same_dtype(t: torch.Tensor) -> torch.Tensor:
            out = fn(t)
            return out if out.dtype == t.dtype else t.to(out.device)

        super()._apply(same_dtype, recurse)  # type: ignore[no-untyped-call]
        return self

    def to_linear(self) -> nn.Linear:
        """The dense nn.Linear this layer computes (int8: its dequantised weights), for what
        needs dense weights: training them, or an ONNX export (ONNX has no form for these ops)."""
        weight = dense_weight(
            self.row_ptr, self.col, self.values, self._buffers.get("scales"), self.in_features
        )
        linear = nn.Linear(self.in_features, self.out_features, self.bias is not None, "meta")
        linear.weight = nn.Parameter(weight)
        if self.bias is not None:
            linear.bias = nn.Parameter(self.bias.detach().clone())
        return linear

    def __getstate__(self) -> dict[str, Any]:
        # The plan holds raw pointers and a native function: never pickle or deep-copy it.
        # torch cannot pickle uint16 tensors (torch.save can), so the indices travel as int32.
        state = self.__dict__.copy()
        state["_plan"] = None
        if self.col.dtype == torch.uint16:
            state["_buffers"] = {**self._buffers, "col": self.col.to(torch.int32)}
            state["_col_uint16"] = True
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        if state.pop("_col_uint16", False):
            state["_buffers"]["col"] = state["_buffers"]["col"].to(torch.uint16)
        super().__setstate__(state)  # type: ignore[no-untyped-call]

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
        # the Python cost of a call (~5.5 us, about nn.Linear's).
        if (
            type(x) is torch.Tensor  # first: a list has no dtype, a subclass takes the op
            and x.dtype is torch.float32
            and x.is_cpu
            and x.layout is torch.strided
            and _eager(x)
            and not x.is_neg()  # memory holding -x: the checked path resolves it (after _eager:
            # dynamo cannot trace a torch method that returns a bool)
        ):
            ids = tuple(map(id, self._buffers.values()))
            plan = self._plan
            if plan is None or not plan.current(ids):
                plan = self._plan = self._make_plan(ids)
            shape = x.shape
            if plan is not None and shape and shape[-1] == self.in_features:
                x_lanes = False
                if not x.is_contiguous():
                    x_lanes = feature_major(x)
                    if not x_lanes:
                        x = x.contiguous()
                y, args = call_args(  # x: float32 on the CPU
                    x, x_lanes, self._feature_major_out, self.out_features, self.in_features
                )
                missing = plan.run(*args)
                if missing:  # this batch runs on a derived layout not built yet
                    plan = self._plan = plan.extended(missing, self.in_features)
                    plan.run(*args)
                return y
        return self._forward_checked(x)

    def _forward_checked(self, x: torch.Tensor) -> torch.Tensor:
        # nn.Linear accepts any layout; match it rather than fail on a transposed activation.
        x = _checks.tensor("x", x)
        if x.layout != torch.strided:
            raise ValueError(f"x must be a dense (strided) tensor, got layout {x.layout}")
        if x.dtype in _HALF_DTYPES:  # a model cast to half precision: computed in float32
            return self._forward_checked(x.float()).to(x.dtype)
        if x.dtype != torch.float32:
            raise TypeError(
                f"SparseLinear computes in float32 (float16 and bfloat16 inputs are cast), got "
                f"{x.dtype} input"
            )
        if not feature_major(x):
            x = x.contiguous()
        direct = type(x) is torch.Tensor and _eager(x)
        # The layout argument only where set, so exported graphs of layers that leave it to x
        # call the ops as programs exported before it existed do.
        layout = () if self.feature_major_out is None else (self.feature_major_out,)
        if self.values.dtype == torch.int8:
            args = (x, self.row_ptr, self.col, self.values, self.scales, self.rowsum, self.bias)
            if direct:
                return sparse_linear_int8_cpu(*args, self.in_features, *layout)
            return torch.ops.kompaktor_kernels.sparse_linear_int8(  # type: ignore[no-any-return]
                *args, self.in_features, *layout
            )
        csr = (x, self.row_ptr, self.col, self.values, self.bias)
        if direct:
            return sparse_linear_cpu(*csr, self.in_features, *layout)
        return torch.ops.kompaktor_kernels.sparse_linear(  # type: ignore[no-any-return]
            *csr, self.in_features, *layout
        )

    def extra_repr(self) -> str:
        total = self.in_features * self.out_features
        density = self.nnz / total if total else 0.0
        layout = self.feature_major_out
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"dtype={self.dtype}, density={density:.3f}, bias={self.bias is not None}"
            + ("" if layout is None else f", feature_major_out={layout}")
        )


__all__ = ["SparseLinear"]
