"""Native plans of sparse linear layers: validated weights bound once, derived layouts built on
first need, and the kernel call with its output allocation.

Weights are validated once per set of tensors and versions, not per call: the module keeps a
`Plan` (its buffers' identities and versions prove it current), the custom op a cache entry per
values tensor. A native plan answers a batch that runs on a derived layout it lacks with the
missing kinds and computes nothing; the caller builds them, binds a new plan and calls again."""

from __future__ import annotations

import operator
import weakref

import torch

from kompaktor_kernels import _native
from kompaktor_kernels._csr import check_vec, validate_csr
from kompaktor_kernels._dispatch import num_threads
from kompaktor_kernels._sliced import Derived

# A module's buffer names, and its buffers in that order (None where absent).
BUFFERS = ("row_ptr", "col", "values", "bias", "scales", "rowsum")
Buffers = tuple[torch.Tensor | None, ...]


def _csr(buffers: Buffers) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """row_ptr, col and values, which every layer has."""
    row_ptr, col, values, *_ = buffers
    assert row_ptr is not None and col is not None and values is not None
    return row_ptr, col, values


def feature_major(x: torch.Tensor) -> bool:
    """Whether a 2-D x holds each feature's batch lanes contiguously (x.t() is contiguous, the
    layout torch's CSR matmul returns). Sparse linear keeps that layout: such an x gives such a
    y, read and written without the transposes a row-major x and y cost the batched kernel."""
    # Read off the strides rather than through the view x.t() (~0.5 us a call): a 2-D x that is
    # not contiguous has both sizes > 1, and then x.t() is contiguous exactly for these.
    return x.dim() == 2 and not x.is_contiguous() and x.stride() == (1, x.shape[0])


# Weight buffers are fixed between calls, so their O(nnz) validation, and the derived layouts
# built from them, are cached per tensor objects and version counters (an in-place edit bumps
# a version and forces both again). An entry goes when its values tensor does.
_CacheEntry = tuple[tuple[weakref.ref[torch.Tensor], ...], tuple[object, ...], Derived]
_validated: dict[int, _CacheEntry] = {}


def _checked_derived(buffers: Buffers, in_features: int, values_dtype: torch.dtype) -> Derived:
    """Validate the CSR and return the derived layouts built for it so far, both cached."""
    row_ptr, col, values = _csr(buffers)
    tensors = (values, col, row_ptr)
    if any(t.is_inference() for t in tensors):
        # Inference tensors keep no version counter, so nothing proves them unchanged.
        validate_csr(row_ptr, col, values, in_features, values_dtype)
        return Derived.empty(values_dtype, final=True)
    key = (
        *(t._version for t in tensors), *(t.data_ptr() for t in tensors), in_features,
        col.dtype, values.dtype, values_dtype,
    )  # fmt: skip
    hit = _validated.get(id(values))
    if hit is not None and hit[1] == key:
        refs, _, derived = hit
        if all(r() is t for r, t in zip(refs, tensors, strict=True)):
            return derived
    derived = validated_start(buffers, in_features, values_dtype)
    slot = id(values)
    evict = weakref.ref(values, lambda _: _validated.pop(slot, None))
    _validated[slot] = ((evict, weakref.ref(col), weakref.ref(row_ptr)), key, derived)
    return derived


def _remember(values: torch.Tensor, derived: Derived) -> None:
    """Keep layouts built since `_checked_derived` in the cache entry of their weights."""
    hit = _validated.get(id(values))
    if hit is not None and hit[0][0]() is values:
        _validated[id(values)] = (hit[0], hit[1], derived)


def validated_start(buffers: Buffers, in_features: int, values_dtype: torch.dtype) -> Derived:
    """Validate the CSR (uncached); nothing derived from it is built yet."""
    row_ptr, col, values = _csr(buffers)
    validate_csr(row_ptr, col, values, in_features, values_dtype)
    return Derived.empty(values_dtype, final=in_features == 0 or row_ptr.numel() <= 1)


