"""Stages and the layers prune's `runtime: sparse` puts on kompaktor_kernels' sparse kernels.

In a loaded .pt2 those are calls of the kernels' ops on a holder's CSR buffers, which no stage
can train, prune, factor, cluster or export to ONNX, and which a stage looking for linear
layers would silently pass over. So each stage declares what it does with them
(`Stage.sparse_layers`):

- "run": leave them as they are (benchmark measures them; hpo hands its input to trials that
  are runs of their own);
- "fine-tune" (train): dense layers while the stage runs, their zero weights held at zero, and
  sparse again, of the same dtype, in its output;
- "densify" (the rest): dense layers from then on, zeros kept in the weights, so a later prune
  with `runtime: sparse` can swap them back.

Dense here is the form the export of a dense model has (`aten.linear` on weight and bias
parameters), so every stage sees the graph it already knows.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from kompaktor.stages.base import Stage, StageContext, StageResult

if TYPE_CHECKING:
    import torch
    from torch import fx

    from kompaktor.surgery.modules import SparseLayer


def run_with_sparse_layers(stage: Stage[Any], ctx: StageContext[Any]) -> StageResult:
    """`stage.run(ctx)`, its input's sparse layers handled as the stage declares."""
    from torch import fx

    from kompaktor.surgery import dense_sparse_linears, hold_masks

    module = ctx.model.module
    if not isinstance(module, fx.GraphModule):
        return stage.run(ctx)
    if stage.sparse_layers == "run":
        return _run_as_they_are(stage, ctx, module)
    dtypes = dense_sparse_linears(module)
    if not dtypes:
        return stage.run(ctx)
    names = f"{len(dtypes)} sparse layer(s) ({', '.join(dtypes)})"
    if stage.sparse_layers == "densify":
        ctx.log(
            f"{stage.type}: {names} made dense, zeros kept: this stage changes or exports "
            "their weights, which the sparse kernels hold as CSR buffers; a later prune with "
            "runtime: sparse makes them sparse again"
        )
        result = stage.run(ctx)
        result.details["sparseLayers"] = {"densified": list(dtypes)}
        return result
    ctx.log(f"{stage.type}: {names} trained dense with their zero weights held at zero")
    weights = {path: module.get_parameter(f"{path}.weight") for path in dtypes}
    with hold_masks(weights, {path: w != 0 for path, w in weights.items()}) as hold:
        result = stage.run(ctx)
        hold.apply()
    assert isinstance(result.module, fx.GraphModule), "a stage that fine-tunes returns its graph"
    _sparsify(result.module, dtypes)
    ctx.log(f"{stage.type}: {names} sparse again")
    result.details["sparseLayers"] = {"fineTuned": list(dtypes)}
    return result


def _run_as_they_are(stage: Stage[Any], ctx: StageContext[Any], gm: fx.GraphModule) -> StageResult:
    """The stage on its input as it is, naming the layers that run on the sparse kernels (what
    a benchmark's figures owe to them)."""
    from kompaktor.surgery import sparse_linears

    layers = sparse_linears(gm)
    if layers:
        described = ", ".join(_described(path, info) for path, info in layers.items())
        ctx.log(
            f"{stage.type}: {len(layers)} sparse layer(s) run on kompaktor_kernels: {described}"
        )
    result = stage.run(ctx)
    if layers:
        result.details["sparseLayers"] = {"run": layers}
    return result


def _described(path: str, layer: SparseLayer) -> str:
    shape = "×".join(map(str, layer["shape"]))
    chained = ", feature-major out" if layer["featureMajorOut"] else ""
    return f"{path} ({layer['dtype']}, {shape}, {layer['density']:.1%} stored{chained})"


def _sparsify(gm: fx.GraphModule, dtypes: dict[str, torch.dtype]) -> None:
    """Put SparseLinear layers of the given dtypes back at these paths, with the layouts
    prune chose between them."""
    from torch import nn

    from kompaktor.surgery import chain_sparse_layouts, linear_modules
    from kompaktor_kernels import SparseLinear

    linear_modules(gm)
    for path, dtype in dtypes.items():
        dense = gm.get_submodule(path)
        assert isinstance(dense, nn.Linear), f"{path} is a {type(dense).__name__}"
        sparse = SparseLinear.from_dense(dense, dtype)
        sparse.train(dense.training)
        gm.set_submodule(path, sparse)
    chain_sparse_layouts(gm)
