"""Quantisation rules shared by the int8 kernel's weight packing and the PyTorch reference."""

from __future__ import annotations

import torch


def quantize_weight(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-output-channel symmetric int8 (range ±127): returns (int8 weight, fp32 scales).

    A row whose scale would not be a normal float (all zeros, or weights under ~1.5e-36) gets
    scale 1, so its weights quantise to 0 rather than to a scale of 0 the kernels refuse."""
    w = weight.detach().to(torch.float32)
    amax = w.abs().amax(dim=1) if w.shape[1] > 0 else w.new_zeros(w.shape[0])
    scale = amax / 127.0
    scale = torch.where(scale >= torch.finfo(torch.float32).tiny, scale, torch.ones_like(scale))
    q = torch.round(w / scale[:, None]).clamp_(-127, 127).to(torch.int8)
    return q, scale


def quantize_activation(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-row asymmetric uint8 with the range widened to include 0 (so zeros stay exact).

    Mirrors the C++ kernel bit for bit: returns (codes as float, scale, zero point). A row
    holding a NaN or an infinity gets NaN codes, so all its outputs are NaN (amin/amax
    propagate NaN, and x / inf is NaN for an infinite x); the kernel sets a NaN scale."""
    mn = x.amin(dim=1).clamp(max=0.0)
    mx = x.amax(dim=1).clamp(min=0.0)
    scale = (mx - mn) / 255.0
    scale = torch.where(scale == 0, torch.ones_like(scale), scale)
    zp = torch.round(-mn / scale).clamp(0, 255)
    q = (torch.round(x / scale[:, None]) + zp[:, None]).clamp(0, 255)
    return q, scale, zp
