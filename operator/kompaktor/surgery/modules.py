"""Rewrite an exported graph's linear layers between its forms.

Module-swapping tools look for module instances (kompaktor_kernels.sparsify replaces nn.Linear
with SparseLinear; densify does the reverse), but an ExportedProgram's module has only
functional calls on plain tensor holders. `linear_modules` gives each `aten.linear` call its
nn.Linear back (sharing the same tensors); `dense_sparse_linears` turns kompaktor_kernels'
sparse linear calls into the `aten.linear` calls of the dense layers they compute.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypedDict

import torch
from torch import fx, nn

aten = torch.ops.aten

# The tensor arguments of kompaktor_kernels' ops after x, named as SparseLinear's buffers.
_SPARSE_OPS = {
    "kompaktor_kernels::sparse_linear": ("row_ptr", "col", "values", "bias"),
    "kompaktor_kernels::sparse_linear_int8": (
        "row_ptr", "col", "values", "scales", "rowsum", "bias",
    ),
}  # fmt: skip


class SparseLayer(TypedDict):
    """A sparse linear layer as a report names it (JSON as it is)."""

    dtype: str  # of its stored weights: float32 or int8
    shape: list[int]  # out, in
    density: float  # the share of its weights stored (non-zero)
    featureMajorOut: bool  # hands its output on untransposed, to sparse layers only


def sparse_linears(gm: fx.GraphModule) -> dict[str, SparseLayer]:
    """Each kompaktor_kernels sparse linear call on a holder's buffers, by the holder's path."""
    layers: dict[str, SparseLayer] = {}
    for node, path in _sparse_calls(gm):
        holder = gm.get_submodule(path)
        out_features, in_features = holder.get_buffer("row_ptr").numel() - 1, _in_features(node)
        values = holder.get_buffer("values")
        layers[path] = SparseLayer(
            dtype=str(values.dtype).removeprefix("torch."),
            shape=[out_features, in_features],
            density=values.numel() / max(out_features * in_features, 1),
            featureMajorOut=_feature_major_out(node),
        )
    return layers


def _sparse_calls(gm: fx.GraphModule) -> list[tuple[fx.Node, str]]:
    """kompaktor_kernels' sparse linear calls whose tensors are one holder's buffers (how
    torch.export records a SparseLinear), with the holder's path."""
    found = []
    for node in gm.graph.nodes:
        leaves = _SPARSE_OPS.get(_op_name(node))
        if leaves is not None:
            path = _holder_path(gm, node.args[1 : 1 + len(leaves)], leaves, buffers=True)
            if path is not None:
                found.append((node, path))
    return found


def linear_modules(gm: fx.GraphModule) -> list[str]:
    """Rewrite every `aten.linear(x, <attr>.weight, <attr>.bias)` whose holder holds only
    those tensors into a call of an nn.Linear at the same path; returns the paths."""
    converted = []
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or node.target != aten.linear.default:
            continue
        path = _holder_path(gm, node.args[1:], ("weight", "bias"), buffers=False)
        if path is None or isinstance(gm.get_submodule(path), nn.Linear):
            continue
        holder = gm.get_submodule(path)
        weight, bias = holder._parameters["weight"], holder._parameters.get("bias")
        assert weight is not None
        linear = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device="meta")
        linear.weight = weight
        if bias is not None:
            linear.bias = bias
        _call_instead(gm, node, path, linear)
        converted.append(path)
    gm.recompile()
    return converted


