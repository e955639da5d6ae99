"""Turn weights a graph computes from stored tensors back into stored float weights.

A shared-weight model (see `codebook`) gathers each weight from its codebook on every call.
Tools that need the weight itself as a constant — ONNX Runtime's int8 quantizers look for
MatMul/Conv weights among the initializers — get it back here: every value computed from
stored tensors alone is evaluated once and stored as a parameter in its place
(`fc1.weight.codebook` + `fc1.weight.indices` → `fc1.weight`). Works on a fresh GraphModule
and on one loaded from a .pt2, where the decoding is plain aten ops.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import Any

import torch
from torch import fx, nn

from kompaktor.surgery.graph import fetch_attr, fetch_tensor

#: Run-time checks export adds (they return nothing): dropped when they check stored tensors.
EXPORT_CHECKS = frozenset({torch.ops.aten._assert_tensor_metadata.default})


def materialize(gm: fx.GraphModule) -> list[str]:
    """Fold every tensor computed from stored tensors alone into a stored parameter; returns
    the new parameters' paths (empty when there is nothing to fold). In place."""
    constant = _constant_nodes(gm)
    values: dict[fx.Node, Any] = {}
    folded: dict[fx.Node, str] = {}
    with torch.no_grad():
        for node in gm.graph.nodes:
            if node in constant and node.target not in EXPORT_CHECKS:
                values[node] = _evaluate(gm, node, values)
                if node.op != "get_attr" and any(u not in constant for u in node.users):
                    folded[node] = _owner_of(node, constant)
    if not folded:
        return []
    sources = {
        str(n.target) for n in _ancestors(folded, constant) if n.op in ("get_attr", "call_module")
    }
    stand_ins = []
    for index, node in enumerate(folded):
        temporary = f"_kompaktor_folded_{index}"
        _store(gm, temporary, values[node].detach().clone())
        with gm.graph.inserting_before(node):
            stand_ins.append(gm.graph.get_attr(temporary))
        node.replace_all_uses_with(stand_ins[-1])
    for node in list(gm.graph.nodes):  # checks of stored tensors alone check nothing at run time
        if node.target in EXPORT_CHECKS and node in constant:
            gm.graph.erase_node(node)
    gm.graph.eliminate_dead_code()
    _drop_unused(gm, sources)
    paths = []
    for stand_in, owner in zip(stand_ins, folded.values(), strict=True):
        value = fetch_tensor(gm, str(stand_in.target))
        delattr(gm, str(stand_in.target))
        path = _free_path(gm, owner)
        _store(gm, path, value)
        stand_in.target = path
        paths.append(path)
    gm.graph.lint()
    gm.recompile()
    return paths


def materialized_copy(module: nn.Module) -> tuple[nn.Module, list[str]]:
    """A copy with every computed weight folded, and the folded paths; `module` itself (and no
    paths) when there is nothing to fold. The original keeps its encoding, so a shared model
    saves small, while inference decodes once instead of on every call. (A stage that trains
    a shared model trains the original, codebooks included: folded, the weights would train
    freely and stop being shared.)"""
    if not isinstance(module, fx.GraphModule) or not _computes_weights(module):
        return module, []
    copied = copy.deepcopy(module)
    return copied, materialize(copied)


def _computes_weights(gm: fx.GraphModule) -> bool:
    """Whether a value computed from stored tensors alone feeds the rest of the graph."""
    constant = _constant_nodes(gm)
    return any(
        node.op != "get_attr"
        and node.target not in EXPORT_CHECKS
        and any(user not in constant for user in node.users)
        for node in constant
    )


def _store(gm: fx.GraphModule, path: str, value: torch.Tensor) -> None:
    """A float value as a parameter (trainable again), anything else as a buffer."""
    owner_path, _, leaf = path.rpartition(".")
    holder = gm.get_submodule(owner_path) if owner_path else gm
    if value.is_floating_point():
        holder.register_parameter(leaf, nn.Parameter(value))
    else:
        holder.register_buffer(leaf, value)


