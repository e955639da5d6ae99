from __future__ import annotations

import copy
import io
import pickle
import random
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import kompaktor_kernels as kk
from kompaktor_kernels import _plan, _sliced
from kompaktor_kernels._quant import quantize_weight
from kompaktor_kernels.reference import sparse_linear_reference


def pruned(out_f: int, in_f: int, sparsity: float, bias: bool = True) -> nn.Linear:
    lin = nn.Linear(in_f, out_f, bias=bias)
    with torch.no_grad():
        lin.weight.mul_(torch.rand_like(lin.weight) >= sparsity)
    return lin


SHAPES = [(1, 1), (7, 5), (129, 333), (64, 1000)]
SPARSITIES = [0.0, 0.5, 0.9, 0.99, 1.0]
BATCHES = [
    1,
    3,
    12,
    17,
    45,
    70,
]  # 70 > the widest register tile (64 lanes); 12, 45 hit AVX-512 int8 tiles


INDEX_DTYPES = [torch.uint16, torch.int32]


# uint16 indices (the default) get the full grid; int32 a sparse corner of it.
GRID = [(shape, sp, torch.uint16) for shape in SHAPES for sp in SPARSITIES] + [
    (shape, sp, torch.int32) for shape in SHAPES[1:] for sp in (0.5, 0.99)
]


def int8_gather_kernels(s8: kk.SparseLinear, x: torch.Tensor) -> torch.Tensor:
    """The int8 op on inference-tensor copies of the buffers: those get no sliced layout (no
    version counter to cache it by), so batch 1 runs the CSR gathers the layout replaces."""
    with torch.inference_mode():
        bufs = [t.clone() for t in (s8.row_ptr, s8.col, s8.values, s8.scales, s8.rowsum)]
        bias = None if s8.bias is None else s8.bias.clone()
        op = torch.ops.kompaktor_kernels.sparse_linear_int8
        return op(x, *bufs, bias, s8.in_features)  # type: ignore[no-any-return]


