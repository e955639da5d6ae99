"""`train`: fine-tune the model on the train split (what HPO searches by default).

After each epoch the job's metric is measured on validation rows (`StageContext.curve`): the
dataset's val split, or, when it has none, `validationFraction` of the train rows held out (a
draw seeded by the run's seed) and never trained on. HPO ranks trials by that figure and its
pruners stop a trial whose curve falls behind.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field

from kompaktor.stages.base import SparseLayers, Stage, StageContext, StageParams, StageResult


class TrainParams(StageParams):
    epochs: int = Field(default=5, ge=1, description="Passes over the train split.")
    lr: float = Field(default=1e-3, gt=0, description="Learning rate.")
    batch_size: int = Field(default=64, ge=1, description="Rows per optimizer step.")
    optimizer: Literal["adam", "adamw", "sgd"] = Field(
        default="adam", description="adam and sgd apply weightDecay as L2; adamw decouples it."
    )
    momentum: float = Field(default=0.0, ge=0, lt=1, description="SGD momentum.")
    weight_decay: float = Field(default=0.0, ge=0, description="L2 regularization strength.")
    l1: float = Field(default=0.0, ge=0, description="L1 regularization: l1 × Σ|w| is added.")
    validation_fraction: float = Field(
        default=0.15,
        gt=0,
        lt=1,
        description="Share of the train rows held out to validate on when the dataset has no "
        "val split (a draw seeded by the run's seed).",
    )
    seed: int | None = Field(default=None, description="Overrides the job's seed.")


class TrainStage(Stage[TrainParams]):
    type = "train"
    Params = TrainParams
    sparse_layers: ClassVar[SparseLayers] = "fine-tune"
    reports_curve: ClassVar[bool] = True

    def epochs(self, params: TrainParams) -> int:
        return params.epochs

    def run(self, ctx: StageContext[TrainParams]) -> StageResult:
        from kompaktor.models import predictor_for
        from kompaktor.models.predict import TorchPredictor
        from kompaktor.stages.curves import curve_callback, validation_scorer
        from kompaktor.training import fit

        p = ctx.params
        seed = ctx.seed if p.seed is None else p.seed
        data = ctx.dataset.with_validation(p.validation_fraction, seed)
        held_out = data is not ctx.dataset
        score_val = validation_scorer(ctx, data)
        losses: list[float] = []
        module = ctx.model.require_module(self.type)
        curve_point = curve_callback(ctx.curve, score_val, module, p.epochs)

        def on_epoch(epoch: int, loss: float) -> bool:
            losses.append(loss)
            return curve_point is not None and curve_point(epoch, loss)

        module = fit(
            module,
            data,
            epochs=p.epochs,
            lr=p.lr,
            batch_size=p.batch_size,
            optimizer=p.optimizer,
            weight_decay=p.weight_decay,
            l1=p.l1,
            momentum=p.momentum,
            seed=seed,
            log=ctx.log,
            on_epoch=on_epoch,
        )
        metrics = {"finalLoss": losses[-1], "epochs": float(len(losses))}
        details: dict[str, Any] = {"losses": losses}
        if held_out:  # the runner measures the dataset's val split; this one is ours
            assert score_val is not None  # held-out rows are validation rows
            metrics["valMetric"] = score_val(TorchPredictor(module))
            metrics["referenceValMetric"] = score_val(predictor_for(ctx.reference))
            details["validationRows"] = len(data.targets("val"))
        return StageResult(module=module, metrics=metrics, details=details)
