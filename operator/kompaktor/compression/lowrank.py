"""Replace conv/linear layers of an exported graph by two thinner ones (truncated SVD).

W (out × in) ≈ (U_r √S_r)(√S_r V_rᵀ): a linear layer becomes linear(in → r) then
linear(r → out); a k×k convolution becomes a k×k convolution with r filters then a 1×1
convolution. A layer is replaced only where r·(in + out) < in·out, i.e. where it saves
parameters; the graph is edited in place, so it re-exports with torch.export as is.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import fx, nn

from kompaktor.surgery.graph import fetch_tensor

aten = torch.ops.aten
_LINEAR, _CONV = aten.linear.default, aten.conv2d.default
#: conv2d with padding "same" or "valid": a string, so another overload.
_CONV_NAMED_PADDING = aten.conv2d.padding
_CONVS = frozenset({_CONV, _CONV_NAMED_PADDING})


@dataclass(frozen=True)
class Factorized:
    """What happened to one layer: its rank, full rank, and the share of energy kept."""

    layer: str
    rank: int
    full_rank: int
    energy_kept: float
    replaced: bool


RankRule = Callable[[str, torch.Tensor, int, int], int]


def choose_rank(
    singular: torch.Tensor,
    rows: int,
    cols: int,
    *,
    energy: float | None = None,
    ratio: float | None = None,
    rank: int | None = None,
) -> int:
    """The rank to keep: explicit, the smallest reaching `energy` of Σσ², or the largest whose
    two factors hold at most `ratio` of the layer's parameters (at least 1)."""
    if rank is not None:
        return rank
    if ratio is not None:
        return max(1, math.floor(ratio * rows * cols / (rows + cols)))
    squares = singular.double() ** 2
    cumulative = torch.cumsum(squares, 0) / squares.sum().clamp(min=1e-30)
    target = 1.0 if energy is None else energy
    return (
        int(torch.searchsorted(cumulative, torch.tensor(target - 1e-9, dtype=cumulative.dtype))) + 1
    )


def factorize(
    gm: fx.GraphModule,
    *,
    energy: float | None = None,
    ratio: float | None = None,
    rank: int | None = None,
    skip: Sequence[str] = (),
) -> list[Factorized]:
    """Factorize every plain conv2d (groups=1) and linear call whose weight is a parameter.

    ValueError naming the layer when an explicit `rank` exceeds its full rank."""
    report = []
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or (node.target != _LINEAR and node.target not in _CONVS):
            continue
        weight_node = node.args[1]
        if not (isinstance(weight_node, fx.Node) and weight_node.op == "get_attr"):
            continue
        if node.target in _CONVS and _arg(node, 6, "groups", 1) != 1:
            continue
        if len(weight_node.users) != 1:
            continue  # a tied weight stays whole
        layer = str(weight_node.target).removesuffix(".weight")
        if any(fnmatch.fnmatchcase(layer, pattern) for pattern in skip):
            continue
        weight = fetch_tensor(gm, str(weight_node.target)).detach()
        matrix = weight.reshape(weight.shape[0], -1)
        rows, cols = matrix.shape
        full = min(rows, cols)
        if rank is not None and rank > full:
            raise ValueError(
                f"params.rank: {rank} is larger than layer {layer}'s full rank {full} "
                f"(min of its {rows} outputs and {cols} inputs); lower it or skip the layer"
            )
        u, s, vh = torch.linalg.svd(matrix.double(), full_matrices=False)
        r = min(choose_rank(s, rows, cols, energy=energy, ratio=ratio, rank=rank), full)
        kept = float((s[:r] ** 2).sum() / (s**2).sum().clamp(min=1e-30))
        replaced = r * (rows + cols) < rows * cols
        if replaced:
            root = s[:r].sqrt()
            first = (root[:, None] * vh[:r]).to(weight.dtype)
            second = (u[:, :r] * root[None, :]).to(weight.dtype)
            _rewrite(gm, node, weight_node, first.reshape(r, *weight.shape[1:]), second)
        report.append(Factorized(layer, r, full, kept, replaced))
    gm.graph.eliminate_dead_code()
    gm.recompile()
    return report


def _rewrite(
    gm: fx.GraphModule,
    node: fx.Node,
    weight_node: fx.Node,
    first: torch.Tensor,
    second: torch.Tensor,
) -> None:
    """node(x, W, b, ...) → node(node(x, A), B, b): A and B replace W in W's holder."""
    target = str(weight_node.target)
    owner_path, _, leaf = target.rpartition(".")
    owner = gm.get_submodule(owner_path) if owner_path else gm
    prefix = f"{owner_path}." if owner_path else ""
    delattr(owner, leaf)
    owner.register_parameter(f"{leaf}_low", nn.Parameter(first.contiguous()))
    if node.target in _CONVS:
        second = second[:, :, None, None]
    owner.register_parameter(f"{leaf}_up", nn.Parameter(second.contiguous()))
    graph = gm.graph
    with graph.inserting_before(node):
        low = graph.get_attr(f"{prefix}{leaf}_low")
        up = graph.get_attr(f"{prefix}{leaf}_up")
        if node.target == _LINEAR:
            hidden = graph.call_function(_LINEAR, (node.args[0], low))
        else:
            spatial: tuple[Any, ...] = (
                _arg(node, 3, "stride", [1, 1]),
                _arg(node, 4, "padding", [0, 0] if node.target == _CONV else "valid"),
                _arg(node, 5, "dilation", [1, 1]),
            )
            conv = _CONV if node.target == _CONV else _CONV_NAMED_PADDING  # same overload
            hidden = graph.call_function(conv, (node.args[0], low, None, *spatial, 1))
    bias = _arg(node, 2, "bias", None)
    pointwise: tuple[Any, ...] = () if node.target == _LINEAR else ([1, 1], [0, 0], [1, 1], 1)
    node.target = _LINEAR if node.target == _LINEAR else _CONV  # the 1×1 conv pads nothing
    node.args = (hidden, up, bias, *pointwise)
    node.kwargs = {}
    graph.erase_node(weight_node)


def _arg(node: fx.Node, index: int, name: str, default: Any) -> Any:
    if len(node.args) > index:
        return node.args[index]
    return node.kwargs.get(name, default)
