"""Argument checks run before any pointer reaches C++: a wrong dtype, layout or shape must be a
Python exception naming the culprit, never a crash or a silently wrong result."""

from __future__ import annotations

import torch


def tensor(name: str, value: object) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    return value


def cpu_dense(name: str, t: torch.Tensor) -> None:
    if not t.is_cpu:  # t.device builds an object: ~0.2 us a call more
        raise ValueError(f"{name} must be on the CPU, got device {t.device}")
    if t.layout != torch.strided:
        raise ValueError(f"{name} must be a dense (strided) tensor, got layout {t.layout}")


def not_negated(name: str, t: torch.Tensor) -> None:
    """For tensors whose memory the kernels read directly (a layer's buffers); op arguments
    need no check, torch's Negative fallback resolves them before the op runs."""
    if t.is_neg():
        raise ValueError(f"{name} is a negated view (torch._neg_view); call .resolve_neg() first")


def dtype(name: str, t: torch.Tensor, expected: torch.dtype) -> None:
    if t.dtype != expected:
        raise TypeError(f"{name} must have dtype {expected}, got {t.dtype}")


def contiguous(name: str, t: torch.Tensor) -> None:
    if not t.is_contiguous():
        raise ValueError(
            f"{name} must be contiguous (shape {tuple(t.shape)}, strides {t.stride()}); "
            "call .contiguous() first"
        )
