"""Low rank on conv1d, grouped and 3-d convolutions: each becomes a conv with r filters per
group (same kernel, stride, padding, dilation, groups) then a grouped pointwise conv, computing
exactly what the per-group truncated SVD of its weight computes; depthwise convolutions and
layers where the rank saves nothing stay whole and say why. Before, conv1d/conv3d and every
grouped convolution were silently left as they were, and left out of the report."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.nn.modules.conv import _ConvNd

from kompaktor.compression import choose_rank, factorize
from kompaktor.models import load_model, save_torch
from kompaktor.surgery import as_graph_module, stored_elements

_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


def per_group_svd(weight: torch.Tensor, groups: int) -> tuple[torch.Tensor, ...]:
    """U, S, Vᵀ of each group's block of the weight (out/g × in/g·∏k)."""
    blocks = weight.detach().double().reshape(groups, len(weight) // groups, -1)
    return tuple(torch.linalg.svd(blocks, full_matrices=False))


def truncated(weight: torch.Tensor, groups: int, rank: int) -> torch.Tensor:
    """The best rank-`rank` approximation of each group's block of a weight."""
    u, s, vh = per_group_svd(weight, groups)
    blocks = (u[:, :, :rank] * s[:, None, :rank]) @ vh[:, :rank]
    return blocks.reshape(weight.shape).to(weight.dtype)


def low_rank_(weight: torch.Tensor, groups: int, rank: int) -> None:
    """Make each group's block of `weight` exactly of rank `rank` (in place)."""
    with torch.no_grad():
        weight.copy_(truncated(weight, groups, rank))


def export(gm: fx.GraphModule, x: torch.Tensor) -> nn.Module:
    """The edited graph re-exported with a free batch size, as a later stage would."""
    program = torch.export.export(gm, (x,), dynamic_shapes=({0: torch.export.Dim.AUTO},))
    return program.module()


class Conv1dNet(nn.Module):
    """A text/audio-style conv1d stack: "same", strided+dilated, grouped, "valid", a head."""

    def __init__(self) -> None:
        super().__init__()
        self.same = nn.Conv1d(6, 24, 5, padding="same")
        self.strided = nn.Conv1d(24, 32, 3, stride=2, padding=2, dilation=2, bias=False)
        self.grouped = nn.Conv1d(32, 32, 3, padding=1, groups=2)
        self.valid = nn.Conv1d(32, 32, 3, padding="valid")
        self.head = nn.Linear(32 * 8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.strided(torch.relu(self.same(x))))
        x = torch.relu(self.valid(torch.relu(self.grouped(x))))
        out: torch.Tensor = self.head(x.flatten(1))
        return out


_CONV1D_GROUPS = {"same": 1, "strided": 1, "grouped": 2, "valid": 1, "head": 1}


def test_exactly_low_rank_conv1d_weights_are_rebuilt_at_full_energy(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model, x = Conv1dNet().eval(), torch.randn(5, 6, 20)
    for name, groups in _CONV1D_GROUPS.items():
        low_rank_(model.get_parameter(f"{name}.weight"), groups, 2)
    gm = as_graph_module(copy.deepcopy(model), (x,))
    before = stored_elements(gm)
    layers = factorize(gm, energy=1.0)
    assert [(f.layer, f.rank, f.groups, f.replaced) for f in layers] == [
        (name, 2, groups, True) for name, groups in _CONV1D_GROUPS.items()
    ]
    assert all(f.energy_kept == pytest.approx(1.0, abs=1e-9) for f in layers)
    assert stored_elements(gm) < 0.3 * before
    with torch.no_grad():
        expected = model(x)
        torch.testing.assert_close(gm(x), expected, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(export(gm, x)(x[:2]), expected[:2], rtol=1e-4, atol=1e-5)
        saved = load_model(save_torch(gm, (x,), tmp_path / "conv1d.pt2")).module
        assert saved is not None
        torch.testing.assert_close(saved(x), expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("rank", [1, 3])
def test_conv1d_at_a_lower_rank_computes_each_truncated_svd(rank: int) -> None:
    torch.manual_seed(1)
    model, x = Conv1dNet().eval(), torch.randn(5, 6, 20)
    gm = as_graph_module(copy.deepcopy(model), (x,))
    before = stored_elements(gm)
    layers = factorize(gm, rank=rank)
    assert all(f.replaced and f.reason is None for f in layers)
    assert stored_elements(gm) < 0.5 * before
    reference = copy.deepcopy(model)
    with torch.no_grad():
        for name, groups in _CONV1D_GROUPS.items():
            low_rank_(reference.get_parameter(f"{name}.weight"), groups, rank)
        expected = reference(x)
        torch.testing.assert_close(gm(x), expected, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(export(gm, x)(x[:3]), expected[:3], rtol=1e-5, atol=1e-5)
        assert not torch.allclose(gm(x), model(x), rtol=1e-3, atol=1e-3)  # it did truncate


# One convolution each; the error of its rank-r replacement is bounded by what was dropped.
SINGLE: dict[str, tuple[Callable[[], _ConvNd], tuple[int, ...]]] = {
    "conv1d": (lambda: nn.Conv1d(6, 16, 5, padding=2), (4, 6, 30)),
    "conv1d-grouped-strided": (
        lambda: nn.Conv1d(8, 16, 3, stride=2, padding=1, dilation=2, groups=2),
        (4, 8, 30),
    ),
    "conv2d-groups2-strided": (
        lambda: nn.Conv2d(8, 16, 3, stride=2, padding=2, dilation=2, groups=2),
        (3, 8, 12, 12),
    ),
    "conv2d-groups4-same": (lambda: nn.Conv2d(16, 32, 3, padding="same", groups=4), (3, 16, 9, 9)),
    "conv2d-groups4-valid": (
        lambda: nn.Conv2d(16, 16, (3, 5), padding="valid", groups=4, bias=False),
        (3, 16, 9, 9),
    ),
    "conv3d-groups2": (lambda: nn.Conv3d(4, 12, 3, padding=1, groups=2), (2, 4, 5, 5, 5)),
}


@pytest.mark.parametrize("case", list(SINGLE))
def test_a_factorized_convolution_is_its_per_group_truncated_svd(case: str) -> None:
    make, shape = SINGLE[case]
    torch.manual_seed(2)
    conv, x = make().eval(), torch.randn(*shape)
    model = nn.Sequential(conv)
    gm = as_graph_module(copy.deepcopy(model), (x,))
    rank, groups = 2, conv.groups
    (layer,) = factorize(gm, rank=rank)
    assert (layer.layer, layer.rank, layer.groups, layer.replaced) == ("0", rank, groups, True)
    out_per_group, cols = conv.out_channels // groups, math.prod(conv.weight.shape[1:])
    assert layer.full_rank == min(out_per_group, cols)
    assert stored_elements(gm) == groups * rank * (out_per_group + cols) + (
        0 if conv.bias is None else conv.out_channels
    )
    dims = x.dim() - 2
    with torch.no_grad():
        got, exact = gm(x), model(x)
        reference = _CONV[dims](
            x,
            truncated(conv.weight, groups, rank),
            conv.bias,
            conv.stride,
            conv.padding,
            conv.dilation,
            groups,
        )
        torch.testing.assert_close(got, reference, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(export(gm, x)(x[:1]), reference[:1], rtol=1e-5, atol=1e-5)
    # Each output position is W·patch; every input value is in at most ∏k patches, so
    # ‖ΔY‖ ≤ max over groups of σ_{r+1} · √∏k · ‖x‖.
    _, s, _ = per_group_svd(conv.weight, groups)
    window = math.prod(conv.kernel_size)
    bound = float(s[:, rank].max()) * math.sqrt(window) * float(x.norm())
    error = float((got - exact).norm())
    assert 0.05 * bound < error <= 1.0001 * bound


def test_grouped_and_depthwise_convolutions_in_one_model(tmp_path: Path) -> None:
    """A MobileNet-style block: grouped convs are factorized per group, the depthwise one stays
    whole with its reason, and the model still matches its per-group truncation after a
    save/load round trip."""
    model = nn.Sequential(
        nn.Conv2d(8, 32, 3, stride=2, padding=1, dilation=1, groups=2),
        nn.ReLU(),
        nn.Conv2d(32, 32, 3, padding=1, groups=32),  # depthwise
        nn.ReLU(),
        nn.Conv2d(32, 32, 3, padding="same", dilation=2, groups=4),
    ).eval()
    torch.manual_seed(3)
    for module in model:
        if isinstance(module, nn.Conv2d):
            nn.init.normal_(module.weight)
    x = torch.randn(3, 8, 10, 10)
    gm = as_graph_module(copy.deepcopy(model), (x,))
    layers = factorize(gm, rank=3)
    assert [(f.layer, f.groups, f.replaced) for f in layers] == [
        ("0", 2, True),
        ("2", 32, False),
        ("4", 4, True),
    ]
    assert layers[1].reason is not None
    assert layers[1].reason.startswith("depthwise convolution: nothing to factorize")
    reference = copy.deepcopy(model)
    low_rank_(reference.get_parameter("0.weight"), 2, 3)
    low_rank_(reference.get_parameter("4.weight"), 4, 3)
    with torch.no_grad():
        expected = reference(x)
        torch.testing.assert_close(gm(x), expected, rtol=1e-5, atol=1e-4)
        saved = load_model(save_torch(gm, (x,), tmp_path / "grouped.pt2")).module
        assert saved is not None
        torch.testing.assert_close(saved(x[:2]), expected[:2], rtol=1e-5, atol=1e-4)


def test_one_rank_for_all_groups_keeps_the_energy_of_each() -> None:
    """Group 0 is of rank 1, group 1 of rank 3: at full energy both get rank 3, so neither
    group loses any of its weight (pooled energy would let the weaker group be truncated)."""
    torch.manual_seed(4)
    conv = nn.Conv1d(16, 32, 3, groups=2).eval()
    with torch.no_grad():
        conv.weight[:16].copy_(truncated(conv.weight[:16], 1, 1))
        conv.weight[16:].copy_(truncated(conv.weight[16:], 1, 3) * 0.01)  # little energy
    model, x = nn.Sequential(conv), torch.randn(4, 16, 12)
    gm = as_graph_module(copy.deepcopy(model), (x,))
    (layer,) = factorize(gm, energy=1.0)
    assert (layer.rank, layer.replaced) == (3, True)
    with torch.no_grad():
        torch.testing.assert_close(gm(x), model(x), rtol=1e-4, atol=1e-6)
    singular = per_group_svd(conv.weight, 2)[1]
    pooled = choose_rank(singular.flatten().sort(descending=True).values, 32, 48, energy=0.999)
    assert pooled == 1  # what 99.9 % of the groups' energy pooled would allow
    (layer,) = factorize(as_graph_module(copy.deepcopy(model), (x,)), energy=0.999)
    assert layer.rank == 3 and layer.energy_kept > 0.999  # what each group needs


def test_layers_left_whole_each_say_why() -> None:
    """Full energy on random weights saves nothing; skip patterns and tied weights are
    reported too, not dropped from the report."""
    torch.manual_seed(5)
    model = nn.Sequential(nn.Conv1d(4, 8, 3), nn.Conv1d(8, 8, 3, groups=8), nn.Conv1d(8, 6, 1))
    x = torch.randn(2, 4, 10)
    gm = as_graph_module(model.eval(), (x,))
    layers = {f.layer: f for f in factorize(gm, energy=1.0, skip=["2"])}
    assert not any(f.replaced for f in layers.values())
    assert layers["0"].reason == (
        "rank 8 saves no parameters: its two factors would hold 160 weights, the layer 96"
    )
    assert layers["1"].reason is not None and layers["1"].reason.startswith("depthwise")
    assert layers["2"].reason == "skipped by params.skip ('2')"


def test_a_tied_weight_is_reported_whole() -> None:
    class Tied(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv1d(8, 8, 3, padding=1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out: torch.Tensor = self.conv(torch.relu(self.conv(x)))
            return out

    x = torch.randn(2, 8, 10)
    gm = as_graph_module(Tied().eval(), (x,))
    layers = factorize(gm, rank=1)
    assert [(f.layer, f.replaced) for f in layers] == [("conv", False), ("conv", False)]
    assert all(f.reason is not None and f.reason.startswith("tied weight") for f in layers)


def test_a_rank_above_a_groups_full_rank_is_named() -> None:
    x = torch.randn(2, 8, 10)
    gm = as_graph_module(nn.Sequential(nn.Conv1d(8, 8, 3, groups=4)).eval(), (x,))
    with pytest.raises(ValueError, match=r"params\.rank: 3 is larger than layer 0's full rank 2 "):
        factorize(gm, rank=3)


def test_a_weight_computed_in_the_graph_is_reported_whole() -> None:
    class Scaled(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.weight = nn.Parameter(torch.randn(16, 8, 3))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return F.conv1d(x, self.weight * 2)

    x = torch.randn(2, 8, 10)
    gm = as_graph_module(Scaled().eval(), (x,))
    (layer,) = factorize(gm, rank=1)
    assert (layer.layer, layer.replaced, layer.full_rank) == ("conv1d", False, 16)
    assert layer.reason is not None and "computed in the graph" in layer.reason
