"""Fused distillation loss: forward and gradient in one streaming pass over the logits.

The eager composition materialises several full [rows, vocab] tensors (scaled logits, two
log-softmaxes, the KL terms, the CE log-softmax, and as many again in backward). The kernel
keeps per-row statistics only and writes the gradient w.r.t. the student logits during the
forward pass, so the only full-size allocation is that gradient, which backward scales in
place."""

from __future__ import annotations

import math

import torch

from kompaktor_kernels import _checks, _native
from kompaktor_kernels._dispatch import num_threads
from kompaktor_kernels._library import LIB, NAMESPACE

LIB.define(
    "kd_loss(Tensor student, Tensor teacher, Tensor labels, float temperature, float alpha, "
    "bool compute_grad) -> (Tensor, Tensor)"
)


def _validate(
    student: torch.Tensor,
    teacher: torch.Tensor,
    labels: torch.Tensor,
    temperature: float,
    alpha: float,
) -> None:
    for name, t in (("student_logits", student), ("teacher_logits", teacher), ("labels", labels)):
        _checks.tensor(name, t)
        _checks.cpu_dense(name, t)
    _checks.dtype("student_logits", student, torch.float32)
    _checks.dtype("teacher_logits", teacher, torch.float32)
    _checks.dtype("labels", labels, torch.int64)
    if student.dim() != 2:
        raise ValueError(f"student_logits must be 2-D [rows, vocab], got {tuple(student.shape)}")
    if teacher.shape != student.shape:
        raise ValueError(
            f"teacher_logits shape {tuple(teacher.shape)} differs from student_logits "
            f"shape {tuple(student.shape)}"
        )
    rows, vocab = student.shape
    if rows == 0 or vocab == 0:
        raise ValueError(f"logits must be non-empty, got shape {tuple(student.shape)}")
    if labels.shape != (rows,):
        raise ValueError(f"labels must have shape ({rows},), got {tuple(labels.shape)}")
    for name, t in (("student_logits", student), ("teacher_logits", teacher), ("labels", labels)):
        _checks.contiguous(name, t)
    if not (math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be a positive finite number, got {temperature}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1], got {alpha}")
    lo, hi = int(labels.min()), int(labels.max())
    if lo < 0 or hi >= vocab:
        raise ValueError(f"labels must lie in [0, {vocab}), got values in [{lo}, {hi}]")


def _kd_loss_cpu(
    student: torch.Tensor,
    teacher: torch.Tensor,
    labels: torch.Tensor,
    temperature: float,
    alpha: float,
    compute_grad: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    _validate(student, teacher, labels, temperature, alpha)
    grad = torch.empty_like(student) if compute_grad else student.new_empty((0,))
    total = _native.kd_loss(
        student,
        teacher,
        labels,
        float(temperature),
        float(alpha),
        grad if compute_grad else None,
        num_threads(),
    )
    loss = torch.tensor(total / student.shape[0], dtype=torch.float32)
    return loss, grad


LIB.impl("kd_loss", _kd_loss_cpu, "CPU")


@torch.library.register_fake(f"{NAMESPACE}::kd_loss")
def _kd_loss_fake(
    student: torch.Tensor,
    teacher: torch.Tensor,
    labels: torch.Tensor,
    temperature: float,
    alpha: float,
    compute_grad: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    torch._check(student.dim() == 2, lambda: "student_logits must be 2-D")
    grad = student.new_empty(student.shape) if compute_grad else student.new_empty((0,))
    return student.new_empty(()), grad


def _setup(
    ctx: torch.autograd.function.FunctionCtx,
    inputs: tuple[object, ...],
    output: tuple[torch.Tensor, torch.Tensor],
) -> None:
    ctx.save_for_backward(output[1])


def _backward(
    ctx: torch.autograd.function.FunctionCtx, grad_loss: torch.Tensor, _grad_grad: torch.Tensor
) -> tuple[torch.Tensor | None, ...]:
    (grad,) = ctx.saved_tensors  # type: ignore[attr-defined]
    if grad.numel() == 0:
        raise RuntimeError("kd_loss was called with compute_grad=False; no gradient is stored")
    if torch.compiler.is_compiling():
        scaled = grad * grad_loss
    else:
        # In place: the stored gradient is private to this node, and reusing it keeps the peak
        # at one [rows, vocab] tensor. A second backward through the same graph
        # (retain_graph=True) fails loudly via autograd's version check.
        scaled = grad.mul_(grad_loss)
    return scaled, None, None, None, None, None


torch.library.register_autograd(f"{NAMESPACE}::kd_loss", _backward, setup_context=_setup)


def kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    temperature: float = 1.0,
    alpha: float = 0.5,
) -> torch.Tensor:
    """alpha·T²·KL(teacher ‖ student, both at temperature T) + (1-alpha)·CE(student, labels),
    averaged over rows; differentiable w.r.t. the student logits (the teacher is a constant).

    Same value as `reference.kd_loss_reference` within float rounding."""
    _validate(student_logits, teacher_logits, labels, temperature, alpha)
    compute_grad = torch.is_grad_enabled() and student_logits.requires_grad
    loss, _ = torch.ops.kompaktor_kernels.kd_loss(
        student_logits, teacher_logits, labels, float(temperature), float(alpha), compute_grad
    )
    return loss  # type: ignore[no-any-return]
