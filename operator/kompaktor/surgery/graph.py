"""Which output channels of an exported model can be removed, found by walking its fx graph.

`ExportedProgram.module()` gives a GraphModule whose convolutions and linear layers are
`aten.conv2d` / `aten.linear` calls on `get_attr` weights. A producer's channels can go when
every path from its output reaches the next conv/linear layer through ops that treat
channels independently (activations, batch norm, pooling, flatten). Anything else on the way
(a residual add, a concat, the model's output) pins the producer, and it is left alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import fx, nn
from torch.fx.interpreter import Interpreter

aten = torch.ops.aten

#: Ops that act on each channel independently and keep the layout (their output has their
#: input's strides: surgery.layouts relies on that too).
ELEMENTWISE = frozenset(
    {
        aten.relu.default,
        aten.relu_.default,
        aten.gelu.default,
        aten.silu.default,
        aten.sigmoid.default,
        aten.tanh.default,
        aten.hardtanh.default,
        aten.hardswish.default,
        aten.leaky_relu.default,
        aten.elu.default,
        aten.dropout.default,
        aten.clone.default,
        aten.alias.default,
        aten.detach.default,
    }
)
#: Ops that pool over space, per channel (channel dim 1 only).
_POOLS = frozenset(
    {
        aten.max_pool2d.default,
        aten.avg_pool2d.default,
        aten.adaptive_avg_pool2d.default,
        aten.max_pool1d.default,
        aten.avg_pool1d.default,
    }
)
_RESHAPES = frozenset({aten.flatten.using_ints, aten.view.default, aten.reshape.default})
_CONV = aten.conv2d.default
_LINEAR = aten.linear.default
#: Per number of spatial dims: the convolution overload with numeric padding, then the one whose
#: padding is a string ("same" or "valid").
CONV_OVERLOADS = {
    1: (aten.conv1d.default, aten.conv1d.padding),
    2: (aten.conv2d.default, aten.conv2d.padding),
    3: (aten.conv3d.default, aten.conv3d.padding),
}
#: Each convolution overload → its number of spatial dims.
CONV_DIMS = {op: dims for dims, ops in CONV_OVERLOADS.items() for op in ops}
#: The calls that multiply by a weight: what makes a graph worth rewriting, and what it costs.
WEIGHTED_LAYERS = frozenset({_LINEAR, *CONV_DIMS})
_BATCH_NORM = aten.batch_norm.default


@dataclass
class ChannelGroup:
    """One removable set of channels: a producer's outputs and every tensor indexed by them.

    `consumers` maps each consumer weight to the number of input features one channel feeds
    (1, or H*W when a conv feature map is flattened into a linear layer).
    """

    name: str
    weight: str
    bias: str | None
    channels: int
    channel_dim: int
    producer: fx.Node
    followers: list[str] = field(default_factory=list)
    consumers: dict[str, int] = field(default_factory=dict)
    reshapes: list[fx.Node] = field(default_factory=list)
    #: What keeps the channels when they cannot be removed (an op, or the model's output).
    pinned_by: str | None = None


def as_graph_module(module: nn.Module, example: tuple[torch.Tensor, ...]) -> fx.GraphModule:
    """The module as an aten-level GraphModule: used as is if it already is one (a loaded
    .pt2), exported otherwise. TorchScript cannot be re-traced, so it is refused."""
    if isinstance(module, torch.jit.ScriptModule):
        raise TypeError("a TorchScript module cannot be rewritten; export the model as .pt2")
    if isinstance(module, fx.GraphModule) and any(
        n.target in WEIGHTED_LAYERS for n in module.graph.nodes
    ):
        return module
    batch = tuple({0: torch.export.Dim.AUTO} for _ in example)  # keep the batch size free
    return torch.export.export(module, example, dynamic_shapes=batch, strict=False).module()


def node_shapes(gm: fx.GraphModule, example: tuple[torch.Tensor, ...]) -> dict[fx.Node, torch.Size]:
    """The shape of every tensor the graph computes on `example`."""
    recorder = _ShapeRecorder(gm)
    with torch.no_grad():
        recorder.run(*example)
    return recorder.shapes


class _ShapeRecorder(Interpreter):
    def __init__(self, gm: fx.GraphModule) -> None:
        super().__init__(gm)
        self.shapes: dict[fx.Node, torch.Size] = {}

    def run_node(self, n: fx.Node) -> Any:
        out = super().run_node(n)
        if isinstance(out, torch.Tensor):
            self.shapes[n] = out.shape
        return out


#: Why a model has no channel group: what pins every conv/linear output's width.
NO_REMOVABLE_CHANNELS = (
    "no layer has removable channels (every conv/linear output feeds the model output, a "
    "residual add or concat, or an op that mixes channels, such as a recurrent layer)"
)


def channel_groups(
    gm: fx.GraphModule, example: tuple[torch.Tensor, ...]
) -> dict[str, ChannelGroup]:
    """Every producer whose output channels can be removed exactly, by layer name."""
    shapes = node_shapes(gm, example)
    weight_uses = _get_attr_uses(gm)
    groups: dict[str, ChannelGroup] = {}
    for node in gm.graph.nodes:
        group = _producer(node, weight_uses)
        if group is None or not _trace(group, shapes, weight_uses):
            continue
        groups[group.name] = group
    return groups


def output_layers(gm: fx.GraphModule) -> set[str]:
    """Layers whose outputs reach the model's output through elementwise ops only: their
    output width is the model's contract (classes, targets), so pruning must keep them."""
    names: set[str] = set()
    for node in gm.graph.nodes:
        if node.target not in (_CONV, _LINEAR) or not _is_attr(node.args[1]):
            continue
        frontier, seen = [node], set()
        while frontier:
            current = frontier.pop()
            for user in current.users:
                if user.op == "output":
                    names.add(_layer_name(str(node.args[1].target)))
                elif user.target in ELEMENTWISE and user not in seen:
                    seen.add(user)
                    frontier.append(user)
    return names


