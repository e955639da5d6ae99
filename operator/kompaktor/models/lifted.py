"""Run an exported model without the per-call Python framing of `ExportedProgram.module()`.

That module reads every weight through nested `nn.Module` attribute lookups (≈1 µs each, three
per weight inside an `nn.Sequential`), checks its inputs' pytree structure and shape guards,
and flattens and unflattens inputs and outputs, all on every call: ≈50 µs for a three-layer
MLP in torch 2.13, more than its compute at batch 1, and more for layers with more tensors (a
sparse layer has six). A serving runtime (AOTInductor, ONNX Runtime) pays none of it per call,
so a benchmark that kept it would compare torch's framing as much as the models.

`lift_weights` rewrites the graph to take its weights as arguments (as the exported program's
own graph does), held in a tuple. Inputs of a signature (shapes, dtypes) it has not seen go
through the module itself once, so torch's guards still check every new shape; only repeats
take the lifted graph. Under `torch.inference_mode` that graph also calls kompaktor_kernels'
CPU kernels directly rather than through torch's dispatcher, which has to call back into Python
for them (≈8 µs a sparse layer).

Deployments can serve an exported model the same way:
`lift_weights(torch.export.load(path).module())`, called under `torch.inference_mode()`.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.utils._pytree as pytree
from torch import fx, nn

from kompaktor.surgery.graph import fetch_attr

#: The submodule through which an exported module checks its shape guards.
_GUARDS = "_guards_fn"


class LiftedGraph:
    """`module(*inputs)` with the weights passed as arguments; same outputs, same structure.

    The weights are the module's tensors when it was lifted: in-place updates (an optimizer
    step) show, tensors assigned anew do not, so lift again after replacing any."""

    def __init__(
        self,
        module: fx.GraphModule,
        graph: fx.GraphModule,
        eager: fx.GraphModule,
        weights: tuple[Any, ...],
        out_spec: pytree.TreeSpec,
    ) -> None:
        self.module = module
        self.graph = graph
        self.eager = eager  # with direct kernel calls: no autograd, so inference mode only
        self.weights = weights
        self.out_spec = out_spec
        self.checked: set[tuple[Any, ...]] = set()

    def __call__(self, *inputs: Any) -> Any:
        signature = tuple((x.shape, x.dtype) if isinstance(x, torch.Tensor) else x for x in inputs)
        if signature not in self.checked:
            out = self.module(*inputs)  # torch's own checks, once per signature
            self.checked.add(signature)
            return out
        graph = self.eager if torch.is_inference_mode_enabled() else self.graph
        flat = graph(*inputs, *self.weights)
        return pytree.tree_unflatten(list(flat), self.out_spec)


def lift_weights(module: nn.Module) -> LiftedGraph | None:
    """The lifted form of an exported module called with positional tensors; None for any other
    module (eager, TorchScript, keyword inputs, submodule calls), which then runs as it is."""
    out_spec = _out_spec_of_positional(module)
    if out_spec is None:
        return None
    assert isinstance(module, fx.GraphModule)
    source = module.graph
    if any(node.target != _GUARDS or node.users for node in source.find_nodes(op="call_module")):
        return None
    used = {
        op: kernel
        for op, kernel in _eager_kernels().items()
        if source.find_nodes(op="call_function", target=op)
    }
    graph = _lifted(source, {})
    weights = tuple(fetch_attr(module, str(n.target)) for n in source.find_nodes(op="get_attr"))
    return LiftedGraph(module, graph, _lifted(source, used) if used else graph, weights, out_spec)


def _lifted(source: fx.Graph, kernels: Mapping[Any, Callable[..., Any]]) -> fx.GraphModule:
    """`source` with its user inputs, then each get_attr node, as placeholders, without its
    guards call (the lifted graph runs only on signatures the guards passed), and with the
    targets in `kernels` replaced."""
    graph = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    for node in source.find_nodes(op="placeholder"):
        env[node] = graph.placeholder(node.name)
    for node in source.find_nodes(op="get_attr"):
        env[node] = graph.placeholder(node.name)
    for node in source.nodes:
        if node.op in ("placeholder", "get_attr", "call_module"):
            continue
        if node.op == "output":
            graph.output(fx.map_arg(node.args[0], env.__getitem__))
            break
        copied = graph.node_copy(node, env.__getitem__)
        if node.op == "call_function" and node.target in kernels:
            copied.target = kernels[node.target]
        env[node] = copied
    return fx.GraphModule(nn.Module(), graph)  # a plain CodeGen: flat inputs and outputs


def _eager_kernels() -> Mapping[Any, Callable[..., Any]]:
    """kompaktor_kernels' ops and their CPU kernels. A graph can only call those ops once the
    package is imported (loading it registers them), so it is not imported here."""
    kernels = sys.modules.get("kompaktor_kernels")
    return getattr(kernels, "EAGER_CPU_KERNELS", {}) if kernels is not None else {}


def _out_spec_of_positional(module: nn.Module) -> pytree.TreeSpec | None:
    """An exported module's output structure, if its inputs are positional leaves only
    (`(args, {})`); None otherwise."""
    spec = getattr(module, "_in_spec", None)
    out_spec = getattr(module, "_out_spec", None)
    if not isinstance(module, fx.GraphModule) or not isinstance(spec, pytree.TreeSpec):
        return None
    args, kwargs = spec.children()
    positional = kwargs.num_leaves == 0 and all(child.is_leaf() for child in args.children())
    return out_spec if positional and isinstance(out_spec, pytree.TreeSpec) else None
