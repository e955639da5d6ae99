"""compress: low-rank factorization (truncated SVD) or weight sharing (k-means), then fine-tune.

Low-rank rewrites the exported graph so the model really holds fewer parameters and does
fewer multiply-adds; weight sharing leaves each layer with at most `clusters` distinct values
and stores it that way: a k-entry codebook and packed integer indices (4 bits each for k ≤ 16),
gathered into the float weight on each call (`kompaktor.compression.codebook`), so the saved
model really is smaller; a layer too small for that to pay for its decoding graph keeps its
float weight, still with `clusters` values (`details.storedDense`). It is not faster: the
layers still compute in float. Its fine-tuning trains the codebooks with the indices fixed
(`kompaktor.compression.sharing.train_codebooks`), so the model stays exactly shared, and is
kept only if it does not lower the job's metric on the validation rows (`details.fineTune`
says which model was kept).

Low-rank takes linear and conv1d/2d/3d layers, grouped convolutions group by group; each
layer it leaves whole is in `details.ranks` with its `reason` (a depthwise convolution, a tied
weight, params.skip, a rank that saves nothing) and in the log.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import Field, model_validator

from kompaktor.errors import StageError
from kompaktor.stages.base import PlanContext, Stage, StageContext, StageParams, StageResult

if TYPE_CHECKING:
    from torch import nn

    from kompaktor.compression.lowrank import Factorized
    from kompaktor.compression.sharing import Shared


class CompressParams(StageParams):
    method: Literal["lowrank", "weightsharing"] = Field(
        "lowrank",
        description="lowrank: factorize linear and conv (1-, 2-, 3-d; grouped ones group by "
        "group) weights by truncated SVD, reporting each layer left whole and why in "
        "details.ranks; weightsharing: cluster each layer's weights into `clusters` shared "
        "values.",
    )
    energy: float | None = Field(
        None,
        description="lowrank: keep the smallest rank whose singular values hold this share "
        "of the layer's energy (Σσ²), in (0, 1]. The default when no rank rule is given: 0.9.",
    )
    ratio: float | None = Field(
        None,
        description="lowrank: instead of energy, the share of each layer's parameters the two "
        "factors may hold, in (0, 1).",
    )
    rank: int | None = Field(
        None, ge=1, description="lowrank: instead of energy, one rank for every layer."
    )
    clusters: int = Field(16, ge=2, le=256, description="weightsharing: values per layer.")
    fine_tune_epochs: int = Field(1, ge=0, description="Epochs of fine-tuning afterwards.")
    lr: float = Field(1e-3, gt=0, description="Fine-tuning learning rate.")
    batch_size: int = Field(64, ge=1, description="Fine-tuning batch size.")
    skip: tuple[str, ...] = Field(
        (), description="Layer names (glob patterns, e.g. 'fc2', 'head.*') to leave as they are."
    )

    @model_validator(mode="after")
    def _one_rank_rule(self) -> CompressParams:
        given = [n for n in ("energy", "ratio", "rank") if getattr(self, n) is not None]
        if len(given) > 1:
            raise ValueError(f"give one of energy, ratio, rank (got {', '.join(given)})")
        if given and self.method != "lowrank":
            raise ValueError(f"{given[0]} only applies to method lowrank")
        if self.energy is not None and not 0.0 < self.energy <= 1.0:
            raise ValueError(f"energy must be in (0, 1] (got {self.energy})")
        if self.ratio is not None and not 0.0 < self.ratio < 1.0:
            raise ValueError(f"ratio must be in (0, 1) (got {self.ratio})")
        return self


class CompressStage(Stage[CompressParams]):
    Params: ClassVar[type[StageParams]] = CompressParams
    type: ClassVar[str] = "compress"

    def check(self, params: CompressParams, plan: PlanContext) -> None:
        if plan.input_format != "pt2":
            raise ValueError(
                f"params.method: {params.method} needs a pt2 model (got {plan.input_format}): "
                "it rewrites the torch.export graph, which TorchScript cannot be"
            )

    def run(self, ctx: StageContext[CompressParams]) -> StageResult:
        module = ctx.model.require_module("compress")
        if ctx.params.method == "lowrank":
            return _lowrank(ctx, module)
        return _weightsharing(ctx, module)


def _lowrank(ctx: StageContext[CompressParams], module: nn.Module) -> StageResult:
    from kompaktor.compression import factorize
    from kompaktor.surgery import as_graph_module, stored_elements
    from kompaktor.surgery.batches import sample

    p = ctx.params
    example = sample(ctx.dataset)
    try:
        gm = as_graph_module(copy.deepcopy(module), example)
    except TypeError as error:
        raise StageError(f"compress: lowrank: {error}") from None
    before = stored_elements(gm)
    energy = 0.9 if p.energy is p.ratio is p.rank is None else p.energy
    try:
        layers = factorize(gm, energy=energy, ratio=p.ratio, rank=p.rank, skip=p.skip)
    except ValueError as error:
        raise StageError(f"compress: {error}") from None
    replaced = [f for f in layers if f.replaced]
    if not replaced:
        ctx.log("compress: no layer gets smaller at this rank rule; the model is unchanged")
    left = [f for f in layers if not f.replaced]
    if left:
        reasons = "; ".join(f"{f.layer}: {f.reason}" for f in left)
        ctx.log(f"compress: lowrank: {len(left)} layer(s) left as they are ({reasons})")
    _fine_tune(ctx, gm)
    after = stored_elements(gm)
    metrics = {
        "parametersBefore": float(before),
        "parametersAfter": float(after),
        "layersFactorized": float(len(replaced)),
        "energyKept": _energy_kept(replaced),
    }
    details = {
        "ranks": {f.layer: _rank_details(f) for f in layers},
        "rule": {"energy": energy}
        if energy is not None
        else {"ratio": p.ratio}
        if p.ratio
        else {"rank": p.rank},
    }
    ctx.log(f"compress: lowrank: {before} -> {after} parameters, {len(replaced)} layers factorized")
    return StageResult(module=gm, metrics=metrics, details=details)


def _energy_kept(replaced: list[Factorized]) -> float:
    """Each factorized layer's kept energy, weighted by its full rank (all groups): 1 if none."""
    total = sum(f.full_rank * f.groups for f in replaced)
    return sum(f.energy_kept * f.full_rank * f.groups for f in replaced) / total if total else 1.0