@pytest.mark.parametrize(("shape", "sparsity", "index_dtype"), GRID)
def test_fp32_matches_dense(
    isa: str, shape: tuple[int, int], sparsity: float, index_dtype: torch.dtype
) -> None:
    out_f, in_f = shape
    lin = pruned(out_f, in_f, sparsity)
    sl = kk.SparseLinear.from_dense(lin, index_dtype=index_dtype)
    assert sl.col.dtype == index_dtype
    for batch in BATCHES:
        x = torch.randn(batch, in_f)
        torch.testing.assert_close(sl(x), lin(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("shape", "sparsity", "index_dtype"), GRID)
def test_int8_matches_reference(
    isa: str, shape: tuple[int, int], sparsity: float, index_dtype: torch.dtype
) -> None:
    out_f, in_f = shape
    lin = pruned(out_f, in_f, sparsity)
    s8 = kk.SparseLinear.from_dense(lin, torch.int8, index_dtype=index_dtype)
    for batch in BATCHES:
        x = torch.randn(batch, in_f)
        ref = sparse_linear_reference(x, lin.weight, lin.bias, torch.int8)
        # Exact: integer sums, and the epilogue rounds the product before the bias as the
        # reference does (an FMA there once differed by an ulp on the batched x86 paths). On
        # AVX512_VBMI the module runs the sliced layout; the gather kernels are checked too.
        torch.testing.assert_close(s8(x), ref, rtol=0, atol=0)
        torch.testing.assert_close(int8_gather_kernels(s8, x), ref, rtol=0, atol=0)
        # and close to the float layer, within quantisation error
        dense = lin(x)
        err = (s8(x) - dense).abs().max()
        assert err <= 0.02 * dense.abs().max() + 1e-3


def test_int8_rows_with_nan_or_inf_come_out_nan(isa: str) -> None:
    """A NaN in x reached no output: min/max skip it, so its row was quantised as if it were
    not there, and came out finite (on some paths and not others). A row holding a NaN or an
    infinity now comes out all NaN on every path, as in the reference; other rows are exact."""
    lin = pruned(40, 100, 0.7)
    s8 = kk.SparseLinear.from_dense(lin, torch.int8)
    for batch in (1, 3, 12, 17, 45):
        x = torch.randn(batch, 100)
        x[0, 7] = float("nan")
        x[batch // 2, 99] = float("inf")  # row 0 again at batch 1
        x[-1, 50] = -float("inf")
        bad = torch.zeros(batch, dtype=torch.bool)
        bad[[0, batch // 2, batch - 1]] = True
        ref = sparse_linear_reference(x, lin.weight, lin.bias, torch.int8)
        assert ref[bad].isnan().all() and not ref[~bad].isnan().any()
        for got in (s8(x), s8(feature_major(x)), int8_gather_kernels(s8, x)):
            assert got[bad].isnan().all(), batch
            torch.testing.assert_close(got[~bad], ref[~bad], rtol=0, atol=0)


@pytest.mark.parametrize("index_dtype", INDEX_DTYPES)
def test_every_row_length(isa: str, index_dtype: torch.dtype) -> None:
    """Row r holds r non-zeros, so each unrolled loop and remainder of the batch-1 dot products
    (16/32-wide blocks, 4-wide groups, scalar tails) ends a row somewhere."""
    out_f, in_f = 80, 300
    weight = torch.zeros(out_f, in_f)
    for r in range(out_f):
        cols = torch.randperm(in_f)[:r]
        weight[r, cols] = torch.randn(r)
    lin = nn.Linear(in_f, out_f)
    with torch.no_grad():
        lin.weight.copy_(weight)
    for batch in (1, 2):
        x = torch.randn(batch, in_f)
        sl = kk.SparseLinear.from_dense(lin, index_dtype=index_dtype)
        torch.testing.assert_close(sl(x), lin(x), rtol=1e-5, atol=1e-5)
        s8 = kk.SparseLinear.from_dense(lin, torch.int8, index_dtype=index_dtype)
        ref = sparse_linear_reference(x, lin.weight, lin.bias, torch.int8)
        torch.testing.assert_close(s8(x), ref, rtol=1e-5, atol=1e-5)


def test_index_dtype_follows_in_features(isa: str) -> None:
    assert kk.SparseLinear.from_dense(pruned(3, 65536, 0.999)).col.dtype == torch.uint16
    lin = pruned(3, 70_000, 0.99)
    with torch.no_grad():
        lin.weight[:, -1] = 1.0  # the last column is the one 16 bits cannot address
    for dtype in (torch.float32, torch.int8):
        sl = kk.SparseLinear.from_dense(lin, dtype)
        assert sl.col.dtype == torch.int32
        for batch in (1, 5):
            x = torch.randn(batch, 70_000)
            ref = sparse_linear_reference(x, lin.weight, lin.bias, dtype)
            torch.testing.assert_close(sl(x), ref, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="uint16"):
        kk.SparseLinear.from_dense(lin, index_dtype=torch.uint16)
    with pytest.raises(TypeError, match="index_dtype"):
        kk.SparseLinear.from_dense(lin, index_dtype=torch.int64)


def test_buffer_replacement_and_edits_are_seen() -> None:
    """The module caches validated native arguments; every way of changing the buffers must
    invalidate them."""
    lin = pruned(6, 10, 0.5)
    sl = kk.SparseLinear.from_dense(lin)
    x = torch.randn(1, 10)
    torch.testing.assert_close(sl(x), lin(x))
    with torch.no_grad():
        sl.values.mul_(2)  # in place: same pointer, new contents
        lin.weight.mul_(2)
    torch.testing.assert_close(sl(x), lin(x))
    other = nn.Linear(10, 6)
    with torch.no_grad():  # same non-zero count, other positions and values
        other.weight.copy_(lin.weight.flip(1) * 3)
    sl.load_state_dict(kk.SparseLinear.from_dense(other).state_dict())  # copies in place
    torch.testing.assert_close(sl(x), other(x))
    sl.bias = None  # buffer replaced
    torch.testing.assert_close(sl(x), F.linear(x, other.weight))
    broken = copy.deepcopy(sl)
    broken.col = broken.col[:-1].clone()  # replaced by an inconsistent tensor: rejected, not read
    with pytest.raises(ValueError, match="lengths differ"):
        broken(x)
    sl.values = sl.values.double()  # a buffer of another dtype: refused, not read as float32
    with pytest.raises(TypeError, match="values"):
        sl(x)


@pytest.mark.parametrize("dtype", [torch.float32, torch.int8])
@pytest.mark.parametrize("grad", [False, True], ids=["module", "op"])
@pytest.mark.parametrize("batch", [1, 8])
def test_swapped_buffer_memory_is_seen(
    isa: str, dtype: torch.dtype, grad: bool, batch: int
) -> None:
    """`t.data = ...` and `share_memory_()` give a buffer new memory without bumping its
    version; a cached plan still pointing at the old memory read freed memory (garbage or a
    segfault). The module's plan and the op's cache both check data pointers too."""
    lin = pruned(48, 40, 0.5)
    sl = kk.SparseLinear.from_dense(lin, dtype)
    x = torch.randn(batch, 40, requires_grad=grad)
    torch.testing.assert_close(sl(x), sparse_linear_reference(x, lin.weight, lin.bias, dtype))
    with torch.no_grad():
        lin.weight.mul_(2)
        lin.bias.fill_(1)
    if dtype == torch.float32:
        sl.values.data = sl.values.data * 2
    else:
        sl.scales.data = sl.scales.data * 2
    assert sl.bias is not None
    sl.bias.data = torch.ones(48)
    want = sparse_linear_reference(x, lin.weight, lin.bias, dtype)
    torch.testing.assert_close(sl(x), want)
    model = nn.Sequential(sl).share_memory()  # moves every buffer to new, shared memory
    assert sl.values.is_shared()
    torch.testing.assert_close(model(x), want)


@pytest.mark.parametrize("dtype", [torch.float32, torch.int8])
def test_a_model_cast_to_half_precision_keeps_the_sparse_weights(dtype: torch.dtype) -> None:
    """`model.half()` / `.to(torch.bfloat16)` cast every floating buffer, which left SparseLinear
    reading float16 values (refused at the next call). Its weights keep their dtype; half inputs
    are computed in float32 and come back in their dtype, so the cast model runs."""
    dense = nn.Sequential(pruned(32, 64, 0.9), nn.ReLU(), nn.Linear(32, 8))
    x = torch.randn(5, 64)
    for half in (torch.float16, torch.bfloat16):
        model = kk.sparsify(copy.deepcopy(dense), dtype=dtype, min_sparsity=0.5).to(half)
        assert model[0].values.dtype == dtype and model[0].bias.dtype == torch.float32
        assert model[2].weight.dtype == half  # the dense layer is cast as asked
        y = model(x.to(half))
        assert y.dtype == half
        want = copy.deepcopy(dense).to(half)(x.to(half)).float()
        torch.testing.assert_close(y.float(), want, rtol=0.02, atol=0.02)
    model = kk.sparsify(copy.deepcopy(dense)).double()
    with pytest.raises(TypeError, match=r"computes in float32 .* got torch.float64 input"):
        model(x.double())


def test_pickle_and_deepcopy_after_a_call() -> None:
    lin = pruned(5, 7, 0.5)
    sl = kk.SparseLinear.from_dense(lin, torch.int8)
    x = torch.randn(2, 7)
    expected = sl(x)  # builds the cached plan
    buffer = io.BytesIO()
    torch.save(sl, buffer)  # the cached plan (native pointers) must not travel
    buffer.seek(0)
    with torch.serialization.safe_globals([kk.SparseLinear]):
        loaded = torch.load(buffer, weights_only=True)
    torch.testing.assert_close(loaded(x), expected, rtol=0, atol=0)
    twin = copy.deepcopy(sl)
    with torch.no_grad():
        sl.values.zero_()  # the copy must not share the original's buffers or pointers
    torch.testing.assert_close(twin(x), expected, rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.int8])
def test_plain_pickle_keeps_uint16_indices(dtype: torch.dtype) -> None:
    """torch cannot pickle uint16 tensors (torch.save can); a model holding SparseLinear
    layers still pickles (multiprocessing, Ray, joblib), and comes back as it was."""
    torch.manual_seed(0)
    model = kk.sparsify(nn.Sequential(pruned(9, 20, 0.8), nn.ReLU(), pruned(3, 9, 0.8)), dtype)
    x = torch.randn(4, 20)
    expected = model(x)
    twin = pickle.loads(pickle.dumps(model))
    assert twin[0].col.dtype == torch.uint16 and model[0].col.dtype == torch.uint16
    torch.testing.assert_close(twin(x), expected, rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.int8])
def test_jit_trace_records_the_op(dtype: torch.dtype) -> None:
    """torch.jit.trace records torch ops only: the native fast path would leave the traced graph
    returning its empty output buffer (garbage, silently). The layer goes through the op."""
    torch.manual_seed(0)
    model = kk.sparsify(nn.Sequential(pruned(9, 20, 0.8), nn.ReLU(), pruned(3, 9, 0.8)), dtype)
    traced = torch.jit.trace(model, torch.randn(4, 20), check_trace=False)
    assert "kompaktor_kernels::sparse_linear" in str(traced.inlined_graph)
    for batch in (4, 7):
        x = torch.randn(batch, 20)
        torch.testing.assert_close(traced(x), model(x), rtol=0, atol=0)


def test_to_linear_and_densify_give_the_dense_layers_back() -> None:
    torch.manual_seed(0)
    first, second = pruned(9, 20, 0.8), pruned(3, 9, 0.8, bias=False)
    fp32 = kk.SparseLinear.from_dense(first)
    int8 = kk.SparseLinear.from_dense(second, torch.int8)
    hook_calls: list[int] = []
    int8.register_forward_hook(lambda *_: hook_calls.append(1))
    model = nn.Sequential(fp32, nn.ReLU(), int8).eval()
    x = torch.randn(5, 20)
    expected = model(x)
    dense = kk.densify(model)
    assert dense is model and [type(m) for m in model] == [nn.Linear, nn.ReLU, nn.Linear]
    assert not model[0].training and model[2].bias is None
    torch.testing.assert_close(model[0].weight, first.weight, rtol=0, atol=0)
    torch.testing.assert_close(model[0].bias, first.bias, rtol=0, atol=0)
    scales = int8.scales[:, None]
    torch.testing.assert_close(model[2].weight, torch.round(second.weight / scales) * scales)
    assert model[2].weight.requires_grad  # trainable parameters, not the CSR's buffers
    torch.testing.assert_close(model(x), expected, rtol=1e-5, atol=1e-2)
    assert len(hook_calls) == 2  # the hook came along
    assert isinstance(kk.densify(kk.SparseLinear.from_dense(first)), nn.Linear)
    with torch.no_grad():
        fp32.values.zero_()  # the dense copy shares nothing with the CSR
    torch.testing.assert_close(model[0].weight, first.weight, rtol=0, atol=0)


# Batch-1 int8 on the avx512 path. With AVX512_VBMI the module uses the sliced layout
# (16 rows x 64 inputs per slice, vpermb + vpdpbusd); without a layout (inference tensors, or
# AVX-512 without VBMI) it gathers: rows in blocks of 16 after a gather pass, and for
# in <= 1024 with VBMI the gather is vpermi2b over activations held in registers (one 128-byte
# register pair per 128 columns, so the sizes straddle those, the 64-input chunks, and 1024).
VBMI_IN = [1, 3, 64, 127, 128, 129, 255, 640, 1000, 1023, 1024, 1025, 1500]


@pytest.mark.parametrize("in_f", VBMI_IN)
@pytest.mark.parametrize("sparsity", [0.0, 0.9, 0.99])
@pytest.mark.parametrize("index_dtype", INDEX_DTYPES)
def test_int8_batch1_every_path(in_f: int, sparsity: float, index_dtype: torch.dtype) -> None:
    out_f = 37  # two 16-row blocks and a partial one; not a multiple of the 4-row reduction
    lin = pruned(out_f, in_f, sparsity)
    with torch.no_grad():
        lin.weight[::5] = 0  # empty rows, the first one included
        lin.weight[3, -1] = 1.5  # the last column is reachable (highest register pair, chunk)
        lin.weight[4, 0] = -0.75
    x = torch.randn(1, in_f)
    ref = sparse_linear_reference(x, lin.weight, lin.bias, torch.int8)
    s8 = kk.SparseLinear.from_dense(lin, torch.int8, index_dtype=index_dtype)
    for isa in kk.available_isas():
        with kk.use_isa(isa):
            # Exact integer sums and the reference's rounding: every path, bit for bit.
            torch.testing.assert_close(s8(x), ref, rtol=0, atol=0)
            torch.testing.assert_close(int8_gather_kernels(s8, x), ref, rtol=0, atol=0)
        assert torch.all(s8(x)[:, ::5] == lin.bias[::5])


@pytest.mark.parametrize("in_f", [768, 1024, 3072])
def test_int8_batch1_long_rows_and_threads(in_f: int) -> None:
    """Dense rows (> 16 KB gathered per 16-row block when in = 3072; 16 slices per chunk in
    the sliced layout) and a 2-thread split that starts blocks mid-matrix."""
    lin = pruned(53, in_f, 0.0)
    x = torch.randn(1, in_f)
    ref = sparse_linear_reference(x, lin.weight, lin.bias, torch.int8)
    s8 = kk.SparseLinear.from_dense(lin, torch.int8)
    before = torch.get_num_threads()
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            torch.testing.assert_close(s8(x), ref, rtol=0, atol=0)
            torch.testing.assert_close(int8_gather_kernels(s8, x), ref, rtol=0, atol=0)
    finally:
        torch.set_num_threads(before)


def csr_rows(sl: kk.SparseLinear) -> torch.Tensor:
    """The output row of each stored non-zero."""
    counts = (sl.row_ptr[1:] - sl.row_ptr[:-1]).long()
    return torch.repeat_interleave(torch.arange(sl.out_features), counts)


def csr_dense_like(sl: kk.SparseLinear, got: torch.Tensor) -> torch.Tensor:
    """The CSR weights as a float64 matrix shaped like a decoded layout (zero padding)."""
    want = torch.zeros_like(got)
    want[csr_rows(sl), sl.col.long()] = sl.values.to(torch.float64)
    return want


def csr_counts(sl: kk.SparseLinear, rows: int, width: int) -> torch.Tensor:
    """Non-zeros of each row (padded to `rows`) per run of `width` inputs."""
    nnz_rows = csr_rows(sl)
    counts = torch.zeros(rows, -(-sl.in_features // width), dtype=torch.int64)
    counts.index_put_(
        (nnz_rows, sl.col.long() // width), torch.ones_like(nnz_rows), accumulate=True
    )
    return counts


@pytest.mark.parametrize("dtype", [torch.int8, torch.float32])
@pytest.mark.parametrize(
    ("out_f", "in_f", "sparsity"),
    [(1, 1, 0.0), (37, 130, 0.0), (37, 130, 0.9), (16, 64, 1.0), (50, 1000, 0.99),
     (33, 70_000, 0.999)],
)  # fmt: skip
def test_sliced_layout_holds_exactly_the_csr_weights(
    out_f: int, in_f: int, sparsity: float, dtype: torch.dtype
) -> None:
    """The layout builder is portable C++, so this runs on every CPU: decode the slices back
    into a dense matrix and compare with the CSR's; the slice counts must be the minimum."""
    lin = pruned(out_f, in_f, sparsity)
    sl = kk.SparseLinear.from_dense(lin, dtype)
    counts, block_off, idx, w = _sliced._build(sl.row_ptr, sl.col, sl.values, in_f)
    rows, (cols, depth) = _sliced.ROWS, _sliced.GEOMETRY[dtype]
    width = rows * depth  # slots per slice
    blocks, chunks = -(-out_f // rows), -(-in_f // cols)
    per_block = counts.view(blocks, chunks).sum(1, dtype=torch.int32)
    assert torch.equal(
        block_off,
        torch.cat([torch.zeros(1, dtype=torch.int32), per_block.cumsum(0, dtype=torch.int32)]),
    )
    assert idx.numel() == w.numel() == int(block_off[-1]) * width and w.dtype == dtype
    where = torch.repeat_interleave(torch.arange(blocks * chunks), counts.long())
    slot = torch.arange(width)
    row = ((where // chunks)[:, None] * rows + slot // depth).flatten()
    col = ((where % chunks)[:, None] * cols + idx.view(-1, width).long()).flatten()
    got = torch.zeros(blocks * rows, chunks * cols, dtype=torch.float64)
    got.index_put_((row, col), w.to(torch.float64), accumulate=True)
    assert torch.equal(got, csr_dense_like(sl, got))
    # Minimal: each (block, chunk) has as many slices as its fullest row needs.
    per_row = csr_counts(sl, blocks * rows, cols)
    need = (
        (per_row + depth - 1).div(depth, rounding_mode="floor").view(blocks, rows, chunks).amax(1)
    )
    assert torch.equal(counts.view(blocks, chunks).long(), need)


@pytest.mark.parametrize("panel_cols", _sliced.PANEL_COLS)
@pytest.mark.parametrize(
    ("out_f", "in_f", "sparsity"),
    [(1, 1, 0.0), (37, 130, 0.0), (129, 600, 0.9), (64, 256, 1.0), (70, 1000, 0.99),
     (33, 70_000, 0.999)],
)  # fmt: skip
def test_panel_layout_holds_exactly_the_csr_weights(
    out_f: int, in_f: int, sparsity: float, panel_cols: int
) -> None:
    """The panel builder is portable C++ too: decode the groups back into a dense matrix and
    compare with the CSR's. Within each (block, panel) the groups must come longest first,
    and each must run exactly as many steps as its longest row segment (little padding).
    Panel 0 must list every row of its block once (the kernel stores its sums there and adds
    later panels' to them), later panels only rows with non-zeros there, and lanes past a
    block's last row its spare row (the kernel's sum tile has whole blocks; never written out)."""
    lin = pruned(out_f, in_f, sparsity)
    sl = kk.SparseLinear.from_dense(lin)
    layout = _sliced._build_panels(sl.row_ptr, sl.col, sl.values, in_f, panel_cols)
    group_start, step_off, rows, off, w = layout
    block_rows, lanes = _sliced.PANEL_ROWS, _sliced.PANEL_GROUP
    blocks, panels = -(-out_f // block_rows), -(-in_f // panel_cols)
    groups = int(group_start[-1])
    steps = (step_off[1 : groups + 1] - step_off[:groups]).long()
    assert int(step_off[groups]) * lanes == off.numel() == w.numel()
    off = off.to(torch.int64)  # uint16 has no arithmetic kernels
    assert bool((off % 32 == 0).all())
    bp = torch.repeat_interleave(torch.arange(blocks * panels), group_start.diff().long())
    block, panel = bp // panels, bp % panels
    assert bool((steps[panel > 0] > 0).all())
    local = rows[: groups * lanes].view(groups, lanes).long()
    # Lanes past their block's last row name the spare row; panel 0 lists every row once.
    block_len = (out_f - block * block_rows).clamp(max=block_rows)[:, None].expand_as(local)
    position = (torch.arange(groups) - group_start[bp])[:, None] * lanes + torch.arange(lanes)
    padding = position >= block_len
    assert torch.equal(local[padding], block_len[padding])
    listed = (block[:, None] * block_rows + local)[(panel == 0)[:, None] & ~padding]
    assert torch.equal(listed.sort().values, torch.arange(out_f))
    slot_group = torch.repeat_interleave(torch.arange(groups), steps * lanes)
    lane = torch.arange(off.numel()) % lanes
    row = block[slot_group] * block_rows + local[slot_group, lane]
    col = panel[slot_group] * panel_cols + off // 32
    got = torch.zeros(blocks * block_rows, panels * panel_cols, dtype=torch.float64)
    got.index_put_((row, col), w.to(torch.float64), accumulate=True)
    assert torch.equal(got, csr_dense_like(sl, got))
    # Steps: the first (longest) row of each group, and non-increasing within a (block, panel).
    seg = csr_counts(sl, blocks * block_rows, panel_cols)
    assert torch.equal(steps, seg[block * block_rows + local[:, 0], panel])
    assert torch.equal(seg[block[:, None] * block_rows + local, panel[:, None]].amax(1), steps)
    same = bp[1:] == bp[:-1]
    assert bool((steps[1:][same] <= steps[:-1][same]).all())


@pytest.mark.parametrize(("panel_cols", "bound"), [(256, 1.04), (512, 1.03)])
def test_panel_layout_padding_is_small(panel_cols: int, bound: float) -> None:
    """Sorting rows by segment length is what keeps the lockstep groups full: at 90 %
    sparsity (~25 non-zeros per 256-input segment) the slots exceed the non-zeros by < 4 %
    (2.8 % here; 2.0 % on 512 inputs), where unsorted groups of 8 would pad by 27 %."""
    sl = kk.SparseLinear.from_dense(pruned(768, 3072, 0.9))
    *_, w = _sliced._build_panels(sl.row_ptr, sl.col, sl.values, 3072, panel_cols)
    assert sl.nnz <= w.numel() < bound * sl.nnz


# The panel layouts batches 2-41 run on: tiles of up to 16 lanes use the wide one, wider tiles
# (up to 32 lanes on AVX-512, 24 on AVX2) the narrow one; the portable unit's are all <= 16.
PANELS_USED = {
    "avx512": _sliced.PANELS | _sliced.WIDE_PANELS,
    "avx2": _sliced.PANELS | _sliced.WIDE_PANELS,
    "portable": _sliced.WIDE_PANELS,
}


def test_fp32_batched_panel_and_csr_kernels_agree(isa: str) -> None:
    """Batched fp32 runs the panel layouts on every path (the wide one for tiles of up to 16
    lanes, the narrow one above) and the CSR kernel without them (inference-tensor buffers):
    both match the dense layer on every tile width (8-32 lanes, and 41, which spans two or
    three tiles), a partial last block, group and panel, empty rows and 2 threads."""
    lin = pruned(133, 777, 0.9)
    with torch.no_grad():
        lin.weight[::7] = 0
        lin.weight[5, 256:512] = 0.25  # a dense segment: one long group
    sl = kk.SparseLinear.from_dense(lin)
    with torch.inference_mode():
        bufs = [t.clone() for t in (sl.row_ptr, sl.col, sl.values)]
        bias = None if sl.bias is None else sl.bias.clone()
    before = torch.get_num_threads()
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            for batch in (2, 8, 16, 24, 32, 41):
                x = torch.randn(batch, 777)
                want = lin(x)
                torch.testing.assert_close(sl(x), want, rtol=1e-5, atol=1e-5)
                with torch.inference_mode():
                    csr = torch.ops.kompaktor_kernels.sparse_linear(x, *bufs, bias, 777)
                torch.testing.assert_close(csr, want, rtol=1e-5, atol=1e-5)
    finally:
        torch.set_num_threads(before)
    assert sl._plan is not None and sl._plan.derived.built == PANELS_USED[isa]


def test_derived_layouts_are_built_when_a_batch_first_needs_them(isa: str) -> None:
    """A layer builds no derived layout up front, and each one the first time a batch runs on
    it: the sliced layout at batch 1 (AVX-512 only; the other paths gather), the wide panels at
    batch 8, the narrow ones at batch 24 (not on the portable unit, whose tiles stay <= 16
    lanes). A layer served at batch 24 alone holds one panel layout, ~1.05x the CSR's bytes,
    not all three (~3.7x). Results match the dense layer at every step."""
    lin = pruned(256, 768, 0.9)
    sl = kk.SparseLinear.from_dense(lin)
    csr_bytes = sum(t.nbytes for t in (sl.row_ptr, sl.col, sl.values))

    def built_after(batch: int) -> int:
        x = torch.randn(batch, 768)
        torch.testing.assert_close(sl(x), lin(x), rtol=1e-5, atol=1e-5)
        assert sl._plan is not None
        return sl._plan.derived.built

    sliced = _sliced.SLICED if isa == "avx512" else 0
    assert built_after(1) == sliced
    assert built_after(8) == sliced | _sliced.WIDE_PANELS
    assert built_after(24) == sliced | PANELS_USED[isa]
    assert built_after(1) == sliced | PANELS_USED[isa]  # kept, not rebuilt or dropped

    served = kk.SparseLinear.from_dense(lin)
    x = torch.randn(24, 768)
    torch.testing.assert_close(served(x), lin(x), rtol=1e-5, atol=1e-5)
    assert served._plan is not None
    parts = served._plan.derived.parts
    assert parts[:4] == (None,) * 4
    derived_bytes = sum(t.nbytes for t in parts if t is not None)
    assert 0.9 * csr_bytes < derived_bytes < 1.2 * csr_bytes


def test_either_panel_layout_serves_every_tile_width(isa: str) -> None:
    """The panel kernel takes whichever panel layout a plan has when the one that fits L1 is
    missing (a plan always has the one it needs, but the kernel must not depend on that)."""
    lin = pruned(133, 777, 0.9)
    sl = kk.SparseLinear.from_dense(lin)
    for kinds in (_sliced.PANELS, _sliced.WIDE_PANELS):
        some = _sliced.Derived.empty(torch.float32, final=False)
        some = some.with_kinds(kinds, sl.row_ptr, sl.col, sl.values, 777)
        final = _sliced.Derived(some.parts, _sliced.EVERY)  # asks for nothing more
        buffers = (sl.row_ptr, sl.col, sl.values, sl.bias, None, None)
        plan = _plan.native_plan(buffers, 777, final)
        for batch in (2, 16, 24, 32, 41):
            x, y = torch.randn(batch, 777), torch.empty(batch, 133)
            assert plan(x.data_ptr(), batch, y.data_ptr(), 1, False, False) == 0
            torch.testing.assert_close(y, lin(x), rtol=1e-5, atol=1e-5)


def test_the_op_caches_the_layouts_it_builds(isa: str) -> None:
    """The custom op (the path compile/export and autograd take) builds a batch's layouts once
    per weight tensors and version, like the module's plan, and rebuilds after an edit."""
    lin = pruned(64, 300, 0.9)
    sl = kk.SparseLinear.from_dense(lin)
    x = torch.randn(8, 300)
    args = (sl.row_ptr, sl.col, sl.values, sl.bias, 300)
    torch.testing.assert_close(torch.ops.kompaktor_kernels.sparse_linear(x, *args), lin(x))
    derived = _plan._validated[id(sl.values)].derived
    assert derived.built == _sliced.WIDE_PANELS
    torch.ops.kompaktor_kernels.sparse_linear(x, *args)
    assert _plan._validated[id(sl.values)].derived is derived  # not rebuilt
    with torch.no_grad():
        sl.values.neg_()
    want = F.linear(x, -lin.weight, lin.bias)
    torch.testing.assert_close(torch.ops.kompaktor_kernels.sparse_linear(x, *args), want)
    assert _plan._validated[id(sl.values)].derived is not derived
    # The cached plan holds the bias's pointer too: an edit, or another tensor, is seen.
    op = torch.ops.kompaktor_kernels.sparse_linear
    with torch.no_grad():
        sl.bias.add_(1.0)
    torch.testing.assert_close(op(x, *args), want + 1.0)
    for _ in range(3):  # fresh tensors, which may reuse a freed one's id
        bias = torch.randn(64)
        torch.testing.assert_close(
            op(x, sl.row_ptr, sl.col, sl.values, bias, 300), want - lin.bias + bias
        )
    torch.testing.assert_close(op(x, sl.row_ptr, sl.col, sl.values, None, 300), want - lin.bias)


def test_fp32_batch1_sliced_and_gather_kernels_agree(isa: str) -> None:
    """fp32 batch 1 runs the sliced layout on AVX-512 and the insert gathers without one
    (inference-tensor buffers); both match the dense layer, including a partial last block
    and chunk and empty rows."""
    lin = pruned(37, 1001, 0.9)
    with torch.no_grad():
        lin.weight[::5] = 0
        lin.weight[3, -1] = 1.5
    sl = kk.SparseLinear.from_dense(lin)
    x = torch.randn(1, 1001)
    torch.testing.assert_close(sl(x), lin(x), rtol=1e-5, atol=1e-5)
    assert sl._plan is not None
    assert sl._plan.derived.built == (_sliced.SLICED if isa == "avx512" else 0)
    with torch.inference_mode():
        bufs = [t.clone() for t in (sl.row_ptr, sl.col, sl.values, sl.bias)]
        gathered = torch.ops.kompaktor_kernels.sparse_linear(x, *bufs, 1001)
    torch.testing.assert_close(gathered, lin(x), rtol=1e-5, atol=1e-5)
    assert torch.all(sl(x)[:, ::5] == lin.bias[::5])


LAYOUTS = [(False, False), (True, True), (False, True), (True, False)]
LAYOUT_IDS = ["rows", "lanes", "rows_to_lanes", "lanes_to_rows"]


@pytest.mark.parametrize(("feature_major_x", "feature_major_y"), LAYOUTS, ids=LAYOUT_IDS)
def test_int8_sliced_kernels_match_the_csr_kernels(
    isa: str, feature_major_x: bool, feature_major_y: bool
) -> None:
    """Each unit's sliced int8 kernel (vpermb with VBMI; AVX512BW shuffles without, to batch 8;
    AVX2 shuffles and nibble sums, to batch 4) gives the CSR kernels' bits and the reference's,
    at the batches it runs and just past them, where the CSR kernels take over, for x and y
    each row-major or feature-major."""
    lin = pruned(37, 333, 0.9)
    s8 = kk.SparseLinear.from_dense(lin, torch.int8)
    bufs = (s8.row_ptr, s8.col, s8.values, s8.bias, s8.scales, s8.rowsum)
    csr = _plan.native_plan(bufs, 333, _sliced.Derived.empty(torch.int8, final=True))
    empty = _sliced.Derived.empty(torch.int8, final=False)
    derived = empty.with_kinds(_sliced.SLICED, s8.row_ptr, s8.col, s8.values, 333)
    sliced = _plan.native_plan(bufs, 333, derived)
    for batch in range(1, 10):
        x = torch.randn(batch, 333)
        x = feature_major(x) if feature_major_x else x
        ys = []
        for plan in (csr, sliced):
            y = _plan.empty_out(x, 37, feature_major_y)
            args = (x.data_ptr(), batch, y.data_ptr(), 2, feature_major_x, feature_major_y)
            assert plan(*args) == 0
            ys.append(y)
        assert torch.equal(ys[0], ys[1])
        want = sparse_linear_reference(x, lin.weight, lin.bias, torch.int8)
        torch.testing.assert_close(ys[1], want, rtol=0, atol=0)


def test_int8_batch1_sees_in_place_edits() -> None:
    """The sliced layout is cached per values tensor and version: an in-place edit rebuilds it."""
    lin = pruned(40, 200, 0.8)
    s8 = kk.SparseLinear.from_dense(lin, torch.int8)
    x = torch.randn(1, 200)
    torch.testing.assert_close(s8(x), sparse_linear_reference(x, lin.weight, lin.bias, torch.int8))
    assert s8._plan is not None  # the batch-1 call above built and used the layout
    assert s8._plan.derived.built == (_sliced.SLICED if kk._native.best_isa() == 2 else 0)
    with torch.no_grad():
        s8.values.neg_()  # symmetric quantisation: exactly the layer of -weight
        s8.rowsum.neg_()
    expected = sparse_linear_reference(x, -lin.weight, lin.bias, torch.int8)
    torch.testing.assert_close(s8(x), expected, rtol=0, atol=0)


def test_empty_rows_and_no_bias(isa: str) -> None:
    lin = pruned(40, 50, 0.5, bias=False)
    with torch.no_grad():
        lin.weight[::3] = 0  # every third output row empty
    x = torch.randn(9, 50)
    for dtype in (torch.float32, torch.int8):
        sl = kk.SparseLinear.from_dense(lin, dtype)
        ref = sparse_linear_reference(x, lin.weight, None, dtype)
        torch.testing.assert_close(sl(x), ref, rtol=1e-5, atol=1e-5)
        assert torch.all(sl(x)[:, ::3] == 0)


def test_leading_dims_and_empty_batch(isa: str) -> None:
    lin = pruned(12, 20, 0.8)
    sl = kk.SparseLinear.from_dense(lin)
    x = torch.randn(2, 3, 20)
    torch.testing.assert_close(sl(x), lin(x), rtol=1e-5, atol=1e-5)
    assert sl(torch.randn(0, 20)).shape == (0, 12)


def test_noncontiguous_input_accepted_by_module() -> None:
    lin = pruned(8, 16, 0.5)
    x = torch.randn(4, 32)[:, ::2]  # strided: copied to a contiguous x, giving contiguous y
    y = kk.SparseLinear.from_dense(lin)(x)
    torch.testing.assert_close(y, lin(x))
    assert y.is_contiguous()


def feature_major(x: torch.Tensor) -> torch.Tensor:
    """The same values with each feature's batch lanes contiguous (x.t() contiguous)."""
    return x.t().contiguous().t()


def test_random_configurations_match_the_reference(isa: str) -> None:
    """The grids here vary one or two things at a time; this draws them all at once, 120
    seeded configurations per path: shape (partial blocks and panels), sparsity with empty rows,
    dtype, index width, bias, threads, leading dimensions, x's layout (row-major, feature-major,
    strided), feature_major_out, and the module's direct, traced (autograd) and op calls."""
    rng = random.Random(f"{isa}-{kk._native.has_vbmi()}")
    before = torch.get_num_threads()
    try:
        for _ in range(120):
            in_f, out_f = rng.choice([1, 7, 16, 31, 257, 513, 1030]), rng.choice([1, 9, 128, 133])
            dtype = rng.choice([torch.float32, torch.int8])
            lin = pruned(out_f, in_f, rng.choice([0.0, 0.5, 0.9, 0.99, 1.0]), rng.random() < 0.7)
            with torch.no_grad():
                lin.weight[:: rng.choice([2, 3, out_f + 1])] = 0
            sl = kk.SparseLinear.from_dense(lin, dtype, rng.choice(INDEX_DTYPES))
            sl.feature_major_out = asked = rng.choice([None, False, True])
            lead = rng.choice([(), (rng.randint(1, 70),), (rng.randint(1, 4), rng.randint(1, 9))])
            x = torch.randn(*lead, in_f)
            layout = rng.choice(["rows", "lanes", "strided"]) if lead else "rows"
            xs = {
                "rows": x,
                "lanes": x.movedim(-1, 0).contiguous().movedim(0, -1),
                "strided": torch.cat([x, x], dim=-1)[..., :in_f],
            }[layout]
            torch.set_num_threads(rng.choice([1, 2]))
            ref = sparse_linear_reference(x, lin.weight, lin.bias, dtype)
            calls = [sl(xs), sl._forward_checked(xs.clone().requires_grad_(dtype != torch.int8))]
            lanes = _plan.feature_major(xs) if asked is None else asked and bool(lead)
            for y in calls:
                torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-5)
                assert y.movedim(-1, 0).is_contiguous() if lanes else y.is_contiguous()
            torch.testing.assert_close(calls[1], calls[0], rtol=0, atol=0)
    finally:
        torch.set_num_threads(before)


def test_concurrent_calls_from_python_threads_match_serial_ones() -> None:
    """The kernels release the GIL, so a threaded server may call one layer from several Python
    threads at once, each starting its own parallel region: every call must give exactly the
    serial result (scratch buffers are per thread; the plan cache is rebuilt racily from
    scratch here, as on a first call)."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        lin = pruned(256, 777, 0.9)
        layers = [kk.SparseLinear.from_dense(lin, dtype) for dtype in (torch.float32, torch.int8)]
        xs = [torch.randn(b, 777) for b in (1, 8, 32)]
        xs += [feature_major(torch.randn(b, 777)) for b in (8, 32)]
        cases = [(layer, x) for layer in layers for x in xs]
        with torch.no_grad():
            expected = [layer(x) for layer, x in cases]
        for layer in layers:
            layer._plan = None
        start = threading.Barrier(4)

        def worker(seed: int) -> int:
            order = torch.randperm(len(cases), generator=torch.Generator().manual_seed(seed))
            start.wait()
            wrong = 0
            with torch.no_grad():
                for _ in range(10):
                    for i in order.tolist():
                        layer, x = cases[i]
                        wrong += not torch.equal(layer(x), expected[i])
            return wrong

        with ThreadPoolExecutor(4) as pool:
            assert list(pool.map(worker, range(4))) == [0, 0, 0, 0]
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("dtype", [torch.float32, torch.int8])
@pytest.mark.parametrize("feature_major_x", [False, True], ids=["x_rows", "x_lanes"])
@pytest.mark.parametrize("asked", [None, False, True], ids=["y_as_x", "y_rows", "y_lanes"])
def test_output_layout_follows_x_or_is_fixed(
    isa: str, dtype: torch.dtype, feature_major_x: bool, asked: bool | None
) -> None:
    """y has x's layout (a feature-major x, as torch's CSR matmul returns y, gives a
    feature-major y) unless feature_major_out fixes it, with exactly the values of a row-major
    call of the same path: the module's direct one, the op's (the CSR kernels, on
    inference-tensor copies of the buffers) and the traced one (the op with autograd). 128 and
    256 rows let the panel kernel sum into y itself, 133 need a spare row; 41 and 70 lanes span
    several tiles, 2 and 3 are narrower than one."""
    feature_major_y = feature_major_x if asked is None else asked
    before = torch.get_num_threads()
    try:
        for out_f, threads in ((128, 1), (256, 2), (133, 2)):
            torch.set_num_threads(threads)
            lin = pruned(out_f, 777, 0.9)
            sl = kk.SparseLinear.from_dense(lin, dtype)
            with torch.inference_mode():
                bufs = [t.clone() for t in (sl.row_ptr, sl.col, sl.values)]
                if dtype == torch.int8:
                    bufs += [sl.scales.clone(), sl.rowsum.clone()]
                bias = None if sl.bias is None else sl.bias.clone()
            name = "sparse_linear_int8" if dtype == torch.int8 else "sparse_linear"
            op = getattr(torch.ops.kompaktor_kernels, name)
            for batch in (2, 3, 8, 16, 24, 32, 41, 70):
                x = torch.randn(batch, 777)
                xs = feature_major(x) if feature_major_x else x
                sl.feature_major_out = None
                with torch.inference_mode():
                    wants = [sl(x), op(x, *bufs, bias, 777)]
                    sl.feature_major_out = asked
                    ys = [sl(xs), op(xs, *bufs, bias, 777, asked)]
                ys.append(sl._forward_checked(xs.clone().requires_grad_(True)))
                wants.append(wants[0])
                for y, want in zip(ys, wants, strict=True):
                    assert y.stride() == ((1, batch) if feature_major_y else (out_f, 1))
                    torch.testing.assert_close(y, want, rtol=0, atol=0)
                if dtype == torch.float32:
                    torch.testing.assert_close(ys[0], lin(x), rtol=1e-5, atol=1e-5)
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("dtype", [torch.float32, torch.int8])
def test_fixed_output_layout_with_token_dimensions_and_export(dtype: torch.dtype) -> None:
    """[batch, tokens, features]: feature-major is [features][batch][tokens] in memory (the
    lanes are every leading index in order), which the kernels read and write as they do a 2-D
    x's, with the same values; a 1-D x has no lanes, so its y stays contiguous. An exported
    layer passes the layout only when it is set, so a program from a layer that leaves it to
    x calls the ops as programs exported before the argument existed do. Anything but True,
    False or None is refused when set, not at the next call."""
    sl = kk.SparseLinear.from_dense(pruned(24, 40, 0.7), dtype)
    with pytest.raises(TypeError, match="feature_major_out must be True, False or None, got 1"):
        sl.feature_major_out = 1  # type: ignore[assignment]
    x3 = torch.randn(2, 5, 40)
    want = sl(x3)
    assert want.is_contiguous()
    x3f = x3.permute(2, 0, 1).contiguous().permute(1, 2, 0)  # [features][batch][tokens]
    for asked in (None, True, False):
        sl.feature_major_out = asked
        for x, lanes_in in ((x3, False), (x3f, True)):
            lanes_out = lanes_in if asked is None else asked
            for y in (sl(x), sl._forward_checked(x.clone().requires_grad_(True))):
                assert y.stride() == ((5, 1, 10) if lanes_out else (120, 24, 1))
                torch.testing.assert_close(y, want, rtol=0, atol=0)
    sl.feature_major_out = True
    assert sl(torch.randn(40)).shape == (24,)
    x = torch.randn(8, 40)
    for asked in (None, True, False):
        sl.feature_major_out = asked
        program = torch.export.export(sl, (x,))
        (call,) = (n for n in program.graph.nodes if n.op == "call_function")
        assert call.args[-1] == (40 if asked is None else asked)
        buffer = io.BytesIO()
        torch.export.save(program, buffer)
        buffer.seek(0)
        y = torch.export.load(buffer).module()(x)
        assert y.stride() == ((1, 8) if asked else (24, 1))
        torch.testing.assert_close(y, sl(x), rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.int8])
def test_ops_fake_layout_and_autograd_match_eager(dtype: torch.dtype) -> None:
    """torch.library.opcheck: the fake implementations give traced graphs (export, compile) the
    layout and shape eager calls return, for row-major and feature-major x, and the autograd
    registration holds."""
    lin = pruned(24, 40, 0.7)
    sl = kk.SparseLinear.from_dense(lin, dtype)
    if dtype == torch.int8:
        op = torch.ops.kompaktor_kernels.sparse_linear_int8.default
        weights: tuple[torch.Tensor | None, ...] = (
            sl.row_ptr, sl.col, sl.values, sl.scales, sl.rowsum, sl.bias,
        )  # fmt: skip
    else:
        op = torch.ops.kompaktor_kernels.sparse_linear.default
        weights = (sl.row_ptr, sl.col, sl.values, sl.bias)
    for x in (torch.randn(8, 40), feature_major(torch.randn(8, 40))):
        for layout in ((), (None,), (True,), (False,)):
            torch.library.opcheck(op, (x, *weights, 40, *layout))


@pytest.mark.parametrize("out_f", [57, 257])
def test_thread_count_does_not_change_result(out_f: int) -> None:
    """Bit for bit: 57 rows are one panel block (the second thread gets none), 257 are three
    (split by work); 300 inputs end in a partial panel."""
    lin = pruned(out_f, 300, 0.9)
    sl = kk.SparseLinear.from_dense(lin)
    x = torch.randn(33, 300)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = sl(x)
        torch.set_num_threads(max(2, before))
        many = sl(x)
    finally:
        torch.set_num_threads(before)
    torch.testing.assert_close(one, many, rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.int8])
@pytest.mark.parametrize("lanes_inner", [False, True], ids=["row_major", "feature_major"])
def test_gradient_wrt_input(isa: str, lanes_inner: bool, dtype: torch.dtype) -> None:
    """fp32: the exact gradient. int8 (which had none: autograd warned and x.grad stayed None,
    so layers before it silently stopped training): the straight-through one, through the
    dequantised weights, as QAT takes it."""
    lin = pruned(11, 13, 0.6)
    sl = kk.SparseLinear.from_dense(lin, dtype)
    if dtype == torch.int8:
        q, scales = quantize_weight(lin.weight)
        with torch.no_grad():
            lin.weight.copy_(q.float() * scales[:, None])
    x = torch.randn(4, 13)
    x = (feature_major(x) if lanes_inner else x).requires_grad_(True)
    (sl(x) * torch.arange(11.0)).sum().backward()
    assert x.grad is not None
    got = x.grad.clone()
    x.grad = None
    (lin(x) * torch.arange(11.0)).sum().backward()
    torch.testing.assert_close(got, x.grad, rtol=1e-5, atol=1e-5)


def test_sparsify_swaps_only_sparse_layers() -> None:
    model = nn.Sequential(pruned(32, 16, 0.9), nn.ReLU(), pruned(8, 32, 0.1), nn.Linear(8, 4))
    x = torch.randn(5, 16)
    expected = model(x)
    out = kk.sparsify(model, min_sparsity=0.5)
    assert isinstance(out[0], kk.SparseLinear)
    assert isinstance(out[2], nn.Linear) and isinstance(out[3], nn.Linear)
    torch.testing.assert_close(out(x), expected, rtol=1e-5, atol=1e-5)
    assert isinstance(kk.sparsify(pruned(4, 4, 1.0)), kk.SparseLinear)


def test_sparsify_int8() -> None:
    model = nn.Sequential(pruned(32, 16, 0.9), nn.ReLU(), pruned(8, 32, 0.9))
    x = torch.randn(5, 16)
    expected = model(x)
    out = kk.sparsify(model, dtype=torch.int8)
    assert all(isinstance(m, kk.SparseLinear) for m in (out[0], out[2]))
    assert (out(x) - expected).abs().max() < 0.05 * expected.abs().max() + 1e-3


def test_sparsify_keeps_layers_their_owner_reads_dense() -> None:
    """nn.MultiheadAttention and nn.TransformerEncoderLayer's fused inference path read their
    linear children's weights; swapping those broke the model (no `weight`). Subclasses may have
    their own forward. All of them stay dense, named in a warning; the rest is swapped."""

    class Scaled(nn.Linear):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return 2 * super().forward(x)

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.encoder = nn.TransformerEncoderLayer(32, 4, 64, batch_first=True)
            self.attn = nn.MultiheadAttention(32, 4, batch_first=True)
            self.ff = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 32))
            self.scaled = Scaled(32, 32)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.encoder(x)
            return self.scaled(self.ff(self.attn(x, x, x)[0]))

    block = Block().eval()
    with torch.no_grad():
        for param in block.parameters():
            param.mul_(torch.rand_like(param) >= 0.9)
    x = torch.randn(2, 5, 32)
    with torch.no_grad():
        expected = block(x)  # eval, batch_first, no grad: the encoder's fused path
    with pytest.warns(UserWarning, match="kept 5 sparse layer") as caught:
        kk.sparsify(block)
    message = str(caught[0].message)
    for path in ("encoder.linear1", "encoder.linear2", "encoder.self_attn.out_proj"):
        assert path in message
    assert "attn.out_proj: its owner, a MultiheadAttention" in message
    assert "scaled: it is a Scaled" in message
    assert isinstance(block.ff[0], kk.SparseLinear) and isinstance(block.ff[2], kk.SparseLinear)
    assert type(block.scaled) is Scaled and type(block.encoder.linear1) is nn.Linear
    with torch.no_grad():
        torch.testing.assert_close(block(x), expected, rtol=1e-5, atol=1e-5)


def test_sparsify_keeps_a_shared_layer_shared_with_its_hooks_and_mode() -> None:
    shared = pruned(8, 8, 0.9)
    model = nn.Sequential(shared, nn.ReLU(), shared).eval()
    seen: list[tuple[int, ...]] = []
    shared.register_forward_hook(lambda _m, _i, out: seen.append(tuple(out.shape)))
    kk.sparsify(model)
    assert isinstance(model[0], kk.SparseLinear) and model[0] is model[2]
    assert not model[0].training
    model(torch.randn(3, 8))
    assert seen == [(3, 8), (3, 8)]


def test_sparsify_takes_layers_pruned_by_torch_utilities() -> None:
    """torch.nn.utils.prune (a forward pre-hook computing weight from weight_orig and a mask)
    and parametrizations (torch.ao.pruning's masks; a generated nn.Linear subclass): the CSR
    holds the computed weight. The pruning hook, copied over, looked for weight_mask on the
    SparseLinear; the parametrized class was taken for a subclass with its own forward."""

    class Mask(nn.Module):
        def __init__(self, weight: torch.Tensor) -> None:
            super().__init__()
            self.register_buffer("mask", (torch.rand_like(weight) >= 0.9).float())

        def forward(self, weight: torch.Tensor) -> torch.Tensor:
            return weight * self.mask

    model = nn.Sequential(nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 4))
    torch.nn.utils.prune.l1_unstructured(model[0], "weight", amount=0.9)
    torch.nn.utils.parametrize.register_parametrization(model[2], "weight", Mask(model[2].weight))
    x = torch.randn(3, 32)
    expected = model(x)
    kk.sparsify(model)
    assert isinstance(model[0], kk.SparseLinear) and isinstance(model[2], kk.SparseLinear)
    assert model[0].nnz == 16 * 32 - round(0.9 * 16 * 32)
    torch.testing.assert_close(model(x), expected, rtol=1e-5, atol=1e-5)


def _retrained(lin: nn.Linear) -> nn.Linear:
    """The same layer pruned again: other positions, another non-zero count."""
    other = pruned(lin.out_features, lin.in_features, 0.6)
    assert int(torch.count_nonzero(other.weight)) != int(torch.count_nonzero(lin.weight))
    return other


@pytest.mark.parametrize("dtype", [torch.float32, torch.int8])
@pytest.mark.parametrize("assign", [False, True])
def test_state_dict_loads_any_nonzero_count_and_index_dtype(
    dtype: torch.dtype, assign: bool
) -> None:
    """A checkpoint of the layer pruned apart from it has another nnz, so the default copy into
    the buffers (which needs equal shapes) refused it; now the buffers take its shapes."""
    lin = pruned(9, 10, 0.9)
    layer = kk.SparseLinear.from_dense(lin, dtype)
    x = torch.randn(3, 10)
    layer(x)  # a cached plan over the old buffers must not survive the load
    other = _retrained(lin)
    saved = kk.SparseLinear.from_dense(other, dtype, index_dtype=torch.int32).state_dict()
    layer.load_state_dict(saved, assign=assign)
    assert layer.col.dtype == torch.int32 and layer.nnz == saved["values"].numel()
    twin = kk.SparseLinear.from_dense(other, dtype)
    torch.testing.assert_close(layer(x), twin(x), rtol=0, atol=0)
    assert set(layer.state_dict()) == set(saved)


def test_bad_checkpoints_are_refused_and_change_nothing() -> None:
    lin = pruned(9, 10, 0.7)
    layer = kk.SparseLinear.from_dense(lin)
    x = torch.randn(3, 10)
    expected = layer(x)
    int8 = kk.SparseLinear.from_dense(lin, torch.int8).state_dict()
    with pytest.raises(RuntimeError, match=r"values are torch\.int8 in the checkpoint"):
        layer.load_state_dict(
            {k: v for k, v in int8.items() if k in ("row_ptr", "col", "values", "bias")}
        )
    bad = kk.SparseLinear.from_dense(_retrained(lin)).state_dict()
    bad["col"][0] = 10
    with pytest.raises(RuntimeError, match=r"invalid sparse weights for the layer: col indices"):
        layer.load_state_dict(bad)
    bad = kk.SparseLinear.from_dense(_retrained(lin)).state_dict()
    del bad["col"]
    with pytest.raises(RuntimeError, match=r'Missing key.*"col"'):
        layer.load_state_dict(bad)
    torch.testing.assert_close(layer(x), expected, rtol=0, atol=0)
    layer8 = kk.SparseLinear.from_dense(lin, torch.int8)
    int8["rowsum"][0] += 1
    with pytest.raises(RuntimeError, match="rowsum must hold each row's sum"):
        layer8.load_state_dict(int8)


def test_load_sparse_state_dict_rebuilds_a_sparsified_model() -> None:
    """The checkpoint of a sparsified model loads into its dense architecture, through
    torch.load(weights_only=True), with each layer's dtype and index width."""

    def architecture() -> nn.Sequential:
        return nn.Sequential(
            nn.Linear(24, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4)
        )

    model = architecture()
    with torch.no_grad():
        for i in (0, 2):
            model[i].weight.mul_(torch.rand_like(model[i].weight) >= 0.9)
    model[0] = kk.SparseLinear.from_dense(model[0], index_dtype=torch.int32)
    model[2] = kk.SparseLinear.from_dense(model[2], torch.int8)  # model[4] stays dense
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    fresh = kk.load_sparse_state_dict(architecture(), state)
    assert isinstance(fresh[0], kk.SparseLinear) and fresh[0].col.dtype == torch.int32
    assert isinstance(fresh[2], kk.SparseLinear) and fresh[2].dtype == torch.int8
    assert type(fresh[4]) is nn.Linear
    x = torch.randn(5, 24)
    torch.testing.assert_close(fresh(x), model(x), rtol=0, atol=0)
    bare = kk.load_sparse_state_dict(
        nn.Linear(24, 16), {k[2:]: v for k, v in state.items() if k.startswith("0.")}
    )
    torch.testing.assert_close(bare(x), model[0](x), rtol=0, atol=0)
    attention = nn.MultiheadAttention(16, 2)
    sparse = kk.SparseLinear.from_dense(pruned(16, 16, 0.9)).state_dict()
    state = {**attention.state_dict(), **{f"out_proj.{k}": v for k, v in sparse.items()}}
    del state["out_proj.weight"]
    with pytest.raises(ValueError, match="out_proj: the checkpoint holds it sparse, but its owner"):
        kk.load_sparse_state_dict(attention, state)


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda t: t["rowsum"].add_(1), "rowsum must hold"),
        (lambda t: t["scales"].zero_(), "scales must be finite and positive"),
        (lambda t: t["scales"].fill_(float("nan")), "scales must be finite and positive"),
        (lambda t: t.update(scales=t["scales"].double()), "scales must have dtype"),
    ],
)
def test_int8_layer_rejects_inconsistent_quantisation(edit: object, match: str) -> None:
    tensors = dict(kk.SparseLinear.from_dense(pruned(6, 10, 0.5), torch.int8).state_dict())
    assert callable(edit)
    edit(tensors)
    with pytest.raises((TypeError, ValueError), match=match):
        kk.SparseLinear(10, 6, **tensors)


@pytest.mark.parametrize("dtype", [torch.float32, torch.int8])
def test_export_save_load(tmp_path: Path, dtype: torch.dtype) -> None:
    model = kk.sparsify(nn.Sequential(pruned(16, 24, 0.9), nn.ReLU(), pruned(4, 16, 0.9)), dtype)
    x = torch.randn(3, 24)
    ep = torch.export.export(model, (x,))
    path = tmp_path / "model.pt2"
    torch.export.save(ep, path)
    loaded = torch.export.load(path).module()
    torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
    ops = {str(n.target) for n in ep.graph.nodes if n.op == "call_function"}
    assert any("kompaktor_kernels" in op for op in ops)


def test_torch_compile_traces_op() -> None:
    lin = pruned(6, 10, 0.5)
    sl = kk.SparseLinear.from_dense(lin)
    x = torch.randn(2, 10)
    compiled = torch.compile(sl, backend="eager", fullgraph=True)
    torch.testing.assert_close(compiled(x), lin(x), rtol=1e-5, atol=1e-5)


def test_inductor_compiles_a_sparse_model_with_gradients() -> None:
    """The default backend (inductor, which generates and builds C++ around the custom ops),
    fp32 and int8 layers, forward and the input gradient."""
    dense = nn.Sequential(pruned(16, 12, 0.8), nn.ReLU(), pruned(4, 16, 0.8))
    model = kk.sparsify(copy.deepcopy(dense), min_sparsity=0.5)
    model[2] = kk.SparseLinear.from_dense(dense[2], torch.int8)
    compiled = torch.compile(model, fullgraph=True)
    x = torch.randn(5, 12, requires_grad=True)
    compiled(x).sum().backward()
    assert x.grad is not None
    got = x.grad.clone()
    x.grad = None
    model(x).sum().backward()
    torch.testing.assert_close(got, x.grad, rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x), rtol=1e-5, atol=1e-5)


# --- bad input -------------------------------------------------------------------------------


def _op_args(lin: nn.Linear) -> tuple[torch.Tensor, ...]:
    sl = kk.SparseLinear.from_dense(lin)
    return sl.row_ptr, sl.col, sl.values


@pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta")
def test_inputs_that_are_not_dense_tensors_get_clear_errors() -> None:
    """A list raised AttributeError from the fast path's dtype check, and sparse x torch's own
    'unsupported memory format option' from the contiguity check."""
    sl = kk.SparseLinear.from_dense(pruned(4, 6, 0.5))
    with pytest.raises(TypeError, match=r"x must be a torch\.Tensor, got list"):
        sl([0.0] * 6)  # type: ignore[arg-type]
    for sparse in (torch.randn(2, 6).to_sparse(), torch.randn(2, 6).to_sparse_csr()):
        with pytest.raises(ValueError, match=f"dense \\(strided\\).*{sparse.layout}"):
            sl(sparse)


@pytest.mark.parametrize("dtype", [torch.float32, torch.int8])
def test_a_negated_view_is_computed_as_nn_linear_does(dtype: torch.dtype) -> None:
    """A `_neg_view` tensor's memory holds -x, and the module read memory: it gave layer(-x)
    where nn.Linear gives layer(x). (The op is safe: torch's Negative fallback resolves it.)"""
    lin = pruned(12, 20, 0.5)
    sl = kk.SparseLinear.from_dense(lin, dtype)
    x = torch.randn(5, 20)
    with torch.no_grad():
        expected = sl(-x)
        for negated in (torch._neg_view(x), torch._neg_view(feature_major(x))):
            torch.testing.assert_close(sl(negated), expected, rtol=0, atol=0)
            if dtype == torch.float32:  # the op, and its CPU kernel called directly
                sparse = torch.ops.kompaktor_kernels.sparse_linear.default
                for op in (kk.EAGER_CPU_KERNELS[sparse], sparse):
                    got = op(negated, sl.row_ptr, sl.col, sl.values, sl.bias, 20)
                    torch.testing.assert_close(got, expected, rtol=0, atol=0)
        sl.bias = torch._neg_view(-lin.bias.detach())  # buffers are read in place: refused
        with pytest.raises(ValueError, match=r"bias is a negated view.*resolve_neg"):
            sl(x)


@pytest.mark.filterwarnings("error::UserWarning")  # torch warns when it loops over the batch
@pytest.mark.parametrize("dtype", [torch.float32, torch.int8])
def test_vmap_runs_the_kernel_once_over_the_mapped_dimension(dtype: torch.dtype) -> None:
    """Under torch.func.vmap x has no storage for the native call ('Cannot access data pointer
    of Tensor that doesn't have storage'); the op's batching rule moves the mapped dimension to
    the front, where the kernel takes it as a batch dimension."""
    lin = pruned(5, 7, 0.5)
    sl = kk.SparseLinear.from_dense(lin, dtype)
    x = torch.randn(4, 3, 7)
    torch.testing.assert_close(torch.func.vmap(sl)(x), sl(x), rtol=0, atol=0)
    torch.testing.assert_close(torch.func.vmap(sl, in_dims=1)(x), sl(x.transpose(0, 1)))
    torch.testing.assert_close(
        torch.func.vmap(sl)(x), sparse_linear_reference(x, lin.weight, lin.bias, dtype)
    )


def test_wrong_dtype_input() -> None:
    sl = kk.SparseLinear.from_dense(pruned(4, 6, 0.5))
    with pytest.raises(TypeError, match="float64"):
        sl(torch.randn(2, 6, dtype=torch.float64))


def test_wrong_feature_count() -> None:
    sl = kk.SparseLinear.from_dense(pruned(4, 6, 0.5))
    with pytest.raises(ValueError, match=r"\[\.\.\., 6\]"):
        sl(torch.randn(2, 7))


def test_op_rejects_noncontiguous_and_bad_csr() -> None:
    row_ptr, col, values = _op_args(pruned(4, 6, 0.5))
    op = torch.ops.kompaktor_kernels.sparse_linear
    with pytest.raises(ValueError, match="contiguous or feature-major"):
        op(torch.randn(2, 12)[:, ::2], row_ptr, col, values, None, 6)
    with pytest.raises(TypeError, match=r"col must have dtype torch\.int32 or torch\.uint16"):
        op(torch.randn(2, 6), row_ptr, col.long(), values, None, 6)
    bad = col.clone()
    if bad.numel():
        bad[0] = 100
        with pytest.raises(ValueError, match="col indices"):
            op(torch.randn(2, 6), row_ptr, bad, values, None, 6)
    with pytest.raises(ValueError, match="bias must have shape"):
        op(torch.randn(2, 6), row_ptr, col, values, torch.zeros(3), 6)
    with pytest.raises(ValueError, match="lengths differ"):
        op(torch.randn(2, 6), row_ptr, col, values[:-1].clone(), None, 6)


def test_in_place_edit_of_indices_is_revalidated() -> None:
    sl = kk.SparseLinear.from_dense(pruned(4, 6, 0.0))
    x = torch.randn(1, 6)
    sl(x)
    sl.col[0] = 1000
    with pytest.raises(ValueError, match="col indices"):
        sl(x)


@pytest.mark.parametrize("grad", [False, True], ids=["module", "op"])
@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda sl: sl.rowsum.add_(1), "rowsum must hold"),
        (lambda sl: sl.scales.fill_(float("nan")), "scales must be finite and positive"),
        (lambda sl: sl.scales.neg_(), "scales must be finite and positive"),
    ],
)
def test_in_place_edit_of_int8_quantisation_is_revalidated(
    grad: bool, edit: object, match: str
) -> None:
    """An edited scale or row sum gives wrong outputs, not a crash, so the construction-time
    checks must run again after an edit too, on the module's path and the op's."""
    sl = kk.SparseLinear.from_dense(pruned(4, 6, 0.3), torch.int8)
    x = torch.randn(3, 6, requires_grad=grad)
    sl(x)
    assert callable(edit)
    with torch.no_grad():
        edit(sl)
    with pytest.raises(ValueError, match=match):
        sl(x)


def test_int8_refuses_non_finite_weights_and_keeps_tiny_rows() -> None:
    """int8 has no NaN or infinity: such a weight used to give its row scale 1 and quantise
    the row's other weights to 0, outputs 0 where the float layer gives NaN. Rows too small
    for a normal float scale quantise to 0 instead of failing the scale check."""
    lin = pruned(4, 8, 0.0)
    with torch.no_grad():
        lin.weight[1] = 1e-45  # a denormal: amax / 127 underflows to 0
        lin.weight[2] = 1e-37
    sl = kk.SparseLinear.from_dense(lin, torch.int8)
    assert sl.scales[1] == 1 and sl.scales[2] == 1
    x = torch.randn(2, 8)
    torch.testing.assert_close(sl(x), lin(x).detach(), rtol=0.02, atol=0.02)
    for bad in (float("nan"), float("inf")):
        with torch.no_grad():
            lin.weight[3, 5] = bad
        with pytest.raises(ValueError, match=r"NaN or infinite \(row 3\)"):
            kk.SparseLinear.from_dense(lin, torch.int8)
        kk.SparseLinear.from_dense(lin)  # float32 holds it
        with pytest.raises(ValueError, match=r"^0: int8 cannot"):  # sparsify names the layer
            kk.sparsify(nn.Sequential(lin), torch.int8, min_sparsity=0.0)


def test_op_refuses_tensors_on_several_devices() -> None:
    """The op's meta kernel runs when any argument is on the meta device; with a CPU x it
    returned an uninitialised CPU y."""
    sl = kk.SparseLinear.from_dense(pruned(4, 6, 0.5)).to("meta")
    with pytest.raises(ValueError, match=r"one device, got \['cpu', 'meta'\]"):
        sl(torch.randn(2, 6, requires_grad=True))


def test_from_dense_rejects_bad_arguments() -> None:
    with pytest.raises(TypeError, match=r"nn\.Linear"):
        kk.SparseLinear.from_dense(nn.Conv1d(1, 1, 1))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="dtype"):
        kk.SparseLinear.from_dense(nn.Linear(2, 2), torch.float16)
    with pytest.raises(ValueError, match="min_sparsity"):
        kk.sparsify(nn.Linear(2, 2), min_sparsity=1.5)