#: TorchScript ops that keep their input's last dimension's meaning, as ELEMENTWISE does.
_TS_ELEMENTWISE = frozenset(
    f"aten::{op}"
    for op in (
        "relu", "relu_", "gelu", "sigmoid", "tanh", "softmax", "log_softmax", "dropout",
        "dropout_", "add", "add_", "sub", "mul", "div", "clamp", "contiguous", "clone", "to",
        "flatten", "view", "reshape", "squeeze", "unsqueeze",
    )
) | {"prim::TupleConstruct", "prim::ListConstruct", "prim::DictConstruct"}  # fmt: skip
_TS_LAYERS = frozenset({"aten::linear", "aten::conv1d", "aten::conv2d", "aten::conv3d",
                        "aten::_convolution"})  # fmt: skip


def torchscript_output_layers(module: torch.jit.ScriptModule) -> set[str]:
    """`output_layers` for TorchScript: the layers whose outputs reach the model's return
    through width-keeping ops, read from the inlined graph (not the order layers were
    registered in: a head declared first is still the head)."""
    graph = module.inlined_graph
    names: set[str] = set()
    frontier = list(graph.return_node().inputs())
    seen: set[Any] = set()
    while frontier:
        node = frontier.pop().node()
        if node in seen:
            continue
        seen.add(node)
        if node.kind() in _TS_LAYERS:
            name = _ts_attribute(list(node.inputs())[1])
            if name is not None:
                names.add(name.removesuffix(".weight"))
        elif node.kind() in _TS_ELEMENTWISE:
            frontier.extend(node.inputs())
    return names


def _ts_attribute(value: Any) -> str | None:
    """The dotted name a TorchScript value is read from (`head.weight`), if it is an attribute
    chain from the module itself."""
    parts = []
    node = value.node()
    while node.kind() == "prim::GetAttr":
        parts.append(node.s("name"))
        node = next(iter(node.inputs())).node()
    return ".".join(reversed(parts)) if parts and node.kind() == "prim::Param" else None