_version = operator.attrgetter("_version")


class Plan:
    """A layer's native plan for one set of validated buffers, with what proves it current: the
    identities of the module's buffers (the named ones held strongly, so an id cannot be
    recycled) and the named ones' version counters."""

    __slots__ = ("buffers", "derived", "ids", "run", "tensors", "versions")

    def __init__(
        self, ids: tuple[int, ...], buffers: Buffers, in_features: int, derived: Derived
    ) -> None:
        self.ids = ids
        self.buffers = buffers
        self.tensors = tuple(t for t in buffers if t is not None)
        self.versions = tuple(map(_version, self.tensors))
        self.derived = derived  # the layouts the native plan points into
        self.run = native_plan(buffers, in_features, derived)

    def current(self, ids: tuple[int, ...]) -> bool:
        """Whether the module's buffers are still these tensors, unmodified."""
        return ids == self.ids and self.versions == tuple(map(_version, self.tensors))

    def extended(self, kinds: int, in_features: int) -> Plan:
        """This plan with the derived layouts `kinds` built too."""
        derived = self.derived.with_kinds(kinds, *_csr(self.buffers), in_features)
        return Plan(self.ids, self.buffers, in_features, derived)


def empty_out(x: torch.Tensor, out_features: int, lanes_inner: bool) -> torch.Tensor:
    """y for x: [..., out_features], feature-major when x is (`feature_major`). new_empty with
    int arguments is the cheapest allocation (~1 us less than torch.empty with a shape)."""
    if lanes_inner:
        return x.new_empty(out_features, x.shape[0]).t()
    return x.new_empty(*x.shape[:-1], out_features)


def _ptr(t: torch.Tensor | None) -> int:
    return 0 if t is None else int(t.data_ptr())


_NativePlan = _native.F32Plan | _native.I8Plan


def native_plan(buffers: Buffers, in_features: int, derived: Derived) -> _NativePlan:
    """The native plan over validated CSR weights and the derived layouts built for them (it
    must not outlive any of these tensors)."""
    row_ptr, col, values = _csr(buffers)
    bias, scales, rowsum = buffers[3:]
    out_features = row_ptr.numel() - 1
    check_vec("bias", bias, out_features, torch.float32)
    head = (
        in_features, out_features, row_ptr.data_ptr(), col.data_ptr(), col.dtype == torch.uint16,
        values.data_ptr(),
    )  # fmt: skip
    parts = tuple(map(_ptr, derived.parts))
    if values.dtype != torch.int8:
        return _native.spmm_f32_plan(*head, _ptr(bias), derived.built, *parts)
    check_vec("scales", scales, out_features, torch.float32)
    check_vec("rowsum", rowsum, out_features, torch.int32)
    assert scales is not None and rowsum is not None
    return _native.spmm_i8_plan(
        *head, scales.data_ptr(), rowsum.data_ptr(), _ptr(bias), derived.built, *parts
    )


def run(
    x: torch.Tensor, buffers: Buffers, in_features: int, values_dtype: torch.dtype
) -> torch.Tensor:
    """The op's kernel call: the weights validated (cached), layouts built on first need."""
    row_ptr, col, values = _csr(buffers)
    bias = buffers[3]
    derived = _checked_derived(buffers, in_features, values_dtype)
    plan = native_plan(buffers, in_features, derived)  # checks bias, scales and rowsum too
    lanes_inner = feature_major(x)
    y = empty_out(x, row_ptr.numel() - 1, lanes_inner)
    if in_features == 0:
        return y.fill_(0).add_(bias) if bias is not None else y.fill_(0)
    args = (x.data_ptr(), x.numel() // in_features, y.data_ptr(), num_threads(), lanes_inner)
    missing = plan(*args)
    if missing:
        derived = derived.with_kinds(missing, row_ptr, col, values, in_features)
        _remember(values, derived)
        native_plan(buffers, in_features, derived)(*args)
    return y