def test_reference_fp32_is_f_linear() -> None:
    lin = pruned(3, 5, 0.5)
    x = torch.randn(2, 5)
    torch.testing.assert_close(
        sparse_linear_reference(x, lin.weight, lin.bias), F.linear(x, lin.weight, lin.bias)
    )


def test_built_and_run_under_inference_mode() -> None:
    lin = pruned(10, 12, 0.7)
    x = torch.randn(3, 12)
    with torch.inference_mode():
        sl = kk.SparseLinear.from_dense(lin)
        got = sl(x)
        assert not sl.col.is_inference()
        row_ptr, col, values = (t.clone() for t in (sl.row_ptr, sl.col, sl.values))
        direct = torch.ops.kompaktor_kernels.sparse_linear(x, row_ptr, col, values, None, 12)
    torch.testing.assert_close(got, lin(x), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(direct, F.linear(x, lin.weight), rtol=1e-5, atol=1e-5)


def test_interpreter_exit_reports_no_leaked_plans() -> None:
    """A layer's cached plan whose weights a live autograd graph still holds at exit: nanobind
    used to report it leaked (the cache outlived the extension)."""
    script = (
        "import torch, kompaktor_kernels as kk\n"
        "layer = kk.SparseLinear.from_dense(torch.nn.Linear(8, 8), torch.int8)\n"
        "y = layer._forward_checked(torch.randn(2, 8).requires_grad_())\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stderr
    assert "leaked" not in run.stderr
