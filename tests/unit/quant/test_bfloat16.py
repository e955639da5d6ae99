"""to_bfloat16 on graphs that make float32 tensors themselves: creation ops with a float32
dtype, casts to float32 and constants export lifts out of `forward` all become bfloat16, so they
never meet bf16 weights in one op; integer dtypes stay."""

from __future__ import annotations

import torch
from torch import fx, nn

from kompaktor.quant.bfloat16 import to_bfloat16


class MakesTensors(nn.Module):
    """Every way a forward pass makes a float32 tensor of its own, each one feeding a linear
    layer (the op that fails on mixed dtypes)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n = x.shape[0]
        made = (
            torch.ones(n, 4)
            + torch.full((n, 4), 0.5)
            + torch.zeros(n, 4, dtype=torch.float32)
            + x.new_zeros(n, 4, dtype=torch.float32)
            + torch.arange(4, dtype=torch.float32) / 8
            + torch.tensor([0.25, 0.5, 0.75, 1.0])  # a constant export lifts
        )
        steps = torch.arange(4)  # int64: must stay an integer
        out: torch.Tensor = self.fc(x + made) + self.fc(steps.float().expand(n, 4))
        return out, steps * n


def exported(module: nn.Module) -> fx.GraphModule:
    example = (torch.randn(4, 4),)
    program = torch.export.export(
        module.eval(), example, dynamic_shapes=({0: torch.export.Dim.AUTO},)
    )
    return program.module()  # type: ignore[return-value]


def test_tensors_the_graph_makes_are_bfloat16_and_integers_stay() -> None:
    torch.manual_seed(0)
    gm = exported(MakesTensors())
    converted = to_bfloat16(gm)
    x = torch.randn(5, 4)
    with torch.no_grad():
        (out, steps), (exact, exact_steps) = converted(x), gm(x)
    assert out.dtype == torch.float32 and steps.dtype == torch.int64
    assert torch.equal(steps, exact_steps)
    assert float((out - exact).abs().max()) <= 0.02 * float(exact.abs().max())
    aten = torch.ops.aten
    made = {aten.ones.default, aten.full.default, aten.zeros.default, aten.new_zeros.default}
    creations = [n for n in converted.graph.nodes if n.target in made]
    assert len(creations) == 4  # torch's default dtype (ones, full) made explicit too
    assert all(n.kwargs["dtype"] is torch.bfloat16 for n in creations)
    # the only float32 left is the cast of the float output back up
    outputs = next(n for n in converted.graph.nodes if n.op == "output").args[0]
    float32 = [
        n
        for n in converted.graph.nodes
        if torch.float32 in (*n.args, *n.kwargs.values())  # explicit dtypes, and `.float()`
    ]
    assert float32 == [outputs[0]]
    constants = [t for t in converted.state_dict().values() if t.is_floating_point()]
    assert constants and all(t.dtype == torch.bfloat16 for t in constants)


def test_the_original_graph_is_left_as_it_was() -> None:
    gm = exported(MakesTensors())
    before = str(gm.graph)
    to_bfloat16(gm)
    assert str(gm.graph) == before
    assert all(t.dtype != torch.bfloat16 for t in gm.state_dict().values())