def _rank_details(f: Factorized) -> dict[str, Any]:
    """One layer in details.ranks; a layer left whole says why (`reason`), a grouped
    convolution its `groups` (its ranks are then per group)."""
    entry: dict[str, Any] = {
        "rank": f.rank,
        "fullRank": f.full_rank,
        "energyKept": round(f.energy_kept, 6),
        "factorized": f.replaced,
    }
    if f.groups > 1:
        entry["groups"] = f.groups
    if f.reason is not None:
        entry["reason"] = f.reason
    return entry


def _weightsharing(ctx: StageContext[CompressParams], module: nn.Module) -> StageResult:
    from kompaktor.compression import share_weights
    from kompaktor.compression.codebook import encode, worth_encoding
    from kompaktor.compression.sharing import sharable_weights
    from kompaktor.surgery import as_graph_module, stored_elements
    from kompaktor.surgery.batches import sample

    p = ctx.params
    try:
        gm = as_graph_module(copy.deepcopy(module), sample(ctx.dataset))
    except TypeError as error:
        raise StageError(f"compress: weightsharing: {error}") from None
    before_elements, before_bytes = stored_elements(gm), stored_bytes(gm)
    weights = sharable_weights(gm, p.skip)
    if not weights:
        raise StageError(
            "compress: weightsharing: no conv/linear weights to share (check params.skip)"
        )
    shared = share_weights(weights, p.clusters)
    tuning: dict[str, Any] = {}
    if p.fine_tune_epochs:
        shared, tuning = _tune_codebooks(ctx, gm, shared)
    worth = [worth_encoding(s) for s in shared]
    encoded = encode(gm, [s for s, w in zip(shared, worth, strict=True) if w])
    dense = [s for s, w in zip(shared, worth, strict=True) if not w]
    count = sum(s.indices.numel() for s in shared)
    codebook_bytes = sum(e.stored_bytes for e in encoded.values())
    dense_bytes = sum(s.indices.numel() * s.codebook.element_size() for s in dense)
    metrics = {
        "parametersBefore": float(before_elements),
        "parametersAfter": float(stored_elements(gm)),
        "clusters": float(p.clusters),
        "bitsPerWeight": 8 * (codebook_bytes + dense_bytes) / count,
        "sharedWeights": float(count),
        "codebookBytes": float(codebook_bytes),
        "layersStoredDense": float(len(dense)),
        "storedBytesBefore": float(before_bytes),
        "storedBytesAfter": float(stored_bytes(gm)),
    }
    details = {
        "clusters": {s.layer: len(s.codebook) for s in shared},
        "indexBits": {path.removesuffix(".weight"): e.bits for path, e in encoded.items()},
        "storedDense": [s.layer for s in dense],
        "codebooks": {s.layer: [round(float(v), 8) for v in s.codebook] for s in shared},
    }
    if tuning:
        details["fineTune"] = tuning
    ctx.log(
        f"compress: weightsharing: {len(shared)} layers, {metrics['bitsPerWeight']:.2f} bits "
        f"per weight; stored tensors {before_bytes} -> {metrics['storedBytesAfter']:.0f} bytes"
    )
    if dense:
        ctx.log(_dense_note(dense, bool(encoded)))
    return StageResult(module=gm, metrics=metrics, details=details)


