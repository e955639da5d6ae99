"""What the stages report of a graph's cost counts every layer that multiplies by a weight:
conv1d, conv3d and grouped convolutions were left out of `multiply_adds`, and a loaded
conv1d-only graph was exported again instead of used as it is."""

from __future__ import annotations

import torch
from torch import nn

from kompaktor.surgery import as_graph_module, multiply_adds


class Sequence1d(nn.Module):
    """A text/audio-style stack: no conv2d, no linear."""

    def __init__(self) -> None:
        super().__init__()
        self.wide = nn.Conv1d(4, 8, 5, padding=2)
        self.grouped = nn.Conv1d(8, 8, 3, stride=2, groups=4)
        self.volume = nn.Conv3d(1, 2, (1, 3, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.grouped(self.wide(x))  # [b, 8, 15]
        return self.volume(y[:, None, :, :, None]).flatten(1)


def test_multiply_adds_count_conv1d_grouped_and_conv3d_layers() -> None:
    example = (torch.randn(3, 4, 32),)
    gm = as_graph_module(Sequence1d().eval(), example)
    wide = 8 * 32 * (4 * 5)  # outputs x weights per output
    grouped = 8 * 15 * (2 * 3)  # each output sees its group's 2 inputs x 3 taps
    volume = 2 * (8 * 13 * 1) * (1 * 1 * 3 * 1)
    assert multiply_adds(gm, example) == wide + grouped + volume


def test_an_exported_conv1d_graph_is_used_as_it_is() -> None:
    example = (torch.randn(2, 4, 32),)
    gm = torch.export.export(Sequence1d().eval(), example).module()
    assert as_graph_module(gm, example) is gm
