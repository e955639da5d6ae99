"""The losses and modules the distill stage trains with (Hinton et al. 2015; FitNets).

Soft targets: alpha·T²·KL(softmax(t/T) ‖ softmax(s/T)) + (1-alpha)·CE(s, y), through
kompaktor_kernels' fused kd_loss when it is built. Feature matching adds, for matched pairs of
hidden layers, the student's squared error relative to the teacher's features, with a learned
projection where the student is thinner. Nothing here knows about stages, params or jobs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from kompaktor.surgery.features import HiddenLayer
from kompaktor.surgery.kernels import optional_kernel
from kompaktor.training import LossFn


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


def soft_target_loss(teacher: nn.Module, temperature: float, alpha: float) -> LossFn:
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


@dataclass
class MatchedPair:
    """A teacher layer and the student layer whose output is pulled towards it."""

    teacher: HiddenLayer
    student: HiddenLayer
    projection: str | None  # key into the projections, when the widths differ


@dataclass
class FeatureMatch:
    """Matched layers, the views that expose them, and the student→teacher projections."""

    pairs: list[MatchedPair]
    teacher_view: fx.GraphModule
    student_view: fx.GraphModule
    projections: nn.ModuleDict
    skipped: list[str] = field(default_factory=list)

    def report(self) -> list[dict[str, Any]]:
        return [
            {
                "teacher": pair.teacher.name,
                "student": pair.student.name,
                "width": [pair.student.width, pair.teacher.width],
                "projection": pair.projection is not None,
            }
            for pair in self.pairs
        ]


class WithProjections(nn.Module):
    """What fit trains: the student plus the projections (so the optimizer sees both); its
    forward is the student's. Only the student is exported."""

    def __init__(self, student: nn.Module, projections: nn.ModuleDict) -> None:
        super().__init__()
        self.student = student
        self.projections = projections

    def forward(self, *inputs: torch.Tensor) -> Any:
        return self.student(*inputs)


def feature_loss(match: FeatureMatch, temperature: float, alpha: float, weight: float) -> LossFn:
    """The distillation loss plus weight × the mean over pairs of the features' relative MSE."""
    kd = optional_kernel("kd_loss") or kd_loss

    def loss_fn(
        module: nn.Module, inputs: tuple[torch.Tensor, ...], targets: torch.Tensor
    ) -> torch.Tensor:
        with torch.no_grad():
            soft, *t_features = match.teacher_view(*inputs)
        logits, *s_features = match.student_view(*inputs)
        result: torch.Tensor = kd(logits, soft.detach(), targets, temperature, alpha)
        distances = []
        for pair, s_value, t_value in zip(match.pairs, s_features, t_features, strict=True):
            if pair.projection is not None:
                dim = pair.student.channel_dim
                s_value = match.projections[pair.projection](s_value.movedim(dim, -1))
                t_value = t_value.movedim(dim, -1)
            target = t_value.detach()
            scale = target.pow(2).mean().clamp(min=1e-12)  # layers of any scale weigh alike
            distances.append(F.mse_loss(s_value, target) / scale)
        return result + weight * torch.stack(distances).mean()

    return loss_fn
