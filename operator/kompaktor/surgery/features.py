"""Hidden features of an exported model: its conv/linear layers' outputs, read during training.

An exported GraphModule has no nn.Linear/nn.Conv2d submodules to hook: its layers are
`aten.linear` / `aten.conv2d` calls on stored weights. `feature_view` builds a second
GraphModule on the same graph and the same parameter objects that returns the chosen layers'
outputs beside the model's output, so a loss can reach them while the model itself stays as
it was (nothing to remove before export).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import fx

from kompaktor.surgery.graph import node_shapes, output_layers

aten = torch.ops.aten
_LAYERS = (aten.conv2d.default, aten.linear.default)


@dataclass(frozen=True)
class HiddenLayer:
    """A conv/linear layer whose output is not the model's output.

    `name` is its weight's path without `.weight`; `shape` its output's shape on the example
    batch; `channel_dim` the dimension holding its features (1 for conv, last for linear).
    """

    name: str
    shape: tuple[int, ...]
    channel_dim: int

    @property
    def width(self) -> int:
        return self.shape[self.channel_dim]


def hidden_layers(gm: fx.GraphModule, example: tuple[torch.Tensor, ...]) -> list[HiddenLayer]:
    """The model's hidden conv/linear layers in graph order (the ones that feed the output
    directly are left out: matching them is what the soft-target loss already does)."""
    shapes = node_shapes(gm, example)
    last = output_layers(gm)
    layers = []
    for node, name in _layer_nodes(gm).items():
        if name in last or node not in shapes:
            continue
        shape = tuple(shapes[node])
        conv = node.target == aten.conv2d.default
        layers.append(HiddenLayer(name, shape, 1 if conv else len(shape) - 1))
    return layers


def feature_view(gm: fx.GraphModule, names: Sequence[str]) -> fx.GraphModule:
    """A module sharing `gm`'s parameters that returns (output, *features of `names`)."""
    graph = fx.Graph()
    mapping: dict[fx.Node, fx.Node] = {}
    output = graph.graph_copy(gm.graph, mapping)
    first = output[0] if isinstance(output, tuple | list) else output
    by_name = {name: node for node, name in _layer_nodes(gm).items()}
    missing = [name for name in names if name not in by_name]
    if missing:
        raise KeyError(f"no conv/linear layer named {', '.join(missing)}")
    graph.output((first, *(mapping[by_name[name]] for name in names)))
    return fx.GraphModule(gm, graph)


def _layer_nodes(gm: fx.GraphModule) -> dict[fx.Node, str]:
    """Each conv/linear call whose weight is stored (get_attr), by its layer name; a weight
    read twice (tied) names its first call only."""
    nodes: dict[fx.Node, str] = {}
    seen: set[str] = set()
    for node in gm.graph.nodes:
        if node.op != "call_function" or node.target not in _LAYERS:
            continue
        weight = node.args[1]
        if not (isinstance(weight, fx.Node) and weight.op == "get_attr"):
            continue
        name = str(weight.target).removesuffix(".weight")
        if name not in seen:
            seen.add(name)
            nodes[node] = name
    return nodes
