from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import kompaktor_kernels as kk
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


@pytest.mark.parametrize(("out_f", "in_f"), SHAPES)
@pytest.mark.parametrize("sparsity", SPARSITIES)
def test_fp32_matches_dense(isa: str, out_f: int, in_f: int, sparsity: float) -> None:
    lin = pruned(out_f, in_f, sparsity)
    sl = kk.SparseLinear.from_dense(lin)
    for batch in BATCHES:
        x = torch.randn(batch, in_f)
        torch.testing.assert_close(sl(x), lin(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("out_f", "in_f"), SHAPES)
@pytest.mark.parametrize("sparsity", SPARSITIES)
def test_int8_matches_reference(isa: str, out_f: int, in_f: int, sparsity: float) -> None:
    lin = pruned(out_f, in_f, sparsity)
    s8 = kk.SparseLinear.from_dense(lin, torch.int8)
    for batch in BATCHES:
        x = torch.randn(batch, in_f)
        ref = sparse_linear_reference(x, lin.weight, lin.bias, torch.int8)
        torch.testing.assert_close(s8(x), ref, rtol=1e-5, atol=1e-5)
        # and close to the float layer, within quantisation error
        dense = lin(x)
        err = (s8(x) - dense).abs().max()
        assert err <= 0.02 * dense.abs().max() + 1e-3


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
    x = torch.randn(16, 4).t()
    torch.testing.assert_close(kk.SparseLinear.from_dense(lin)(x), lin(x))


def test_thread_count_does_not_change_result() -> None:
    lin = pruned(257, 300, 0.9)
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


def test_gradient_wrt_input(isa: str) -> None:
    lin = pruned(11, 13, 0.6)
    sl = kk.SparseLinear.from_dense(lin)
    x = torch.randn(4, 13, requires_grad=True)
    (sl(x) ** 2).sum().backward()
    assert x.grad is not None
    got = x.grad.clone()
    x.grad = None
    (lin(x) ** 2).sum().backward()
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


def test_state_dict_round_trip() -> None:
    lin = pruned(9, 10, 0.7)
    a = kk.SparseLinear.from_dense(lin, torch.int8)
    b = kk.SparseLinear.from_dense(lin, torch.int8)
    b.load_state_dict(a.state_dict())
    assert set(a.state_dict()) == {"row_ptr", "col", "values", "bias", "scales", "rowsum"}


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


# --- bad input -------------------------------------------------------------------------------


def _op_args(lin: nn.Linear) -> tuple[torch.Tensor, ...]:
    sl = kk.SparseLinear.from_dense(lin)
    return sl.row_ptr, sl.col, sl.values


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
    with pytest.raises(ValueError, match="contiguous"):
        op(torch.randn(6, 2).t(), row_ptr, col, values, None, 6)
    with pytest.raises(TypeError, match=r"col must have dtype torch\.int32"):
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