def dense_sparse_linears(gm: fx.GraphModule) -> dict[str, torch.dtype]:
    """Rewrite every kompaktor_kernels sparse linear call whose tensors are one holder's
    buffers (how torch.export records a SparseLinear) into the `aten.linear` call of the dense
    layer it computes (int8: dequantised weights), on weight and bias parameters of the same
    holder, as the export of a dense model reads them. Returns the CSR dtype of each path. The
    buffers are validated as SparseLinear validates them; a graph without such calls needs no
    compiled kernels here."""
    found = _sparse_calls(gm)
    if not found:
        return {}
    from kompaktor_kernels import SparseLinear  # loaded already: the graph calls its ops

    dtypes = {}
    for node, path in found:
        holder = gm.get_submodule(path)
        buffers = dict(holder.named_buffers(recurse=False))
        values, col, row_ptr = buffers["values"], buffers["col"], buffers["row_ptr"]
        in_features = _in_features(node)
        layer = SparseLinear.empty(
            in_features, row_ptr.numel() - 1, "bias" in buffers, values.dtype, col.dtype
        )
        layer.load_state_dict(buffers)
        dense = layer.to_linear()
        holder._buffers.clear()
        holder.weight = dense.weight
        if dense.bias is not None:
            holder.bias = dense.bias
        tensors = [a for a in node.args[1:] if isinstance(a, fx.Node)]
        with gm.graph.inserting_before(node):
            params = [gm.graph.get_attr(f"{path}.{leaf}") for leaf in ("weight", "bias")]
            call = gm.graph.call_function(
                aten.linear.default, (node.args[0], *params[: 1 + (dense.bias is not None)])
            )
        _replace(gm, node, call, tensors)
        dtypes[path] = values.dtype
    gm.recompile()
    return dtypes


def _in_features(node: fx.Node) -> int:
    in_features = _call_arg(node, "in_features")
    assert isinstance(in_features, int)
    return in_features


def _feature_major_out(node: fx.Node) -> bool:
    """Whether a sparse linear call was told to return y feature-major (surgery.layouts sets
    it; programs exported before the argument existed leave it out)."""
    return _call_arg(node, "feature_major_out") is True


def _call_arg(node: fx.Node, name: str) -> object:
    """An op call's argument by its schema name, given positionally or by name (None where a
    defaulted one is left out)."""
    assert isinstance(node.target, torch._ops.OpOverload)
    names = [arg.name for arg in node.target._schema.arguments]
    at = names.index(name)
    return node.args[at] if at < len(node.args) else node.kwargs.get(name)


def _op_name(node: fx.Node) -> str:
    target = node.target
    if node.op != "call_function" or not isinstance(target, torch._ops.OpOverload):
        return ""
    return target._schema.name


def _holder_path(
    gm: fx.GraphModule, args: Sequence[object], leaves: Sequence[str], buffers: bool
) -> str | None:
    """The path of the submodule whose tensors (parameters, or buffers) these call arguments
    are, named `leaves` in order (a None or missing argument: that one is absent), when it
    holds nothing else; None otherwise."""
    named = [(arg, leaf) for arg, leaf in zip(args, leaves, strict=False) if arg is not None]
    nodes = [arg for arg, _ in named if isinstance(arg, fx.Node)]
    if not named or len(nodes) < len(named):
        return None
    if not all(n.op == "get_attr" and len(n.users) == 1 for n in nodes):
        return None
    path = str(nodes[0].target).rpartition(".")[0]
    if not path or [str(n.target) for n in nodes] != [f"{path}.{leaf}" for _, leaf in named]:
        return None
    holder = gm.get_submodule(path)
    mine, other = (holder._buffers, holder._parameters) if buffers else (
        holder._parameters, holder._buffers
    )  # fmt: skip
    held = sorted(name for name, t in mine.items() if t is not None)
    bare = not list(holder.children()) and not any(t is not None for t in other.values())
    return path if bare and held == sorted(leaf for _, leaf in named) else None


def _call_instead(gm: fx.GraphModule, node: fx.Node, path: str, module: nn.Module) -> None:
    """Put `module` at `path` and call it on the node's first argument in place of the node."""
    gm.set_submodule(path, module)
    tensors = [a for a in node.args[1:] if isinstance(a, fx.Node)]
    with gm.graph.inserting_before(node):
        call = gm.graph.call_module(path, (node.args[0],))
    _replace(gm, node, call, tensors)


def _replace(gm: fx.GraphModule, node: fx.Node, call: fx.Node, tensors: list[fx.Node]) -> None:
    """Put `call` in place of `node`; the tensor reads only the node used go."""
    call.meta = dict(node.meta)
    node.replace_all_uses_with(call)
    gm.graph.erase_node(node)
    for tensor in tensors:
        if not tensor.users:
            gm.graph.erase_node(tensor)
