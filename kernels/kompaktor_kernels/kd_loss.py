"""Fused distillation loss: forward and gradient in one streaming pass over the logits.

The eager composition materialises several full [rows, vocab] tensors (scaled logits, two
log-softmaxes, the KL terms, the CE log-softmax, and as many again in backward). The kernel
keeps per-row statistics only and writes the gradient w.r.t. the student logits during the
forward pass, so the only full-size allocation is that gradient, which backward scales in
place."""

from __future__ import annotations

import torch

from kompaktor_kernels import _checks, _native
from kompaktor_kernels._dispatch import num_threads
from kompaktor_kernels._library import NAMESPACE, check, define, impl_cpu, register_fake

define(
    "kd_loss(Tensor student, Tensor teacher, Tensor labels, float temperature, float alpha, "
    "int ignore_index, bool compute_grad) -> (Tensor, Tensor)"
)


_F32_TINY, _F32_MAX = torch.finfo(torch.float32).tiny, torch.finfo(torch.float32).max


def _validate(
    student: torch.Tensor,
    teacher: torch.Tensor,
    labels: torch.Tensor,
    temperature: float,
    alpha: float,
    ignore_index: int,
    check_labels: bool = True,
) -> None:
    """Structure, dtypes and scalars of [..., vocab] logits and [...] labels; label values too
    unless tracing (they are data)."""
    for name, t in (("student_logits", student), ("teacher_logits", teacher), ("labels", labels)):
        _checks.tensor(name, t)
        _checks.cpu_dense(name, t)
    _checks.dtype("student_logits", student, torch.float32)
    _checks.dtype("teacher_logits", teacher, torch.float32)
    _checks.dtype("labels", labels, torch.int64)
    if student.dim() < 2:
        raise ValueError(
            f"student_logits must be [rows, vocab] or [..., vocab], got {tuple(student.shape)}"
        )
    if teacher.shape != student.shape:
        raise ValueError(
            f"teacher_logits shape {tuple(teacher.shape)} differs from student_logits "
            f"shape {tuple(student.shape)}"
        )
    if student.numel() == 0:
        raise ValueError(f"logits must be non-empty, got shape {tuple(student.shape)}")
    if labels.shape != student.shape[:-1]:
        raise ValueError(
            f"labels must have shape {tuple(student.shape[:-1])}, got {tuple(labels.shape)}"
        )
    for name, t in (("student_logits", student), ("teacher_logits", teacher), ("labels", labels)):
        _checks.contiguous(name, t)
    if not _F32_TINY <= temperature <= _F32_MAX:  # the kernel computes 1/T in float32
        raise ValueError(
            f"temperature must be a positive finite float32 in [{_F32_TINY:.3g}, "
            f"{_F32_MAX:.3g}], got {temperature}"
        )
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1], got {alpha}")
    if not check_labels:
        return
    vocab = student.shape[-1]
    counted = labels[labels != ignore_index]
    if counted.numel() == 0:
        return
    lo, hi = int(counted.min()), int(counted.max())
    if lo < 0 or hi >= vocab:
        raise ValueError(
            f"labels must lie in [0, {vocab}) or equal ignore_index ({ignore_index}), "
            f"got values in [{lo}, {hi}]"
        )


