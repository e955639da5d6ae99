"""Native plans of sparse linear layers: validated weights bound once, derived layouts built on
first need, and the kernel call with its output allocation.

Weights are validated once per set of tensors and versions, not per call: the module keeps a
`Plan` (its buffers' identities, versions and data pointers prove it current), the custom op a
cache entry per values tensor. A native plan answers a batch that runs on a derived layout it
lacks with the missing kinds and computes nothing; the caller builds them, binds a new plan and
calls again."""

from __future__ import annotations

import atexit
import operator
import weakref

import torch

from kompaktor_kernels import _native
from kompaktor_kernels._csr import check_vec, validate_csr, validate_int8
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
    """Whether x holds each feature's batch lanes contiguously: x.movedim(-1, 0) is contiguous,
    so x is [features][lanes] in memory, the lanes being its leading indices in order (a 2-D x:
    x.t() contiguous, the layout torch's CSR matmul returns). Sparse linear keeps that layout:
    such an x gives such a y, read and written without the transposes a row-major x and y cost
    the batched kernel."""
    # Read off the strides rather than through a view (~0.5 us a call). A contiguous x is
    # either layout only where it has one lane or one feature, and then both are one memory.
    if x.dim() < 2 or x.is_contiguous():
        return False
    shape, strides = x.shape, x.stride()
    lanes = x.numel() // shape[-1]
    if strides[-1] != lanes:
        return False
    step = 1
    for size, stride in zip(reversed(shape[:-1]), reversed(strides[:-1]), strict=True):
        if size != 1 and stride != step:
            return False
        step *= size
    return True


def y_feature_major(x: torch.Tensor, x_feature_major: bool, asked: bool | None) -> bool:
    """Whether y is feature-major: in x's layout unless asked (`SparseLinear.feature_major_out`),
    and only for an x with batch dimensions, whose y has the lanes to hold."""
    return x_feature_major if asked is None else asked and x.dim() >= 2


_version = operator.attrgetter("_version")
_data_ptr = torch.Tensor.data_ptr


def stamp(tensors: tuple[torch.Tensor, ...]) -> tuple[int, ...]:
    """What proves tensors unchanged since a native plan took their pointers: their version
    counters (an in-place edit bumps one) and their data pointers (`t.data = ...` and
    `share_memory_()` swap a tensor's memory without a bump, and a plan left pointing at the
    old memory would read freed memory). Edits torch does not track at all, through `.data`
    or a NumPy view, go unseen, as they do by autograd."""
    return (*map(_version, tensors), *map(_data_ptr, tensors))


# Weight buffers are fixed between calls, so their O(nnz) validation, the derived layouts built
# from them and the native plan over both are cached per tensor objects and `stamp` (an
# in-place edit or swapped memory forces all three again; so does another bias, scales or
# rowsum, whose pointers the plan holds). An entry goes when its values tensor does; it holds
# the other tensors, so their ids cannot be recycled while it lives.
class _CacheEntry:
    __slots__ = ("derived", "held", "ids", "plan", "stamped", "static", "values")

    def __init__(
        self, buffers: Buffers, static: tuple[object, ...], derived: Derived, plan: _NativePlan
    ) -> None:
        row_ptr, col, values = _csr(buffers)
        slot = id(values)
        self.values = weakref.ref(values, lambda _: _validated.pop(slot, None))
        self.held = (row_ptr, col, *(t for t in buffers[3:] if t is not None))
        self.ids = tuple(map(id, buffers))
        self.stamped = stamp((values, *self.held))
        self.static, self.derived, self.plan = static, derived, plan

    def current(self, buffers: Buffers, static: tuple[object, ...]) -> bool:
        values = buffers[2]
        return (
            self.ids == tuple(map(id, buffers))
            and self.values() is values
            and self.static == static
            and self.stamped == stamp((values, *self.held))  # type: ignore[arg-type]
        )


_validated: dict[int, _CacheEntry] = {}
# Emptied before the interpreter tears modules down: an entry whose weights a live autograd
# graph still holds would otherwise outlive the extension, and nanobind reports its plan leaked.
atexit.register(_validated.clear)


def _cached_plan(
    buffers: Buffers, in_features: int, values_dtype: torch.dtype
) -> tuple[_NativePlan, Derived]:
    """The native plan over validated buffers and the layouts built for them so far, cached."""
    static = (in_features, values_dtype)
    hit = _validated.get(id(buffers[2]))
    if hit is not None and hit.current(buffers, static):
        return hit.plan, hit.derived
    derived = validated_start(buffers, in_features, values_dtype)
    if any(t is not None and t.is_inference() for t in buffers):
        # Inference tensors keep no version counter, so nothing proves them unchanged.
        derived = Derived.empty(values_dtype, final=True)
        return native_plan(buffers, in_features, derived), derived
    plan = native_plan(buffers, in_features, derived)  # checks the bias too
    _validated[id(buffers[2])] = _CacheEntry(buffers, static, derived, plan)
    return plan, derived