def _constant_nodes(gm: fx.GraphModule) -> set[fx.Node]:
    """Nodes whose value depends on stored tensors only (no model input reaches them)."""
    constant: set[fx.Node] = set()
    for node in gm.graph.nodes:
        if node.op == "get_attr":
            if isinstance(_attribute(gm, str(node.target)), torch.Tensor):
                constant.add(node)
        elif node.op in ("call_function", "call_method", "call_module"):
            inputs = node.all_input_nodes
            if not inputs and node.op != "call_module":
                continue
            if node.op == "call_module" and not isinstance(
                gm.get_submodule(str(node.target)), _foldable_modules()
            ):
                continue
            if all(i in constant for i in inputs):
                constant.add(node)
    return constant


def _attribute(gm: fx.GraphModule, target: str) -> Any:
    try:
        return fetch_attr(gm, target)
    except AttributeError:
        return None


def _foldable_modules() -> tuple[type[nn.Module], ...]:
    from kompaktor.compression.codebook import CodebookWeight

    return (CodebookWeight,)


def _evaluate(gm: fx.GraphModule, node: fx.Node, values: dict[fx.Node, Any]) -> Any:
    if node.op == "get_attr":
        return fetch_tensor(gm, str(node.target))
    args = fx.node.map_arg(node.args, values.__getitem__)
    kwargs = fx.node.map_arg(node.kwargs, values.__getitem__)
    if node.op == "call_module":
        return gm.get_submodule(str(node.target))(*args, **kwargs)
    if node.op == "call_method":
        return getattr(args[0], str(node.target))(*args[1:], **kwargs)
    return node.target(*args, **kwargs)  # type: ignore[operator]


def _ancestors(nodes: Iterable[fx.Node], constant: set[fx.Node]) -> set[fx.Node]:
    """`nodes` and every constant node they are computed from."""
    seen: set[fx.Node] = set()
    frontier = list(nodes)
    while frontier:
        current = frontier.pop()
        if current not in seen:
            seen.add(current)
            frontier.extend(p for p in current.all_input_nodes if p in constant)
    return seen


def _owner_of(node: fx.Node, constant: set[fx.Node]) -> str:
    """The path a folded value is stored under: the module its stored inputs share
    (`fc1.weight.codebook`, `fc1.weight.indices` → `fc1.weight`), or `` at the root."""
    if node.op == "call_module":
        return str(node.target)
    owners = [
        str(n.target).split(".")[:-1] for n in _ancestors([node], constant) if n.op == "get_attr"
    ]
    if not owners:
        return ""
    common = owners[0]
    for other in owners[1:]:
        while other[: len(common)] != common:
            common = common[:-1]
    return ".".join(common)


def _drop_unused(gm: fx.GraphModule, sources: set[str]) -> None:
    """Delete the folded values' sources that no node reads any more, then the modules they
    leave empty."""
    used = {str(n.target) for n in gm.graph.nodes if n.op in ("get_attr", "call_module")}
    emptied = set()
    for path in sorted(sources - used, key=lambda p: -p.count(".")):
        owner_path, _, leaf = path.rpartition(".")
        owner = gm.get_submodule(owner_path) if owner_path else gm
        if hasattr(owner, leaf):
            delattr(owner, leaf)
            emptied.add(owner_path)
    for path in sorted(emptied, key=lambda p: -p.count(".")):
        while path and path not in used:
            module = gm.get_submodule(path)
            if module._parameters or module._buffers or module._modules:
                break
            parent, _, leaf = path.rpartition(".")
            delattr(gm.get_submodule(parent) if parent else gm, leaf)
            path = parent


def _free_path(gm: fx.GraphModule, owner: str) -> str:
    """`owner` itself when nothing lives there any more, else a fresh `folded` name inside
    the nearest module on that path."""
    parts = owner.split(".") if owner else []
    holder: nn.Module = gm
    depth = 0
    for part in parts:
        child = holder._modules.get(part)
        if child is None:
            break
        holder, depth = child, depth + 1
    prefix = ".".join(parts[:depth])
    if depth == len(parts) - 1 and not hasattr(holder, parts[-1]):
        return owner
    name = "folded"
    while hasattr(holder, name):
        name = f"_{name}"
    return f"{prefix}.{name}" if prefix else name
