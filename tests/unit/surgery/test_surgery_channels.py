"""Channel surgery is exact: removing channels equals zeroing what they feed, and re-exports."""

from __future__ import annotations

import copy

import torch
from torch import nn

from kompaktor.surgery import (
    as_graph_module,
    channel_groups,
    keep_top,
    multiply_adds,
    output_layers,
    remove_channels,
    sparsity_schedule,
    width_reduce,
)


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(1, 16, 3, padding=1)
        self.c2 = nn.Conv2d(16, 32, 3, padding=1)
        self.bn = nn.BatchNorm2d(32)
        self.f = nn.Linear(32 * 16, 64)
        self.o = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.c1(x))
        x = nn.functional.max_pool2d(torch.relu(self.bn(self.c2(x))), 2)
        return self.o(torch.relu(self.f(x.view(x.shape[0], -1))))


class Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(8, 8)
        self.b = nn.Linear(8, 8)
        self.o = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.o(torch.relu(self.b(torch.relu(self.a(x))) + x))


def net() -> nn.Module:
    torch.manual_seed(0)
    model = Net().eval()
    with torch.no_grad():  # non-trivial batch-norm statistics
        model.bn.running_mean.normal_()
        model.bn.running_var.uniform_(0.5, 2.0)
    return model


def test_groups_follow_batch_norm_pooling_and_flatten() -> None:
    example = (torch.randn(4, 1, 8, 8),)
    gm = as_graph_module(net(), example)
    groups = channel_groups(gm, example)
    assert set(groups) == {"c1", "c2", "f"}
    assert groups["c2"].followers == ["bn.weight", "bn.bias", "bn.running_mean", "bn.running_var"]
    assert groups["c2"].consumers == {"f.weight": 16}
    assert output_layers(gm) == {"o"}


def test_removing_channels_equals_zeroing_their_consumers_inputs() -> None:
    example = (torch.randn(4, 1, 8, 8),)
    gm = as_graph_module(net(), example)
    groups = channel_groups(gm, example)
    keep = {n: keep_top(torch.rand(g.channels), g.channels // 3) for n, g in groups.items()}
    masked = copy.deepcopy(gm)
    with torch.no_grad():
        for name, group in groups.items():
            dropped = torch.ones(group.channels, dtype=torch.bool)
            dropped[keep[name]] = False
            for target, per in group.consumers.items():
                masked.get_parameter(target)[:, dropped.repeat_interleave(per)] = 0
    before = sum(p.numel() for p in gm.parameters())
    assert remove_channels(gm, groups, keep) == sum(
        g.channels - len(keep[n]) for n, g in groups.items()
    )
    x = torch.randn(9, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(gm(x), masked(x), rtol=1e-5, atol=1e-5)
        assert gm(x).abs().sum() > 0
    assert sum(p.numel() for p in gm.parameters()) < 0.2 * before
    program = torch.export.export(gm, example, dynamic_shapes=({0: torch.export.Dim.AUTO},))
    with torch.no_grad():
        torch.testing.assert_close(program.module()(x), masked(x), rtol=1e-5, atol=1e-5)


def test_width_reduce_keeps_the_largest_filters_and_cuts_multiply_adds() -> None:
    example = (torch.randn(2, 1, 8, 8),)
    model = net()
    thin, removed = width_reduce(model, 0.5, example)
    assert removed == 8 + 16 + 32
    l1 = model.c1.weight.abs().flatten(1).sum(1)
    kept = torch.topk(l1, 8).indices.sort().values
    torch.testing.assert_close(thin.c1.weight, model.c1.weight[kept])
    assert multiply_adds(thin, example) < 0.4 * multiply_adds(
        as_graph_module(model, example), example
    )


def test_residual_additions_pin_the_channels() -> None:
    example = (torch.randn(2, 8),)
    gm = as_graph_module(Residual(), example)
    assert set(channel_groups(gm, example)) == {"a"}  # b feeds an add, o is the output


def test_sparsity_schedule_ends_at_the_target() -> None:
    assert sparsity_schedule(0.8, 1) == [0.8]
    cubic, linear = sparsity_schedule(0.8, 4), sparsity_schedule(0.8, 4, "linear")
    assert cubic[-1] == linear[-1] == 0.8
    assert cubic[0] > linear[0] and cubic == sorted(cubic)