def _producer(node: fx.Node, weight_uses: dict[str, int]) -> ChannelGroup | None:
    if node.op != "call_function" or node.target not in (_CONV, _LINEAR):
        return None
    if node.target == _CONV and _conv_groups(node) != 1:
        return None
    weight = node.args[1]
    bias = _arg(node, 2, "bias")
    if not _is_attr(weight) or (bias is not None and not _is_attr(bias)):
        return None
    assert isinstance(weight, fx.Node)
    targets = [str(weight.target)] + ([str(bias.target)] if isinstance(bias, fx.Node) else [])
    if any(weight_uses[t] != 1 for t in targets):  # tied weights: removal would be ambiguous
        return None
    owner = node.graph.owning_module
    assert owner is not None
    tensor = fetch_tensor(owner, str(weight.target))
    return ChannelGroup(
        name=_layer_name(str(weight.target)),
        weight=str(weight.target),
        bias=targets[1] if len(targets) > 1 else None,
        channels=int(tensor.shape[0]),
        channel_dim=1 if node.target == _CONV else -1,
        producer=node,
    )


def _trace(
    group: ChannelGroup, shapes: dict[fx.Node, torch.Size], weight_uses: dict[str, int]
) -> bool:
    """Follow the producer's output to its consumers; False if anything pins the channels.

    The walk carries where the channel dim is ("c1": dim 1 of N,C,...; "last": the last dim)
    and how many features each channel spans there (H*W after flattening a feature map).
    """
    frontier: list[tuple[fx.Node, str, int]] = [
        (group.producer, "c1" if group.channel_dim == 1 else "last", 1)
    ]
    seen: set[fx.Node] = set()
    while frontier:
        node, layout, per = frontier.pop()
        for user in node.users:
            if user in seen:
                continue
            seen.add(user)
            step = _through(user, node, layout, per, shapes, group, weight_uses)
            if step is False:
                group.pinned_by = _op_name(user)
                return False
            if step is not True:
                frontier.append((user, *step))
    if not group.consumers:
        group.pinned_by = "feeds the model's output"
    return bool(group.consumers)


def _op_name(node: fx.Node) -> str:
    """What a pinning consumer is, for a user: `feeds aten.cat`, `feeds the model's output`."""
    if node.op != "call_function":
        return "feeds the model's output" if node.op == "output" else f"feeds a {node.op}"
    if node.target == _CONV and _conv_groups(node) != 1:
        return "feeds a grouped (depthwise) convolution"
    name = getattr(node.target, "__name__", str(node.target))  # "cat.default"
    return f"feeds aten.{name.split('.')[0]}"


def pinned_layers(gm: fx.GraphModule, example: tuple[torch.Tensor, ...]) -> dict[str, str]:
    """Every conv/linear layer whose channels cannot be removed, with what keeps them."""
    shapes = node_shapes(gm, example)
    weight_uses = _get_attr_uses(gm)
    found: dict[str, str] = {}
    for node in gm.graph.nodes:
        if node.op == "call_function" and node.target in (_CONV, _LINEAR):
            group = _producer(node, weight_uses)
            if group is None:
                weight = node.args[1]
                name = _layer_name(str(weight.target)) if _is_attr(weight) else node.name
                grouped = node.target == _CONV and _conv_groups(node) != 1
                found[name] = "is a grouped (depthwise) convolution" if grouped else "its weights"
            elif not _trace(group, shapes, weight_uses):
                found[group.name] = group.pinned_by or "an op that mixes channels"
    return found


