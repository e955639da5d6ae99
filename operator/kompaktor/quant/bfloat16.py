"""bfloat16 weights and compute behind a float32 interface, for the quantize stage's bf16 mode.

ONNX Runtime has no bfloat16 CPU kernels, so bf16 stays a torch.export program: the weights are
stored in bfloat16 (half the file) and the graph casts its float inputs down and its float
outputs back up, so the file drops in wherever the fp32 model ran. oneDNN runs the convolutions
and matmuls in bf16 on CPUs with AVX512_BF16 or AMX; elsewhere it emulates them (slower).

Tensors the graph makes itself are float32 by their dtype argument (an RNN's initial hidden
state is `aten.zeros(..., dtype=torch.float32)`; `ones`, `full`, `arange`, `_to_copy`, … alike)
and so are the constants export lifts out of `forward` (`torch.tensor([...])`): both become
bfloat16 too, or they would meet bf16 weights in one op and fail ("mat1 and mat2 must have the
same dtype"). Integer and bool dtypes stay as they are.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import fx

from kompaktor.compression.materialize import EXPORT_CHECKS


def native_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (oneDNN's own test)."""
    probe = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    return bool(probe()) if probe is not None else False


def to_bfloat16(gm: fx.GraphModule) -> fx.GraphModule:
    """A copy of an exported program's module computing in bfloat16, with float32 inputs and
    outputs; `gm` is left as it was."""
    copied = copy.deepcopy(gm).to(torch.bfloat16)
    graph = copied.graph
    for node in list(graph.nodes):
        # export's checks that the inputs keep their traced float32 dtype
        if node.op == "call_function" and node.target in EXPORT_CHECKS:
            graph.erase_node(node)
    _made_in_bfloat16(copied)
    placeholders = [n for n in graph.nodes if n.op == "placeholder" and _is_float(n)]
    for node in placeholders:
        with graph.inserting_after(node):
            cast = graph.call_function(
                torch.ops.aten._to_copy.default, (node,), {"dtype": torch.bfloat16}
            )
        node.replace_all_uses_with(cast, delete_user_cb=lambda user, c=cast: user is not c)
    output = next(n for n in graph.nodes if n.op == "output")
    with graph.inserting_before(output):
        output.args = fx.node.map_arg(output.args, lambda value: _to_float32(graph, value))
    graph.lint()
    copied.recompile()
    return copied


def _made_in_bfloat16(gm: fx.GraphModule) -> None:
    """float32 dtype arguments (creation ops, casts) and float32 constants to bfloat16."""
    for node in gm.graph.nodes:
        if node.op in ("call_function", "call_method"):
            node.args = fx.node.map_aggregate(node.args, _bfloat16_dtype)
            node.kwargs = fx.node.map_aggregate(node.kwargs, _bfloat16_dtype)
            if node.kwargs.get("dtype") is None and _default_float32(node):
                node.kwargs = {**node.kwargs, "dtype": torch.bfloat16}
        elif node.op == "get_attr":
            owner_path, _, leaf = str(node.target).rpartition(".")
            owner = gm.get_submodule(owner_path) if owner_path else gm
            value = getattr(owner, leaf, None)
            if isinstance(value, torch.Tensor) and value.dtype == torch.float32:
                # not a parameter or buffer (`.to` cast those): a constant export lifted
                setattr(owner, leaf, value.to(torch.bfloat16))


def _default_float32(node: fx.Node) -> bool:
    """An op with a keyword `dtype` left out that made a float32 tensor: a creation op taking
    torch's default dtype (`aten.ones(size)`, `aten.full(size, 0.5)`, `aten.scalar_tensor`)."""
    if not isinstance(node.target, torch._ops.OpOverload):
        return False
    value = node.meta.get("val")
    if not (isinstance(value, torch.Tensor) and value.dtype == torch.float32):
        return False
    return any(a.name == "dtype" and a.kwarg_only for a in node.target._schema.arguments)


def _bfloat16_dtype(value: Any) -> Any:
    return torch.bfloat16 if value is torch.float32 else value


def _is_float(node: fx.Node) -> bool:
    value = node.meta.get("val")
    return isinstance(value, torch.Tensor) and value.is_floating_point()


def _to_float32(graph: fx.Graph, value: fx.Node) -> fx.Node:
    if not _is_float(value):
        return value
    return graph.call_function(torch.ops.aten._to_copy.default, (value,), {"dtype": torch.float32})