def _remember(values: torch.Tensor, derived: Derived, plan: _NativePlan) -> None:
    """Keep layouts built since `_cached_plan`, and their plan, in their weights' entry."""
    hit = _validated.get(id(values))
    if hit is not None and hit.values() is values:
        hit.derived, hit.plan = derived, plan


def validated_start(buffers: Buffers, in_features: int, values_dtype: torch.dtype) -> Derived:
    """Validate the CSR, and int8's quantisation (uncached); nothing derived from it is built
    yet."""
    row_ptr, col, values = _csr(buffers)
    validate_csr(row_ptr, col, values, in_features, values_dtype)
    if values_dtype == torch.int8:
        validate_int8(row_ptr, values, *buffers[4:])
    return Derived.empty(values_dtype, final=in_features == 0 or row_ptr.numel() <= 1)


class Plan:
    """A layer's native plan for one set of validated buffers, with what proves it current: the
    identities of the module's buffers (the named ones held strongly, so an id cannot be
    recycled) and the named ones' `stamp`."""

    __slots__ = ("buffers", "derived", "ids", "run", "stamped", "tensors")

    def __init__(
        self, ids: tuple[int, ...], buffers: Buffers, in_features: int, derived: Derived
    ) -> None:
        self.ids = ids
        self.buffers = buffers
        self.tensors = tuple(t for t in buffers if t is not None)
        self.stamped = stamp(self.tensors)
        self.derived = derived  # the layouts the native plan points into
        self.run = native_plan(buffers, in_features, derived)

    def current(self, ids: tuple[int, ...]) -> bool:
        """Whether the module's buffers are still these tensors, unmodified."""
        return ids == self.ids and self.stamped == stamp(self.tensors)

    def extended(self, kinds: int, in_features: int) -> Plan:
        """This plan with the derived layouts `kinds` built too."""
        derived = self.derived.with_kinds(kinds, *_csr(self.buffers), in_features)
        return Plan(self.ids, self.buffers, in_features, derived)


def empty_out(x: torch.Tensor, out_features: int, lanes_inner: bool) -> torch.Tensor:
    """y for x: [..., out_features], feature-major when lanes_inner. new_empty with int
    arguments is the cheapest allocation (~1 us less than torch.empty with a shape, and a 2-D
    x's batch passed alone ~0.4 us less than its shape unpacked)."""
    if x.dim() == 2:
        batch = x.shape[0]
        if lanes_inner:
            return x.new_empty(out_features, batch).t()
        return x.new_empty(batch, out_features)
    if lanes_inner:
        return x.new_empty(out_features, *x.shape[:-1]).movedim(0, -1)
    return x.new_empty(*x.shape[:-1], out_features)


def call_args(
    x: torch.Tensor, x_lanes: bool, asked: bool | None, out_features: int, in_features: int
) -> tuple[torch.Tensor, tuple[int, int, int, int, bool, bool]]:
    """y for x, in the layout the call gives it, and a native plan's arguments for the call
    (x, batch, y, threads, x feature-major, y feature-major); the module and the op share it."""
    y_lanes = y_feature_major(x, x_lanes, asked)
    y = empty_out(x, out_features, y_lanes)
    batch = x.numel() // in_features if in_features else 0
    return y, (x.data_ptr(), batch, y.data_ptr(), num_threads(), x_lanes, y_lanes)


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
    x: torch.Tensor,
    buffers: Buffers,
    in_features: int,
    values_dtype: torch.dtype,
    asked_feature_major_out: bool | None,
) -> torch.Tensor:
    """The op's kernel call: the weights validated and the plan bound (cached), layouts built
    on first need."""
    row_ptr, col, values = _csr(buffers)
    bias = buffers[3]
    plan, derived = _cached_plan(buffers, in_features, values_dtype)
    x_lanes = feature_major(x)
    y, args = call_args(x, x_lanes, asked_feature_major_out, row_ptr.numel() - 1, in_features)
    if in_features == 0:
        return y.fill_(0).add_(bias) if bias is not None else y.fill_(0)
    missing = plan(*args)
    if missing:
        derived = derived.with_kinds(missing, row_ptr, col, values, in_features)
        plan = native_plan(buffers, in_features, derived)
        _remember(values, derived, plan)
        plan(*args)
    return y
