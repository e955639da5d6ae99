"""`train`: fine-tune the model on the train split (what HPO searches by default)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from kompaktor.stages.base import Stage, StageContext, StageParams, StageResult
from kompaktor.training import fit


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
    seed: int | None = Field(default=None, description="Overrides the job's seed.")


class TrainStage(Stage[TrainParams]):
    type = "train"
    Params = TrainParams

    def run(self, ctx: StageContext[TrainParams]) -> StageResult:
        p = ctx.params
        losses: list[float] = []
        module = fit(
            ctx.model.require_module(self.type),
            ctx.dataset,
            epochs=p.epochs,
            lr=p.lr,
            batch_size=p.batch_size,
            optimizer=p.optimizer,
            weight_decay=p.weight_decay,
            l1=p.l1,
            momentum=p.momentum,
            seed=ctx.seed if p.seed is None else p.seed,
            log=ctx.log,
            on_epoch=lambda _epoch, loss: losses.append(loss),
        )
        return StageResult(
            module=module,
            metrics={"finalLoss": losses[-1], "epochs": float(p.epochs)},
            details={"losses": losses},
        )
