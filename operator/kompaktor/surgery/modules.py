"""Turn an exported graph's `aten.linear` calls back into nn.Linear modules.

Module-swapping tools (kompaktor_kernels.sparsify replaces nn.Linear with SparseLinear) look
for nn.Linear instances; an ExportedProgram's module has only functional calls on plain
parameter holders. This gives each such call its nn.Linear back, sharing the same tensors.
"""

from __future__ import annotations

import torch
from torch import fx, nn

aten = torch.ops.aten


def linear_modules(gm: fx.GraphModule) -> list[str]:
    """Rewrite every `aten.linear(x, <attr>.weight, <attr>.bias)` whose holder holds only
    those tensors into a call of an nn.Linear at the same path; returns the paths."""
    converted = []
    for node in list(gm.graph.nodes):
        path = _holder_path(gm, node)
        if path is None:
            continue
        holder = gm.get_submodule(path)
        weight, bias = holder._parameters["weight"], holder._parameters.get("bias")
        assert weight is not None
        linear = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
        linear.weight = weight
        if bias is not None:
            linear.bias = bias
        _set_submodule(gm, path, linear)
        params = [a for a in node.args[1:] if isinstance(a, fx.Node)]
        with gm.graph.inserting_before(node):
            call = gm.graph.call_module(path, (node.args[0],))
        call.meta = dict(node.meta)
        node.replace_all_uses_with(call)
        gm.graph.erase_node(node)
        for param in params:
            if not param.users:
                gm.graph.erase_node(param)
        converted.append(path)
    gm.recompile()
    return converted


def _holder_path(gm: fx.GraphModule, node: fx.Node) -> str | None:
    """The submodule path holding this linear call's tensors, when it can become nn.Linear."""
    if node.op != "call_function" or node.target != aten.linear.default:
        return None
    attrs = [a for a in node.args[1:] if a is not None]
    if not all(isinstance(a, fx.Node) and a.op == "get_attr" and len(a.users) == 1 for a in attrs):
        return None
    targets = [str(a.target) for a in attrs if isinstance(a, fx.Node)]
    path = targets[0].rpartition(".")[0]
    expected = ["weight", "bias"][: len(targets)]
    if not path or targets != [f"{path}.{leaf}" for leaf in expected]:
        return None
    holder = gm.get_submodule(path)
    if isinstance(holder, nn.Linear):
        return None
    bare = not holder._buffers and not list(holder.children())
    return path if bare and sorted(holder._parameters) == sorted(expected) else None


def _set_submodule(root: nn.Module, path: str, module: nn.Module) -> None:
    owner_path, _, leaf = path.rpartition(".")
    owner = root.get_submodule(owner_path) if owner_path else root
    setattr(owner, leaf, module)
