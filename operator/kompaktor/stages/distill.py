"""distill: train the student to match a teacher's softened outputs as well as the labels.

The student is the stage's input model, optionally made thinner first (`student.widthMultiplier`,
by the same channel surgery as structured pruning). The teacher is the job's input model, an
earlier stage's output, or any model URI. Loss (Hinton et al. 2015):
alpha·T²·KL(softmax(t/T) ‖ softmax(s/T)) + (1-alpha)·CE(s, y).
"""

from __future__ import annotations

import copy
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from kompaktor.errors import StageError
from kompaktor.stages.base import PlanContext, Stage, StageContext, StageParams, StageResult
from kompaktor.surgery import stored_elements, width_reduce
from kompaktor.surgery.batches import sample
from kompaktor.surgery.kernels import optional_kernel


class TeacherRef(StageParams):
    from_stage: str | None = Field(
        None, description="Name of an earlier stage whose output teaches."
    )
    uri: str | None = Field(
        None, description="Model URI of the teacher (filled in by the plan for fromStage)."
    )
    digest: str | None = Field(
        None,
        description="sha256 of the teacher, filled in by the plan so the cache key follows it.",
    )


class StudentSpec(StageParams):
    width_multiplier: float = Field(
        1.0,
        gt=0.0,
        le=1.0,
        description="Keep this fraction of every removable layer's channels before distilling.",
    )


class DistillParams(StageParams):
    teacher: TeacherRef = Field(
        default_factory=TeacherRef,
        description="The teacher: {fromStage: NAME}, {uri: URI}, or omitted for the job's "
        "input model.",
    )
    student: StudentSpec = Field(
        default_factory=StudentSpec, description="How to derive the student."
    )
    temperature: float = Field(4.0, gt=0.0, description="Softmax temperature T for soft targets.")
    alpha: float = Field(0.7, ge=0.0, le=1.0, description="Weight of the soft-target loss.")
    epochs: int = Field(5, ge=1, description="Training epochs.")
    lr: float = Field(1e-3, gt=0.0, description="Learning rate.")
    batch_size: int = Field(64, ge=1, description="Batch size.")


class DistillStage(Stage[DistillParams]):
    type: ClassVar[str] = "distill"
    Params = DistillParams

    def check(self, params: DistillParams, plan: PlanContext) -> None:
        source = params.teacher.from_stage
        if source is not None and source not in plan.earlier_stages:
            raise ValueError(f"params.teacher.fromStage: {source!r} is not an earlier stage")
        if plan.task != "classification":
            raise ValueError(
                f"distill needs a classification task (soft targets are class probabilities); "
                f"the dataset's task is {plan.task}"
            )

    def run(self, ctx: StageContext[DistillParams]) -> StageResult:
        p = ctx.params
        teacher = _teacher(ctx)
        student = copy.deepcopy(ctx.model.require_module("distill"))
        example = sample(ctx.dataset)
        before = stored_elements(student)
        if p.student.width_multiplier < 1.0:
            try:
                student, removed = width_reduce(student, p.student.width_multiplier, example)
            except TypeError as error:
                raise StageError(f"distill: params.student.widthMultiplier: {error}") from None
            ctx.log(f"distill: student has {removed} fewer channels")
        _check_shapes(teacher, student, example)
        from kompaktor.training import fit

        student = fit(
            student,
            ctx.dataset,
            epochs=p.epochs,
            lr=p.lr,
            batch_size=p.batch_size,
            seed=ctx.seed,
            loss_fn=_distill_loss(teacher, p.temperature, p.alpha),
            log=ctx.log,
        )
        metrics = {
            "parametersInput": float(before),
            "parametersStudent": float(stored_elements(student)),
            "parametersTeacher": float(stored_elements(teacher)),
        }
        return StageResult(module=student, metrics=metrics)


def _teacher(ctx: StageContext[DistillParams]) -> nn.Module:
    ref = ctx.params.teacher
    if ref.uri is not None:
        from kompaktor.models import load_model

        return load_model(ctx.resolve(ref.uri)).require_module("distill")
    if ref.from_stage is not None:
        raise StageError(
            f"distill: params.teacher.fromStage: {ref.from_stage!r} has no output URI; "
            "the plan should have filled params.teacher.uri"
        )
    return ctx.reference.require_module("distill")


def _check_shapes(
    teacher: nn.Module, student: nn.Module, example: tuple[torch.Tensor, ...]
) -> None:
    with torch.no_grad():
        t_shape, s_shape = tuple(teacher(*example).shape), tuple(student(*example).shape)
    if t_shape != s_shape:
        raise StageError(
            f"distill: params.teacher: the teacher's output shape {t_shape} does not match "
            f"the student's {s_shape} on a sample batch"
        )


def _distill_loss(teacher: nn.Module, temperature: float, alpha: float) -> Any:
    """fit's loss hook: the teacher's logits on the same batch, soft targets for the student.

    The teacher stays outside the trained module, so fit neither optimizes it nor switches
    its mode.
    """
    kd = optional_kernel("kd_loss") or kd_loss

    def loss_fn(
        student: nn.Module, inputs: tuple[torch.Tensor, ...], targets: torch.Tensor
    ) -> torch.Tensor:
        with torch.no_grad():
            soft = teacher(*inputs).detach()
        result: torch.Tensor = kd(student(*inputs), soft, targets, temperature, alpha)
        return result

    return loss_fn


def kd_loss(
    student: torch.Tensor,
    teacher: torch.Tensor,
    labels: torch.Tensor,
    temperature: float,
    alpha: float,
) -> torch.Tensor:
    """The distillation loss in plain PyTorch (what kompaktor_kernels.kd_loss fuses)."""
    soft = F.kl_div(
        F.log_softmax(student / temperature, dim=-1),
        F.log_softmax(teacher / temperature, dim=-1),
        log_target=True,
        reduction="batchmean",
    )
    return alpha * temperature**2 * soft + (1 - alpha) * F.cross_entropy(student, labels)
