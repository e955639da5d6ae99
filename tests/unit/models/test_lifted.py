"""Exported models run with their weights as arguments: same outputs, torch's checks once per
input signature, and no per-call framing after that."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from kompaktor.models import load_model, predictor_for, save_torch
from kompaktor.models.lifted import LiftedGraph, lift_weights

Saved = Callable[[str], Path]


@pytest.fixture
def checks(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """Each time an exported module checks its inputs (its pre-hook runs before every call)."""
    import torch.export._unlift as unlift

    seen: list[object] = []
    real = unlift._check_inputs_match

    def counted(*args: Any) -> Any:
        seen.append(args)
        return real(*args)

    monkeypatch.setattr(unlift, "_check_inputs_match", counted)
    return seen


def _exported(module: nn.Module, *example: torch.Tensor) -> nn.Module:
    batch = torch.export.Dim("batch")
    shapes = tuple({0: batch} for _ in example)
    return torch.export.export(module.eval(), example, dynamic_shapes=shapes).module()


def test_the_lifted_graph_gives_the_modules_outputs_and_checks_each_new_signature_once(
    saved_digits_cnn: Saved, digits_batch: np.ndarray, checks: list[object]
) -> None:
    module = load_model(saved_digits_cnn("model.pt2")).module
    assert module is not None
    checks.clear()  # saving checks the stored examples against the signature too
    lifted = lift_weights(module)
    assert isinstance(lifted, LiftedGraph)
    x = torch.from_numpy(digits_batch)
    with torch.inference_mode():
        expected = module(x)
        assert len(checks) == 1
        for _ in range(3):
            torch.testing.assert_close(lifted(x), expected, rtol=0, atol=0)
        assert len(checks) == 2  # the first call went through the module, the rest did not
        torch.testing.assert_close(lifted(x[:3]), module(x[:3]), rtol=0, atol=0)
        assert len(checks) == 4  # a new batch size is checked again
        with pytest.raises(AssertionError, match="Guard failed"):
            lifted(x[:, :, :7])  # torch's shape guards still refuse a wrong shape


def test_the_predictor_runs_exported_models_lifted(
    saved_digits_cnn: Saved, digits_batch: np.ndarray, checks: list[object]
) -> None:
    model = load_model(saved_digits_cnn("model.pt2"))
    predict = predictor_for(model)
    first = predict(digits_batch)
    np.testing.assert_array_equal(predict(digits_batch), first)
    assert len(checks) == 1


class _Structured(nn.Module):
    """Two inputs and nested outputs: the lifted graph must give back the same structure."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(3, 4)
        self.b = nn.Sequential(nn.Linear(5, 4), nn.ReLU())
        self.register_buffer("offset", torch.arange(4.0))

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> dict[str, Any]:
        left = self.a(a) + self.offset
        return {"sum": left + self.b(b), "parts": (left, self.b(b))}


def test_nested_outputs_and_several_inputs_keep_their_structure() -> None:
    torch.manual_seed(0)
    a, b = torch.randn(6, 3), torch.randn(6, 5)
    module = _exported(_Structured(), a, b)
    lifted = lift_weights(module)
    assert lifted is not None
    with torch.inference_mode():
        lifted(a, b)
        got, expected = lifted(a, b), module(a, b)
    assert set(got) == {"sum", "parts"} and isinstance(got["parts"], tuple)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


class _Keyword(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(3, 2)

    def forward(self, x: torch.Tensor, *, scale: torch.Tensor) -> torch.Tensor:
        return self.linear(x) * scale  # type: ignore[no-any-return]


def test_other_modules_are_left_to_run_as_they_are(tmp_path: Path) -> None:
    linear = nn.Linear(3, 2).eval()
    assert lift_weights(linear) is None  # eager
    script = load_model(save_torch(linear, (torch.zeros(2, 3),), tmp_path / "model.pt"))
    assert script.module is not None and lift_weights(script.module) is None  # TorchScript
    keyword = torch.export.export(
        _Keyword().eval(), (torch.zeros(2, 3),), {"scale": torch.ones(2, 2)}
    ).module()
    assert lift_weights(keyword) is None  # keyword inputs: the predictor passes positionals


def test_sparse_layers_run_lifted_with_direct_kernel_calls_in_inference_mode(
    tmp_path: Path,
) -> None:
    """Sparse layers' tensors go in as arguments too; under inference_mode each op is its
    CPU kernel called directly, elsewhere the op itself, so autograd still reaches x."""
    kernels = pytest.importorskip("kompaktor_kernels")
    torch.manual_seed(0)
    dense = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 8)).eval()
    with torch.no_grad():
        for layer in (dense[0], dense[2]):
            layer.weight.mul_(torch.rand_like(layer.weight) > 0.8)
    sparse = nn.Sequential(
        kernels.SparseLinear.from_dense(dense[0]),
        nn.ReLU(),
        kernels.SparseLinear.from_dense(dense[2], dtype=torch.int8),
    )
    path = save_torch(sparse, (torch.zeros(2, 16),), tmp_path / "model.pt2")
    module = load_model(path).module
    assert module is not None
    lifted = lift_weights(module)
    assert lifted is not None and len(lifted.weights) == 10  # fp32: 4 tensors, int8: 6

    def targets(graph: torch.fx.GraphModule) -> set[object]:
        return {node.target for node in graph.graph.nodes if node.op == "call_function"}

    ops = torch.ops.kompaktor_kernels
    for op in (ops.sparse_linear.default, ops.sparse_linear_int8.default):
        assert op in targets(lifted.graph) and op not in targets(lifted.eager)
        assert kernels.EAGER_CPU_KERNELS[op] in targets(lifted.eager)

    x = torch.randn(5, 16, requires_grad=True)
    with torch.inference_mode():
        lifted(x)
        torch.testing.assert_close(lifted(x), module(x), rtol=0, atol=0)
    lifted(x).sum().backward()  # the dispatcher's graph, with the op's autograd
    assert x.grad is not None and x.grad.abs().sum() > 0
