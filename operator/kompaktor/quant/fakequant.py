"""Quantization-aware training by fake quantization with a straight-through estimator.

Weights of every conv/linear call are rounded to int8 per output channel in the forward pass
(a parametrization, so an exported GraphModule's `get_attr` weights work too), and the inputs
of those calls are rounded to uint8 with running min/max ranges. Gradients pass the rounding
unchanged (PyTorch's fake_quantize ops do that), so fine-tuning learns weights that survive
int8. After training the weights are left at their int8-representable values and the
activation nodes are removed; ONNX Runtime's static quantization then calibrates the real
int8 model from those weights.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator

import torch
from torch import fx, nn
from torch.nn.utils import parametrize

aten = torch.ops.aten
_LAYERS = (aten.conv2d.default, aten.linear.default, aten.conv1d.default)
_PREFIX = "_fake_quant_"


class _WeightFakeQuant(nn.Module):
    """Symmetric int8 per output channel."""

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        dims = tuple(range(1, weight.dim()))
        scale = weight.detach().abs().amax(dim=dims).clamp(min=1e-8) / 127.0
        zero = torch.zeros(scale.shape, dtype=torch.int32)
        return torch.fake_quantize_per_channel_affine(weight, scale, zero, 0, -127, 127)


class _ActFakeQuant(nn.Module):
    """Asymmetric uint8 per tensor, ranges tracked by an exponential moving average."""

    def __init__(self, momentum: float = 0.1) -> None:
        super().__init__()
        self.momentum = momentum
        self.low: torch.Tensor
        self.high: torch.Tensor
        self.seen: torch.Tensor
        self.register_buffer("low", torch.tensor(0.0))
        self.register_buffer("high", torch.tensor(0.0))
        self.register_buffer("seen", torch.tensor(False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            low, high = x.detach().min(), x.detach().max()
            if bool(self.seen):
                low = torch.lerp(self.low, low, self.momentum)
                high = torch.lerp(self.high, high, self.momentum)
            self.low.copy_(low)
            self.high.copy_(high)
            self.seen.fill_(True)
        low, high = torch.clamp(self.low, max=0.0), torch.clamp(self.high, min=0.0)
        scale = float(torch.clamp((high - low) / 255.0, min=1e-8))
        zero = int(torch.clamp(torch.round(-low / scale), 0, 255))
        return torch.fake_quantize_per_tensor_affine(x, scale, zero, 0, 255)


def layer_names(gm: fx.GraphModule) -> list[str]:
    """The module path of each conv/linear layer fake quantization would quantize (its
    weight's name without `.weight`, as the ONNX export names the layer too)."""
    return [_name(target) for _, _, target in _layers(gm)]


def _layers(gm: fx.GraphModule) -> Iterator[tuple[fx.Node, fx.Node, str]]:
    """Each conv/linear call on a computed input with a stored weight: the call, its input
    and the weight's attribute path."""
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or node.target not in _LAYERS:
            continue
        source, weight = node.args[0], node.args[1]
        if isinstance(source, fx.Node) and isinstance(weight, fx.Node) and weight.op == "get_attr":
            yield node, source, str(weight.target)


def _name(target: str) -> str:
    return target.removesuffix(".weight")


def fake_quantize(gm: fx.GraphModule, keep_float: Collection[str] = ()) -> int:
    """Insert fake quantization around every conv/linear call but those `keep_float` names
    (by `layer_names`); returns how many layers."""
    count = 0
    for node, source, target in _layers(gm):
        if _name(target) in keep_float:
            continue
        owner_path, _, leaf = target.rpartition(".")
        owner = gm.get_submodule(owner_path) if owner_path else gm
        if not parametrize.is_parametrized(owner, leaf):
            parametrize.register_parametrization(owner, leaf, _WeightFakeQuant())
        name = f"{_PREFIX}{count}"
        gm.add_submodule(name, _ActFakeQuant())
        with gm.graph.inserting_before(node):
            quantized = gm.graph.call_module(name, (source,))
        node.replace_input_with(source, quantized)
        count += 1
    gm.recompile()
    return count


def strip_fake_quant(gm: fx.GraphModule) -> None:
    """Remove the activation nodes and bake the int8-rounded weights in as plain params."""
    for node in list(gm.graph.nodes):
        if node.op == "call_module" and str(node.target).startswith(_PREFIX):
            node.replace_all_uses_with(node.args[0])
            gm.graph.erase_node(node)
            gm.delete_submodule(str(node.target))
    for module in list(gm.modules()):
        if parametrize.is_parametrized(module):
            for leaf in list(module.parametrizations.keys()):  # type: ignore[operator,union-attr]
                parametrize.remove_parametrizations(module, leaf, leave_parametrized=True)
    gm.recompile()