def _dense_note(dense: list[Shared], any_encoded: bool) -> str:
    """What the log says of layers stored as floats: which, why, and what it means."""
    from kompaktor.compression.codebook import decoding_overhead, index_bits

    names = ", ".join(s.layer for s in dense)
    first = dense[0].codebook
    graph = decoding_overhead(index_bits(len(first)), first.dtype)
    why = (
        f"a codebook and indices, with the graph that decodes them (≈{graph} bytes a layer in "
        "the .pt2), would take more room than the layer's float weights"
    )
    if not any_encoded:
        return (
            f"compress: weightsharing: warning: the model will not get smaller: no layer "
            f"({names}) is large enough: {why}. Each holds at most params.clusters values but "
            "stays stored as floats. Weight sharing shrinks layers of a few thousand weights "
            "or more; to shrink this model, use quantize instead"
        )
    return (
        f"compress: weightsharing: {len(dense)} small layer(s) ({names}) stored as floats, "
        f"each with at most params.clusters values: {why}. A later stage trains them as "
        "free weights"
    )


def _tune_codebooks(
    ctx: StageContext[CompressParams], gm: nn.Module, shared: list[Shared]
) -> tuple[list[Shared], dict[str, Any]]:
    """Fine-tune the codebooks (indices fixed: the model stays exactly shared), then keep the
    tuned model only if the job's metric on validation rows is no worse than before tuning."""
    from kompaktor.compression.sharing import train_codebooks
    from kompaktor.evaluate import higher_is_better
    from kompaktor.models.predict import TorchPredictor
    from kompaktor.stages.curves import validation_scorer

    p = ctx.params
    summary: dict[str, Any] = {"epochs": p.fine_tune_epochs, "lr": p.lr}

    # Only the codebooks train: also training the unshared parameters (biases, norm scales)
    # gained nothing on BatchNorm CNNs. BatchNorm keeps its statistics (the exported graph is
    # in inference mode); at the default lr 1e-3 that costs nothing, measured on digits
    # ResNet/CNN/MLP/transformer models (3e-3 diverged the ResNet; the check below catches it).
    def tune() -> list[Shared]:
        return train_codebooks(gm, shared, lambda module: _fine_tune(ctx, module))

    score = validation_scorer(ctx)
    if score is None:
        ctx.log("compress: no validation rows to check the fine-tuning on; keeping it")
        return tune(), {**summary, "kept": "fineTuned", "reason": "no validation rows"}
    saved = {k: v.clone() for k, v in gm.state_dict().items()}
    before = score(TorchPredictor(gm))
    tuned = tune()
    after = score(TorchPredictor(gm))
    summary |= {"valMetricBefore": before, "valMetricAfter": after}
    if after >= before if higher_is_better(ctx.metric) else after <= before:
        ctx.log(
            f"compress: fine-tuned codebooks: validation {ctx.metric} {before:.4g} -> {after:.4g}"
        )
        return tuned, {**summary, "kept": "fineTuned"}
    gm.load_state_dict(saved)
    ctx.log(
        f"compress: fine-tuning lowered validation {ctx.metric} ({before:.4g} -> {after:.4g}); "
        "keeping the shared model without it"
    )
    return shared, {**summary, "kept": "sharedOnly"}


def stored_bytes(module: nn.Module) -> int:
    """Bytes of the module's parameters and buffers (what a saved model stores)."""
    return sum(t.numel() * t.element_size() for t in [*module.parameters(), *module.buffers()])


def _fine_tune(ctx: StageContext[CompressParams], module: nn.Module) -> None:
    p = ctx.params
    if p.fine_tune_epochs == 0:
        return
    from kompaktor.training import fit

    trained = fit(
        module,
        ctx.dataset,
        epochs=p.fine_tune_epochs,
        lr=p.lr,
        batch_size=p.batch_size,
        seed=ctx.seed,
        log=ctx.log,
    )
    if trained is not module:
        module.load_state_dict(trained.state_dict())
