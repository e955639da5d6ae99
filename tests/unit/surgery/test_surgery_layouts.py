"""chain_sparse_layouts: which sparse layers of an exported graph hand on feature-major outputs,
and that the graph computes the same, exports and reloads with those layouts."""

from __future__ import annotations

import io

import pytest
import torch
import torch.nn.functional as F
from torch import fx, nn

from kompaktor.models.lifted import lift_weights
from kompaktor.surgery import chain_sparse_layouts, linear_modules

kk = pytest.importorskip("kompaktor_kernels")


class Net(nn.Module):
    """a → relu → b → gelu → c → relu → d (dense) and e, whose output an add reads."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c = nn.Linear(64, 128), nn.Linear(128, 96), nn.Linear(96, 48)
        self.d, self.e = nn.Linear(48, 10), nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.gelu(self.b(torch.relu(self.a(x))))
        return self.d(torch.relu(self.c(h))) + self.e(x)


def sparse_graph(model: nn.Module, example: torch.Tensor) -> fx.GraphModule:
    """The graph prune's `runtime: sparse` makes: every layer but d at 90 % zeros, on the
    kernels."""
    with torch.no_grad():
        for name, layer in model.named_children():
            if name != "d":
                layer.weight.mul_(torch.rand_like(layer.weight) >= 0.9)
    gm = torch.export.export(model.eval(), (example,)).module()
    linear_modules(gm)
    swapped = kk.sparsify(gm, min_sparsity=0.8)
    assert isinstance(swapped, fx.GraphModule)
    return swapped


def output_strides(gm: fx.GraphModule, x: torch.Tensor) -> dict[str, tuple[int, ...]]:
    strides: dict[str, tuple[int, ...]] = {}
    for name in ("a", "b", "c", "e"):
        gm.get_submodule(name).register_forward_hook(
            lambda _m, _i, y, name=name: strides.__setitem__(name, y.stride())
        )
    gm(x)
    return strides


def test_layers_feeding_only_sparse_layers_hand_on_feature_major_outputs() -> None:
    """a and b reach only sparse inputs (through relu and gelu); c feeds a dense layer, e an
    add: they keep contiguous outputs. Same values as before, through export and reload (to
    gelu's rounding: its vector and scalar loops differ in the last bit, and the layout moves
    which elements take which)."""
    torch.manual_seed(0)
    x = torch.randn(32, 64)
    gm = sparse_graph(Net(), x)
    with torch.inference_mode():
        before = gm(x)
    assert chain_sparse_layouts(gm) == ["a", "b"]
    assert [gm.get_submodule(n).feature_major_out for n in "abce"] == [True, True, False, False]
    with torch.inference_mode():
        strides = output_strides(gm, x)
        torch.testing.assert_close(gm(x), before, rtol=1e-6, atol=1e-7)
    assert strides == {"a": (1, 32), "b": (1, 32), "c": (48, 1), "e": (10, 1)}
    buffer = io.BytesIO()
    torch.export.save(torch.export.export(gm, (x,)), buffer)
    buffer.seek(0)
    program = torch.export.load(buffer)
    calls = [n for n in program.graph.nodes if "kompaktor_kernels" in str(n.target)]
    assert [n.args[-1] for n in calls] == [True, True, False, False]
    lifted = lift_weights(program.module())  # how predictors run it: the kernels called directly
    assert lifted is not None
    with torch.inference_mode():
        torch.testing.assert_close(program.module()(x), before, rtol=1e-6, atol=1e-7)
        for _ in range(2):  # the first call per signature goes through the module
            torch.testing.assert_close(lifted(x), before, rtol=1e-6, atol=1e-7)


def test_a_clone_to_contiguous_memory_breaks_the_chain() -> None:
    """A clone keeps the layout (b hands c its sums feature-major through it), but a clone to
    the contiguous format would transpose a's feature-major sums itself, so a keeps its
    contiguous y. Same values either way."""

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b, self.c = nn.Linear(64, 96), nn.Linear(96, 80), nn.Linear(80, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = torch.relu(self.a(x)).clone(memory_format=torch.contiguous_format)
            return self.c(torch.relu(self.b(h)).clone())

    torch.manual_seed(0)
    x = torch.randn(16, 64)
    gm = sparse_graph(Net(), x)
    clones = [n.kwargs for n in gm.graph.nodes if n.target == torch.ops.aten.clone.default]
    assert clones == [{"memory_format": torch.contiguous_format}, {}]
    with torch.inference_mode():
        before = gm(x)
    assert chain_sparse_layouts(gm) == ["b"]
    with torch.inference_mode():
        torch.testing.assert_close(gm(x), before, rtol=1e-6, atol=1e-7)


def test_layers_on_token_inputs_chain_too() -> None:
    """[batch, tokens, features] activations chain as [batch, features] ones do: the lanes are
    every (batch, token) pair. The last layer returns the contiguous y."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 32))
    x = torch.randn(4, 5, 64)
    with torch.no_grad():
        for layer in (model[0], model[2]):
            layer.weight.mul_(torch.rand_like(layer.weight) >= 0.9)
    gm = torch.export.export(model.eval(), (x,)).module()
    linear_modules(gm)
    gm = kk.sparsify(gm)
    with torch.inference_mode():
        before = gm(x)
    assert chain_sparse_layouts(gm) == ["0"]
    strides: list[tuple[int, ...]] = []
    gm.get_submodule("2").register_forward_pre_hook(
        lambda _m, args: strides.append(args[0].stride())
    )
    with torch.inference_mode():
        y = gm(x)
    assert strides == [(5, 1, 20)]  # "2" reads [128 features][4 × 5 lanes] through the ReLU
    assert y.is_contiguous()
    torch.testing.assert_close(y, before, rtol=0, atol=0)


def test_a_layer_called_twice_chains_only_if_both_calls_do() -> None:
    """One SparseLinear called at two sites (a symbolically traced model: an export's graph
    keeps shared layers dense), one feeding a sparse layer, one the output: a feature-major y
    at either would reach the output, so it keeps contiguous y. Called once, it chains."""
    from torch.fx.passes.shape_prop import ShapeProp

    class Net(nn.Module):
        def __init__(self, twice: bool) -> None:
            super().__init__()
            dense = [nn.Linear(64, 64) for _ in range(2)]
            with torch.no_grad():
                for layer in dense:
                    layer.weight.mul_(torch.rand_like(layer.weight) >= 0.9)
            self.a, self.b = (kk.SparseLinear.from_dense(layer) for layer in dense)
            self.twice = twice

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.b(self.a(x))  # (torch.relu here would be torch's, not the aten op)
            return y + self.a(x) if self.twice else y

    class Tracer(fx.Tracer):
        def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
            return isinstance(m, kk.SparseLinear) or super().is_leaf_module(m, qualname)

    torch.manual_seed(0)
    x = torch.randn(8, 64)
    for twice, chained in ((True, []), (False, ["a"])):
        net = Net(twice)
        gm = fx.GraphModule(net, Tracer().trace(net))
        ShapeProp(gm).propagate(x)
        assert chain_sparse_layouts(gm) == chained
        with torch.inference_mode():
            assert gm(x).is_contiguous()
