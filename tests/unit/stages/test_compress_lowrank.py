"""Low rank computes exactly what the truncated SVD of each weight computes, whatever the
convolution's stride, padding (numbers, "same", "valid") and dilation, with the layer's bias
kept; before, convolutions with string padding were silently never factorized."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from kompaktor.compression import factorize
from kompaktor.surgery import as_graph_module, stored_elements


class ConvNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.same = nn.Conv2d(8, 24, 3, padding="same", bias=False)
        self.strided = nn.Conv2d(24, 32, 3, stride=2, padding=2, dilation=2)
        self.valid = nn.Conv2d(32, 32, 3, padding="valid")
        self.fc = nn.Linear(32 * 2 * 2, 48)
        self.head = nn.Linear(48, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.valid(torch.relu(self.strided(torch.relu(self.same(x))))))
        out: torch.Tensor = self.head(torch.relu(self.fc(x.flatten(1))))
        return out


def truncated(weight: torch.Tensor, rank: int) -> torch.Tensor:
    """The best rank-`rank` approximation of a weight (as a matrix of its output rows)."""
    u, s, vh = torch.linalg.svd(weight.reshape(len(weight), -1).double(), full_matrices=False)
    return ((u[:, :rank] * s[:rank]) @ vh[:rank]).reshape(weight.shape).to(weight.dtype)


@pytest.mark.parametrize("rank", [1, 4])
def test_each_factorized_layer_computes_its_truncated_svd(rank: int) -> None:
    torch.manual_seed(0)
    model, x = ConvNet().eval(), torch.randn(5, 8, 8, 8)
    gm = as_graph_module(copy.deepcopy(model), (x,))
    before = stored_elements(gm)
    layers = factorize(gm, rank=rank)
    assert [(f.layer, f.replaced) for f in layers] == [
        (name, True) for name in ("same", "strided", "valid", "fc", "head")
    ]
    assert stored_elements(gm) < before
    reference = copy.deepcopy(model)
    with torch.no_grad():
        for name in ("same", "strided", "valid", "fc", "head"):
            weight = reference.get_parameter(f"{name}.weight")
            weight.copy_(truncated(weight, rank))
        expected = reference(x)
        torch.testing.assert_close(gm(x), expected, rtol=1e-5, atol=1e-5)
        program = torch.export.export(  # the rewritten graph exports, batch size free
            gm, (x,), dynamic_shapes=({0: torch.export.Dim.AUTO},)
        )
        torch.testing.assert_close(program.module()(x[:3]), expected[:3], rtol=1e-5, atol=1e-5)
