"""Choose the activation layout between sparse linear layers of a graph.

A batched sparse layer sums into a [outputs × batch] tile, which it must transpose into a
row-major y, and reads a row-major x only after transposing it the other way. Between two such
layers both transposes are wasted: the first can hand on its sums feature-major (y.t()
contiguous) and the second read them as they are: 2-7 % of a BERT-size feed-forward block
batched at 80-95 % (`bench/kernels.py --cpu-time --only chain`). Elementwise activations keep
the layout (their output has their input's strides), so a chain through them keeps it too; a
clone to a memory format (`x.clone(memory_format=torch.contiguous_format)`) does not, and would
pay the transpose itself. Any other consumer gets the contiguous y an `nn.Linear` returns: views
need it, and dense matmuls can slow down on a transposed input (4-5× for a 10-output `F.linear`
here).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

import torch
from torch import fx

from kompaktor.surgery.graph import ELEMENTWISE

if TYPE_CHECKING:
    from kompaktor_kernels import SparseLinear


def chain_sparse_layouts(gm: fx.GraphModule) -> list[str]:
    """Set `feature_major_out` on each SparseLinear the graph calls: True where every call has
    batch dimensions and every use of its output reaches only other SparseLinear inputs (directly
    or through elementwise activations), False elsewhere, so no layer returns a layout its
    consumers do not expect (a layer called from several places chains only if all do).
    Returns the paths of the layers that now hand on feature-major outputs."""
    calls: dict[int, tuple[SparseLinear, list[fx.Node]]] = {}
    for node in gm.graph.nodes:
        layer = _sparse_layer(gm, node)
        if layer is not None:
            calls.setdefault(id(layer), (layer, []))[1].append(node)
    chained = []
    for layer, nodes in calls.values():
        layer.feature_major_out = all(
            _batched(node.args[0]) and _only_sparse_inputs(gm, node) for node in nodes
        )
        if layer.feature_major_out:
            chained += [str(node.target) for node in nodes]
    return chained


def _sparse_layer(gm: fx.GraphModule, node: fx.Node) -> SparseLinear | None:
    """The SparseLinear a node calls (told by name: a graph without one needs no kernels)."""
    if node.op != "call_module":
        return None
    module = gm.get_submodule(str(node.target))
    return cast("SparseLinear", module) if type(module).__name__ == "SparseLinear" else None


def _batched(arg: object) -> bool:
    """Whether the node's recorded value (export's "val", ShapeProp's "tensor_meta") has batch
    dimensions before its features ([batch, features], [batch, tokens, features], ...)."""
    if not isinstance(arg, fx.Node):
        return False
    shape = getattr(arg.meta.get("val", arg.meta.get("tensor_meta")), "shape", None)
    return shape is not None and len(shape) >= 2


def _only_sparse_inputs(gm: fx.GraphModule, node: fx.Node) -> bool:
    """Whether the node has uses, each the input of a SparseLinear or an elementwise op whose
    output qualifies in turn."""
    if not node.users:
        return False
    for user in node.users:
        if _keeps_layout(user):
            if user.args[0] is not node or not _only_sparse_inputs(gm, user):
                return False
        elif _sparse_layer(gm, user) is None or user.args[0] is not node or user.kwargs:
            return False
    return True


def _keeps_layout(node: fx.Node) -> bool:
    """Whether the node is an elementwise op whose output has its input's strides: every one in
    ELEMENTWISE but a clone to another memory format (a feature-major input would be transposed
    by the copy, costing what the chain saves)."""
    return (
        node.op == "call_function"
        and node.target in ELEMENTWISE
        and node.kwargs.get("memory_format") in (None, torch.preserve_format)
    )