def _kd_loss_cpu(
    student: torch.Tensor,
    teacher: torch.Tensor,
    labels: torch.Tensor,
    temperature: float,
    alpha: float,
    ignore_index: int,
    compute_grad: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    _validate(student, teacher, labels, temperature, alpha, ignore_index)
    check(student.dim() == 2, "the kd_loss op takes 2-D logits (kd_loss flattens the rest)")
    grad = torch.empty_like(student) if compute_grad else student.new_empty((0,))
    # detach(): DLPack refuses tensors that require grad, and nanobind would then fall back to a
    # converting copy of the whole logits tensor.
    mean = _native.kd_loss(
        student.detach(),
        teacher.detach(),
        labels,
        float(temperature),
        float(alpha),
        int(ignore_index),
        grad if compute_grad else None,
        num_threads(),
    )
    return torch.tensor(mean, dtype=torch.float32), grad


impl_cpu("kd_loss", _kd_loss_cpu)


@register_fake("kd_loss")
def _kd_loss_fake(
    student: torch.Tensor,
    teacher: torch.Tensor,
    labels: torch.Tensor,
    temperature: float,
    alpha: float,
    ignore_index: int,
    compute_grad: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    check(student.dim() == 2, "the kd_loss op takes 2-D logits (kd_loss flattens the rest)")
    grad = student.new_empty(student.shape) if compute_grad else student.new_empty((0,))
    return student.new_empty(()), grad


def _setup(
    ctx: torch.autograd.function.FunctionCtx,
    inputs: tuple[object, ...],
    output: tuple[torch.Tensor, torch.Tensor],
) -> None:
    ctx.mark_non_differentiable(output[1])
    ctx.set_materialize_grads(False)  # else autograd allocates a zero [rows, vocab] grad for it
    if torch.compiler.is_compiling():
        ctx.save_for_backward(output[1])
        ctx.holder = None  # type: ignore[attr-defined]
    else:
        # Eager: keep the only reference in a list that backward empties, so the tensor handed
        # to autograd is unshared and AccumulateGrad adopts it instead of copying 4·rows·vocab
        # bytes. (The output is non-differentiable, so this creates no reference cycle.)
        ctx.holder = [output[1]]  # type: ignore[attr-defined]


def _backward(
    ctx: torch.autograd.function.FunctionCtx, grad_loss: torch.Tensor | None, _grad_grad: object
) -> tuple[torch.Tensor | None, ...]:
    nones: tuple[None, ...] = (None,) * 6
    if grad_loss is None:  # grads are not materialised: nothing flowed into the loss
        return (None, *nones)
    holder: list[torch.Tensor] | None = ctx.holder  # type: ignore[attr-defined]
    if holder is not None and torch.is_grad_enabled():
        # The stored gradient has no graph back to the logits: a second derivative through it
        # would come out 0 (or unused), silently.
        raise RuntimeError(
            "kd_loss is differentiable once: it has no double backward (create_graph=True); "
            "for second derivatives use kompaktor_kernels.reference.kd_loss_reference"
        )
    if holder is None:
        (grad,) = ctx.saved_tensors  # type: ignore[attr-defined]
    elif holder:
        grad = holder.pop()
    else:
        raise RuntimeError("kd_loss supports one backward pass per forward (no retain_graph)")
    if grad.numel() == 0:
        raise RuntimeError("kd_loss was called with compute_grad=False; no gradient is stored")
    # Eager: in place, the stored gradient is private to this node, so the peak stays at one
    # [rows, vocab] tensor. Compiled graphs get the functional form.
    return (grad * grad_loss if holder is None else grad.mul_(grad_loss), *nones)


torch.library.register_autograd(f"{NAMESPACE}::kd_loss", _backward, setup_context=_setup)


def kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    temperature: float = 1.0,
    alpha: float = 0.5,
    ignore_index: int = -100,
) -> torch.Tensor:
    """alpha·T²·KL(teacher ‖ student, both at temperature T) + (1-alpha)·CE(student, labels),
    averaged over rows; differentiable w.r.t. the student logits (the teacher is a constant).

    Logits are [rows, vocab] or [..., vocab] (e.g. [batch, sequence, vocab]) with labels of
    the leading shape. Rows labelled ignore_index (padding, as in F.cross_entropy) count in
    neither term nor the mean, and get a zero gradient; if every row is, the loss is NaN, as
    F.cross_entropy's. Same value as `reference.kd_loss_reference` within float rounding."""
    # Label values are checked inside the op (at run time), so tracing never reads data here.
    _validate(student_logits, teacher_logits, labels, temperature, alpha, ignore_index, False)
    if student_logits.dim() > 2:  # views: _validate checked they are contiguous
        student_logits, teacher_logits = (
            student_logits.flatten(0, -2),
            teacher_logits.flatten(0, -2),
        )
        labels = labels.flatten()
    compute_grad = torch.is_grad_enabled() and student_logits.requires_grad
    loss, _ = torch.ops.kompaktor_kernels.kd_loss(
        student_logits, teacher_logits.detach(), labels, float(temperature), float(alpha),
        int(ignore_index), compute_grad,
    )  # fmt: skip
    return loss  # type: ignore[no-any-return]
