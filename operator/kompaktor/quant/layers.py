"""The layers of an ONNX model that int8 quantization can keep in float, by the names users know.

ONNX Runtime excludes nodes by ONNX node name, but torch.onnx (dynamo) names nodes after the
aten op (`node_linear_1`), not after the module. The module path survives in the weight's
initializer name (`classifier.0.weight`), so a layer is named by its weight with `.weight`
dropped (`classifier.0`, `fc1`, `conv1`: the torch module path), or by its node name when the
weight has no such name (an ONNX model from elsewhere). A pattern matches either name.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import onnx

#: Ops with a weight that int8 quantizes: the layers that can fall back to float.
LAYER_OPS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul"})


@dataclass(frozen=True)
class Layer:
    """A weighted layer: the name users give it and the ONNX node that computes it."""

    name: str
    node: str

    def nodes(self) -> tuple[str, str]:
        """The node names ONNX Runtime may see: dynamic quantization first splits a Gemm into
        `<node>_MatMul` and `<node>_Add` and excludes by those names."""
        return self.node, f"{self.node}_MatMul"

    def matches(self, pattern: str) -> bool:
        return fnmatch.fnmatchcase(self.name, pattern) or fnmatch.fnmatchcase(self.node, pattern)


def onnx_layers(path: Path) -> list[Layer]:
    """The model's weighted layers in graph order."""
    graph = onnx.load(str(path), load_external_data=False).graph
    weights = {t.name for t in graph.initializer}
    return [
        Layer(_layer_name(node.input[1], node.name), node.name)
        for node in graph.node
        if node.op_type in LAYER_OPS and len(node.input) > 1 and node.input[1] in weights
    ]


def _layer_name(weight: str, node: str) -> str:
    return weight.removesuffix(".weight") if weight.endswith(".weight") else node


def matching(layers: Sequence[Layer], patterns: Iterable[str], where: str) -> list[Layer]:
    """The layers any pattern matches, in graph order; ValueError naming `where` and the layer
    names that exist when a pattern matches none (a typo would silently quantize the layer)."""
    patterns = list(patterns)
    unmatched = [p for p in patterns if not any(layer.matches(p) for layer in layers)]
    if unmatched:
        names = ", ".join(layer.name for layer in layers) or "none"
        raise ValueError(
            f"{where}: {', '.join(repr(p) for p in unmatched)} matches no layer of this model; "
            f"its quantizable layers are: {names} (glob patterns on these names or on ONNX node "
            "names)"
        )
    return [layer for layer in layers if any(layer.matches(p) for p in patterns)]
