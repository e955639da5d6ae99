"""prune: remove weights (magnitude, Taylor) or whole channels (structured), step by step.

Unstructured methods zero individual weights, exactly and for good (masks hold through
fine-tuning); `runtime: sparse` then swaps the pruned linear layers for the sparse kernels.
Structured pruning edits the exported graph so the model really has fewer channels, which
is what makes it smaller and faster on any runtime.
"""

from __future__ import annotations

import fnmatch
import warnings
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import Field, ValidationInfo, field_validator

from kompaktor.errors import StageError
from kompaktor.stages.base import PlanContext, Stage, StageContext, StageParams, StageResult

if TYPE_CHECKING:
    import torch
    from torch import fx, nn

    from kompaktor.stages.curves import Scorer


class PruneParams(StageParams):
    method: Literal["magnitude", "taylor", "structured"] = Field(
        "magnitude",
        description="magnitude: smallest |w|; taylor: smallest |w·dL/dw| (gradient-based); "
        "structured: remove whole conv channels / linear neurons (pt2 models only).",
    )
    scope: Literal["global", "layer"] | None = Field(
        None,
        description="magnitude/taylor: rank weights across all layers (global, the default) "
        "or prune each layer to the same sparsity (layer).",
    )
    sparsity: float = Field(
        description="Fraction to remove: of prunable weights (magnitude/taylor), or of each "
        "prunable layer's channels (structured). Strictly between 0 and 1."
    )
    steps: int = Field(
        1, ge=1, le=100, description="Prune in this many steps, fine-tuning between."
    )
    schedule: Literal["cubic", "linear"] = Field(
        "cubic", description="How the sparsity grows over the steps (cubic front-loads it)."
    )
    fine_tune_epochs: int = Field(1, ge=0, description="Epochs of fine-tuning after each step.")
    lr: float = Field(1e-3, gt=0, description="Fine-tuning learning rate.")
    batch_size: int = Field(64, ge=1, description="Fine-tuning and saliency batch size.")
    l1: float = Field(0.0, ge=0, description="L1 regularization strength while fine-tuning.")
    taylor_batches: int = Field(
        8, ge=1, description="Training batches averaged for Taylor saliency scores."
    )
    criterion: Literal["l1", "taylor"] | None = Field(
        None,
        description="structured only: rank channels by filter L1 norm (default) or by the "
        "Taylor score |Σ a·dL/da| of their activations.",
    )
    runtime: Literal["dense", "sparse"] = Field(
        "dense",
        description="sparse: run pruned linear layers with kompaktor_kernels' sparse kernel "
        "(magnitude/taylor only). Later train stages keep them sparse (zeros held); other "
        "stages but benchmark and hpo make them dense again.",
    )
    sparse_dtype: Literal["float32", "int8"] = Field(
        "float32",
        description="runtime sparse: the sparse layers' weights. float32 computes what the "
        "pruned layer does; int8 (per-channel weights, activations quantised per row at run "
        "time, exact int32 sums) is faster still and smaller, and takes layers from 50 % "
        "sparsity instead of 80 %.",
    )
    skip: tuple[str, ...] = Field(
        (), description="Layer names (glob patterns, e.g. 'features.0', 'head.*') to leave whole."
    )
    keep_output_layer: bool = Field(
        True, description="Leave the layer that produces the model's output whole."
    )

    @field_validator("sparsity")
    @classmethod
    def _open_interval(cls, value: float) -> float:
        if not 0.0 < value < 1.0:
            raise ValueError(f"must be in (0, 1) (got {value})")
        return value

    @field_validator("scope")
    @classmethod
    def _scope_unstructured(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is not None and info.data.get("method") == "structured":
            raise ValueError(
                "only applies to magnitude and taylor; structured removes the same fraction "
                "of channels from every prunable layer"
            )
        return value

    @field_validator("criterion")
    @classmethod
    def _criterion_structured(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is not None and info.data.get("method") != "structured":
            raise ValueError("only applies to method structured")
        return value

    @field_validator("sparse_dtype")
    @classmethod
    def _dtype_of_sparse(cls, value: str, info: ValidationInfo) -> str:
        if value != "float32" and info.data.get("runtime") != "sparse":
            raise ValueError("only applies to runtime sparse")
        return value

    @field_validator("runtime")
    @classmethod
    def _sparse_unstructured(cls, value: str, info: ValidationInfo) -> str:
        if value == "sparse" and info.data.get("method") == "structured":
            raise ValueError(
                "sparse needs an unstructured method (magnitude or taylor); structured "
                "pruning already leaves dense, smaller layers"
            )
        return value


class PruneStage(Stage[PruneParams]):
    type: ClassVar[str] = "prune"
    Params = PruneParams
    reports_curve: ClassVar[bool] = True

    def epochs(self, params: PruneParams) -> int:
        return params.steps * params.fine_tune_epochs

    def check(self, params: PruneParams, plan: PlanContext) -> None:
        if params.method == "structured" and plan.input_format != "pt2":
            raise ValueError(
                f"params.method: structured pruning needs a pt2 model (got {plan.input_format}): "
                "it rewrites the torch.export graph to drop channels, and a TorchScript or ONNX "
                "graph cannot be rewritten and re-exported that way"
            )
        if params.runtime == "sparse" and plan.input_format != "pt2":
            raise ValueError(
                f"params.runtime: sparse needs a pt2 model (got {plan.input_format}): it swaps "
                "the pruned layers of the torch.export graph for the sparse kernels' layers, "
                "which a TorchScript or ONNX graph cannot take"
            )

    def run(self, ctx: StageContext[PruneParams]) -> StageResult:
        from kompaktor.stages.curves import validation_scorer

        module = ctx.model.require_module("prune")
        # made once per run; no val split: no curve (train holds rows out)
        score = validation_scorer(ctx) if ctx.params.fine_tune_epochs else None
        if ctx.params.method == "structured":
            return _structured(ctx, module, score)
        return _unstructured(ctx, module, score)


def _unstructured(
    ctx: StageContext[PruneParams], module: nn.Module, score: Scorer | None
) -> StageResult:
    from kompaktor.surgery import (
        hold_masks,
        masks_for_sparsity,
        prunable_weights,
        sparsity_of,
        sparsity_schedule,
    )
    from kompaktor.surgery.masks import excluded_weights

    p = ctx.params
    weights = prunable_weights(module, p.skip, p.keep_output_layer)
    excluded = excluded_weights(module, p.skip, p.keep_output_layer)
    if not weights:
        raise StageError(f"prune: no conv/linear weights left to prune: {_why_none(excluded)}")
    masks: dict[str, torch.Tensor] = {}
    targets = sparsity_schedule(p.sparsity, p.steps, p.schedule)
    for step, target in enumerate(targets):
        scores = _weight_scores(ctx, module, weights)
        for name, mask in masks.items():  # once pruned, always pruned
            scores[name] = scores[name].masked_fill(~mask, -1.0)
        masks = masks_for_sparsity(scores, target, p.scope or "global")
        with hold_masks(weights, masks):
            stop = _fine_tune(ctx, module, step, score)
        ctx.log(f"prune: step {step + 1}/{p.steps}: sparsity {sparsity_of(weights):.4f}")
        ctx.report(step, sparsity_of(weights))
        if stop:
            break
    details: dict[str, Any] = {
        "layers": {name: round(sparsity_of({name: w}), 4) for name, w in weights.items()},
        "schedule": [round(t, 4) for t in targets],
        "notPruned": {why: names for why, names in excluded.items() if names},
    }
    metrics = {
        "sparsity": sparsity_of(weights),
        "prunableParameters": float(sum(w.numel() for w in weights.values())),
        "nonzeroParameters": float(sum(int((w != 0).sum()) for w in weights.values())),
    }
    if p.runtime == "sparse":
        module = _sparse_runtime(ctx, module, metrics, details)
    return StageResult(module=module, metrics=metrics, details=details)


def _why_none(excluded: Mapping[str, list[str]]) -> str:
    reasons = {
        "output": "params.keepOutputLayer keeps the output layer(s) {}",
        "skip": "params.skip names {}",
        "other": "only conv/linear `weight` matrices are pruned, not {}",
    }
    found = [reasons[why].format(", ".join(names)) for why, names in excluded.items() if names]
    return "; ".join(found) or "the model has no conv or linear layer"


def _weight_scores(
    ctx: StageContext[PruneParams], module: nn.Module, weights: Mapping[str, nn.Parameter]
) -> dict[str, torch.Tensor]:
    from kompaktor.surgery import magnitude_scores, taylor_scores
    from kompaktor.surgery.batches import batches, task_loss

    if ctx.params.method == "magnitude":
        return magnitude_scores(weights)
    data = batches(ctx.dataset, "train", ctx.params.batch_size, ctx.params.taylor_batches, ctx.seed)
    return taylor_scores(module, weights, data, task_loss(ctx.dataset))


def _structured(
    ctx: StageContext[PruneParams], module: nn.Module, score: Scorer | None
) -> StageResult:
    from kompaktor.surgery import (
        as_graph_module,
        channel_groups,
        keep_top,
        multiply_adds,
        remove_channels,
        sparsity_schedule,
        stored_elements,
    )
    from kompaktor.surgery.batches import sample
    from kompaktor.surgery.graph import pinned_layers

    p = ctx.params
    example = sample(ctx.dataset)
    try:
        gm = as_graph_module(module, example)
    except TypeError as error:
        raise StageError(f"prune: structured: {error}") from None
    names = _structured_layers(gm, example, p.skip)
    original = {name: group.channels for name, group in channel_groups(gm, example).items()}
    before, macs_before = stored_elements(gm), multiply_adds(gm, example)
    removed = 0
    for step, target in enumerate(sparsity_schedule(p.sparsity, p.steps, p.schedule)):
        groups = {n: g for n, g in channel_groups(gm, example).items() if n in names}
        scores = _channel_scores(ctx, gm, groups)
        keep = {n: keep_top(scores[n], original[n] - round(target * original[n])) for n in groups}
        removed += remove_channels(gm, groups, keep)
        stop = _fine_tune(ctx, gm, step, score)
        ctx.log(f"prune: step {step + 1}/{p.steps}: {removed} channels removed")
        ctx.report(step, float(removed))
        if stop:
            break
    after = channel_groups(gm, example)
    total = sum(original[n] for n in names)
    metrics = {
        "parametersBefore": float(before),
        "parametersAfter": float(stored_elements(gm)),
        "channelsRemoved": float(removed),
        "sparsity": removed / total,
        "multiplyAddsBefore": float(macs_before),
        "multiplyAddsAfter": float(multiply_adds(gm, example)),
    }
    details = {
        "channels": {n: [original[n], after[n].channels] for n in names if n in after},
        "notPruned": pinned_layers(gm, example),  # each layer left whole, and what keeps it
    }
    return StageResult(module=gm, metrics=metrics, details=details)


def _structured_layers(
    gm: fx.GraphModule, example: tuple[torch.Tensor, ...], skip: tuple[str, ...]
) -> list[str]:
    from kompaktor.surgery import channel_groups
    from kompaktor.surgery.graph import NO_REMOVABLE_CHANNELS, pinned_layers

    groups = channel_groups(gm, example)
    names = [n for n in groups if not any(fnmatch.fnmatchcase(n, pat) for pat in skip)]
    if not names:
        kept = "; ".join(f"{layer}: {why}" for layer, why in pinned_layers(gm, example).items())
        raise StageError(
            f"prune: structured: {NO_REMOVABLE_CHANNELS}, or params.skip names it"
            + (f" (what keeps each layer's channels: {kept})" if kept else "")
        )
    return names


def _channel_scores(
    ctx: StageContext[PruneParams], gm: fx.GraphModule, groups: Mapping[str, Any]
) -> dict[str, torch.Tensor]:
    from kompaktor.surgery import channel_l1_scores, channel_taylor_scores
    from kompaktor.surgery.batches import batches, task_loss

    if (ctx.params.criterion or "l1") == "l1":
        return channel_l1_scores(gm, groups)
    data = batches(ctx.dataset, "train", ctx.params.batch_size, ctx.params.taylor_batches, ctx.seed)
    return channel_taylor_scores(gm, groups, data, task_loss(ctx.dataset))


def _fine_tune(
    ctx: StageContext[PruneParams], module: nn.Module, step: int, score: Scorer | None
) -> bool:
    """Fine-tune in place (fit may hand back another object: its weights are copied back).

    Each epoch may add a point to the validation curve (`score`, made once per run; epochs
    counted across all steps); True means an HPO pruner stopped the trial, so no further step
    should run.
    """
    p = ctx.params
    if p.fine_tune_epochs == 0:
        return False
    from kompaktor.stages.curves import curve_callback
    from kompaktor.training import fit

    total = PruneStage().epochs(p)
    callback = curve_callback(ctx.curve, score, module, total, step * p.fine_tune_epochs)
    trained = fit(
        module,
        ctx.dataset,
        epochs=p.fine_tune_epochs,
        lr=p.lr,
        batch_size=p.batch_size,
        l1=p.l1,
        seed=ctx.seed + step,
        log=ctx.log,
        on_epoch=callback,
    )
    if trained is not module:
        module.load_state_dict(trained.state_dict())
    return ctx.curve.pruned


def _sparse_runtime(
    ctx: StageContext[PruneParams],
    module: nn.Module,
    metrics: dict[str, float],
    details: dict[str, Any],
) -> nn.Module:
    """Swap pruned linear layers for SparseLinear; stay dense if the kernels are missing."""
    import torch
    from torch import fx

    from kompaktor.surgery import chain_sparse_layouts, linear_modules
    from kompaktor.surgery.kernels import optional_kernel

    sparsify = optional_kernel("sparsify")
    if sparsify is None:
        ctx.log("prune: kompaktor_kernels.sparsify is not available; output stays dense")
        details["runtime"] = "dense (kompaktor_kernels not importable)"
        return module
    if isinstance(module, fx.GraphModule):
        linear_modules(module)
    # fp32 below ~80 % gains little on dense at batch 1 and holds more bytes than it once its
    # batches built their layouts; int8 is 3.9x dense fp32 already at 50 % (bench/kernels.py;
    # kernels/README.md, "Memory: layouts built on first need" and "Performance"). sparsify warns
    # about sparse layers it must keep dense; those belong in the stage's log.
    int8 = ctx.params.sparse_dtype == "int8"
    with warnings.catch_warnings(record=True) as kept:
        warnings.simplefilter("always")
        swapped = sparsify(
            module, dtype=torch.int8 if int8 else torch.float32, min_sparsity=0.5 if int8 else 0.8
        )
    for warning in kept:
        ctx.log(f"prune: {warning.message}")
    result = module if swapped is None else swapped
    count = sum(type(m).__name__ == "SparseLinear" for m in result.modules())
    metrics["sparseLayers"] = float(count)
    details["runtime"] = "sparse"
    if isinstance(result, fx.GraphModule):
        chained = chain_sparse_layouts(result)
        if chained:
            ctx.log(f"prune: {', '.join(chained)} hand on feature-major outputs to sparse layers")
            details["featureMajorOutputs"] = chained
    details["sparseDtype"] = ctx.params.sparse_dtype
    return result
