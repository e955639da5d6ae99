"""Replace conv/linear layers of an exported graph by two thinner ones (truncated SVD).

W (out × in) ≈ (U_r √S_r)(√S_r V_rᵀ): a linear layer becomes linear(in → r) then
linear(r → out); a convolution (1-, 2- or 3-d) with a k-wide kernel becomes one with the same
kernel, stride, padding and dilation and r filters, then a pointwise (1-wide) convolution. A
grouped convolution (g groups) is factorized group by group: r filters per group, the first
convolution grouped with g·r filters, the pointwise one grouped too. A layer is replaced only
where r·(in + out) < in·out per group, i.e. where it saves parameters; every layer left whole
is reported with the reason. The graph is edited in place, so it re-exports with torch.export.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import fx, nn

from kompaktor.surgery.graph import CONV_DIMS, CONV_OVERLOADS, fetch_tensor

aten = torch.ops.aten
_LINEAR = aten.linear.default


@dataclass(frozen=True)
class Factorized:
    """What happened to one layer: its rank and full rank (per group for a grouped
    convolution), the share of energy kept, and, for a layer left whole, why."""

    layer: str
    rank: int
    full_rank: int
    energy_kept: float
    replaced: bool
    reason: str | None = None
    groups: int = 1


_Pick = Callable[[torch.Tensor, int, int], int]


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
    """Factorize every linear and conv1d/2d/3d call (grouped or not) whose weight is a
    parameter where that saves parameters; report every one, with why where it stays whole.

    ValueError naming the layer when an explicit `rank` exceeds its full rank."""

    def pick(singular: torch.Tensor, rows: int, cols: int) -> int:
        return choose_rank(singular, rows, cols, energy=energy, ratio=ratio, rank=rank)

    report = [
        _factorize_layer(gm, node, pick, rank, skip)
        for node in list(gm.graph.nodes)
        if node.op == "call_function"
        and (node.target == _LINEAR or node.target in CONV_DIMS)
        and isinstance(node.args[1], fx.Node)  # always so in an exported graph
    ]
    gm.graph.eliminate_dead_code()
    gm.recompile()
    return report


@dataclass(frozen=True)
class _Layer:
    """One conv/linear call as the rewrite sees it: each of its `groups` blocks is a
    rows × cols matrix (outputs of the group × its inputs times the kernel's size)."""

    name: str
    node: fx.Node
    weight_node: fx.Node
    shape: torch.Size
    groups: int

    @property
    def rows(self) -> int:
        return self.shape[0] // self.groups

    @property
    def cols(self) -> int:
        return math.prod(self.shape[1:])

    @property
    def full_rank(self) -> int:
        return min(self.rows, self.cols)

    def whole(self, reason: str) -> Factorized:
        """The record of this layer left as it is: full rank, all its energy."""
        return Factorized(
            self.name, self.full_rank, self.full_rank, 1.0, False, reason, self.groups
        )


def _factorize_layer(
    gm: fx.GraphModule, node: fx.Node, pick: _Pick, rank: int | None, skip: Sequence[str]
) -> Factorized:
    """Replace one layer by its two factors where that saves parameters."""
    layer = _layer(gm, node)
    reason = _whole_reason(layer, skip)
    if reason is not None:
        return layer.whole(reason)
    rows, cols, groups = layer.rows, layer.cols, layer.groups
    if rank is not None and rank > layer.full_rank:
        per_group = f" per group of {groups}" if groups > 1 else ""
        raise ValueError(
            f"params.rank: {rank} is larger than layer {layer.name}'s full rank "
            f"{layer.full_rank} (min of its {rows} outputs and {cols} inputs{per_group}); "
            "lower it or skip the layer"
        )
    weight = fetch_tensor(gm, str(layer.weight_node.target)).detach()
    u, s, vh = torch.linalg.svd(weight.reshape(groups, rows, cols).double(), full_matrices=False)
    r = _group_rank(s, rows, cols, pick)
    kept = float((s[:, :r] ** 2).sum() / (s**2).sum().clamp(min=1e-30))
    if r * (rows + cols) >= rows * cols:
        reason = (
            f"rank {r} saves no parameters: its two factors would hold "
            f"{groups * r * (rows + cols)} weights, the layer {groups * rows * cols}"
        )
        return Factorized(layer.name, r, layer.full_rank, kept, False, reason, groups)
    root = s[:, :r].sqrt()
    first = (root[:, :, None] * vh[:, :r]).to(weight.dtype)  # groups × r × cols
    second = (u[:, :, :r] * root[:, None, :]).to(weight.dtype)  # groups × rows × r
    pointwise = (weight.shape[0], r, *[1] * (weight.dim() - 2))
    _rewrite(gm, layer, first.reshape(groups * r, *weight.shape[1:]), second.reshape(pointwise))
    return Factorized(layer.name, r, layer.full_rank, kept, True, None, groups)


def _layer(gm: fx.GraphModule, node: fx.Node) -> _Layer:
    weight_node = node.args[1]
    assert isinstance(weight_node, fx.Node)  # factorize only passes such calls
    groups = int(_arg(node, 6, "groups", 1)) if node.target in CONV_DIMS else 1
    if weight_node.op == "get_attr":
        name = str(weight_node.target).removesuffix(".weight")
        shape = fetch_tensor(gm, str(weight_node.target)).shape
    else:  # computed in the graph: named by its call, shaped as export recorded
        value = weight_node.meta.get("val")
        name, shape = node.name, value.shape if value is not None else torch.Size([0, 0])
    return _Layer(name, node, weight_node, shape, groups)


def _whole_reason(layer: _Layer, skip: Sequence[str]) -> str | None:
    """Why the layer cannot or must not be factorized, None where it may be."""
    pattern = next((p for p in skip if fnmatch.fnmatchcase(layer.name, p)), None)
    if pattern is not None:
        return f"skipped by params.skip ({pattern!r})"
    if layer.weight_node.op != "get_attr":
        return "its weight is computed in the graph, not a stored parameter: nothing to replace"
    if len(layer.weight_node.users) != 1:
        return (
            f"tied weight: {len(layer.weight_node.users)} calls use it, factorizing one "
            "would untie them"
        )
    if layer.groups > 1 and layer.shape[1] == 1 and layer.rows == 1:
        return "depthwise convolution: nothing to factorize (each group is one filter)"
    if layer.full_rank == 1:
        return "full rank 1: nothing to factorize"
    return None


def _group_rank(singular: torch.Tensor, rows: int, cols: int, pick: _Pick) -> int:
    """One rank for all groups: the largest the rule picks for any group.

    The pointwise convolution after it needs the same r in every group. The largest keeps the
    rule's promise (e.g. `energy` of Σσ²) in every group; the energy of all groups pooled could
    let a group whose weights carry little energy lose most of it, and a group's outputs are
    channels of their own that later layers may weigh far more than their energy says."""
    full = min(rows, cols)
    return max(min(pick(group, rows, cols), full) for group in singular)


def _rewrite(gm: fx.GraphModule, layer: _Layer, first: torch.Tensor, second: torch.Tensor) -> None:
    """node(x, W, b, ...) → node(node(x, A), B, b): A and B replace W in W's holder; a conv's
    A keeps its kernel, stride, padding, dilation and groups, B is pointwise with its groups."""
    node, target = layer.node, str(layer.weight_node.target)
    owner_path, _, leaf = target.rpartition(".")
    owner = gm.get_submodule(owner_path) if owner_path else gm
    prefix = f"{owner_path}." if owner_path else ""
    delattr(owner, leaf)
    owner.register_parameter(f"{leaf}_low", nn.Parameter(first.contiguous()))
    owner.register_parameter(f"{leaf}_up", nn.Parameter(second.contiguous()))
    graph = gm.graph
    with graph.inserting_before(node):
        low = graph.get_attr(f"{prefix}{leaf}_low")
        up = graph.get_attr(f"{prefix}{leaf}_up")
        if node.target == _LINEAR:
            hidden = graph.call_function(_LINEAR, (node.args[0], low))
            rest: tuple[Any, ...] = ()
        else:
            dims = CONV_DIMS[node.target]  # type: ignore[index]
            numeric, named = CONV_OVERLOADS[dims]
            spatial: tuple[Any, ...] = (
                _arg(node, 3, "stride", [1] * dims),
                _arg(node, 4, "padding", [0] * dims if node.target == numeric else "valid"),
                _arg(node, 5, "dilation", [1] * dims),
            )
            hidden = graph.call_function(  # the same overload: the same kind of padding
                numeric if node.target == numeric else named,
                (node.args[0], low, None, *spatial, layer.groups),
            )
            node.target = numeric  # the pointwise conv pads nothing
            rest = ([1] * dims, [0] * dims, [1] * dims, layer.groups)
    node.args = (hidden, up, _arg(node, 2, "bias", None), *rest)
    node.kwargs = {}
    graph.erase_node(layer.weight_node)


def _arg(node: fx.Node, index: int, name: str, default: Any) -> Any:
    if len(node.args) > index:
        return node.args[index]
    return node.kwargs.get(name, default)