def _through(
    user: fx.Node,
    source: fx.Node,
    layout: str,
    per: int,
    shapes: dict[fx.Node, torch.Size],
    group: ChannelGroup,
    weight_uses: dict[str, int],
) -> bool | tuple[str, int]:
    """One edge of the walk: True (a consumer, recorded), False (pinned), or the new state."""
    if user.op != "call_function" or not user.args or user.args[0] is not source:
        return False
    ndim = len(shapes.get(source, ()))
    target = user.target
    if target in ELEMENTWISE:
        return layout, per
    if target in _POOLS:
        return (layout, per) if layout == "c1" and per == 1 else False
    if target == _BATCH_NORM:
        if not (layout == "c1" or ndim == 2) or per != 1:
            return False
        params = [user.args[i] for i in range(1, 5)]
        if not all(p is None or _is_attr(p) for p in params):
            return False
        group.followers += [str(p.target) for p in params if isinstance(p, fx.Node)]
        return layout, per
    if target in _RESHAPES:
        return _flatten(user, source, layout, per, shapes, group)
    if target == _CONV:
        weight = user.args[1]
        if layout != "c1" or per != 1 or _conv_groups(user) != 1 or not _is_attr(weight):
            return False
        return _consume(group, weight, 1, weight_uses)
    if target == _LINEAR:
        weight = user.args[1]
        if layout != "last" or not _is_attr(weight):
            return False
        return _consume(group, weight, per, weight_uses)
    return False


def _flatten(
    user: fx.Node,
    source: fx.Node,
    layout: str,
    per: int,
    shapes: dict[fx.Node, torch.Size],
    group: ChannelGroup,
) -> bool | tuple[str, int]:
    """A (N, C, *spatial) map flattened to (N, C*prod(spatial)): channels become blocks."""
    before, after = shapes.get(source), shapes.get(user)
    if layout != "c1" or per != 1 or before is None or after is None or len(before) < 3:
        return False
    if len(after) != 2 or after[0] != before[0] or after[1] != math.prod(before[1:]):
        return False
    if user.target != aten.flatten.using_ints:
        group.reshapes.append(user)  # a literal size in view/reshape would go stale
    return "last", math.prod(before[2:])


def _consume(group: ChannelGroup, weight: Any, per: int, weight_uses: dict[str, int]) -> bool:
    target = str(weight.target)
    if weight_uses[target] != 1:
        return False
    group.consumers[target] = per
    return True


def _get_attr_uses(gm: fx.GraphModule) -> dict[str, int]:
    uses: dict[str, int] = {}
    for node in gm.graph.nodes:
        if node.op == "get_attr":
            uses[str(node.target)] = uses.get(str(node.target), 0) + len(node.users)
    return uses


def _arg(node: fx.Node, index: int, name: str) -> Any:
    if len(node.args) > index:
        return node.args[index]
    return node.kwargs.get(name)


def _conv_groups(node: fx.Node) -> int:
    return int(_arg(node, 6, "groups") or 1)


def _is_attr(value: Any) -> bool:
    return isinstance(value, fx.Node) and value.op == "get_attr"


def _layer_name(weight_target: str) -> str:
    return weight_target.removesuffix(".weight")


def fetch_attr(module: nn.Module, target: str) -> Any:
    """What a get_attr target names: a parameter, buffer, tensor or (for higher-order ops) a
    submodule; AttributeError when there is none."""
    owner, _, leaf = target.rpartition(".")
    return getattr(module.get_submodule(owner) if owner else module, leaf)


def fetch_tensor(module: nn.Module, target: str) -> torch.Tensor:
    """The parameter, buffer or tensor attribute a get_attr target names."""
    value = fetch_attr(module, target)
    assert isinstance(value, torch.Tensor)
    return value


def multiply_adds(gm: fx.GraphModule, example: tuple[torch.Tensor, ...]) -> int:
    """Multiply-adds of the conv (1-, 2-, 3-d, grouped too)/linear layers for the example batch,
    per example: each output element costs the weight's elements per filter."""
    shapes = node_shapes(gm, example)
    total = 0
    for node in gm.graph.nodes:
        if node.target not in WEIGHTED_LAYERS or node not in shapes:
            continue
        weight = shapes.get(node.args[1]) if isinstance(node.args[1], fx.Node) else None
        if weight is None:
            continue
        total += math.prod(shapes[node]) * math.prod(weight[1:])
    batch = int(example[0].shape[0]) if example else 1
    return total // max(batch, 1)
