"""The `kompaktor_kernels` torch.library namespace that every custom op is defined in.

Ops are defined with the low-level Library API (not the `custom_op` decorator) because its
eager dispatch overhead is a few microseconds, which matters for batch-1 sparse linear."""

from __future__ import annotations

import torch

NAMESPACE = "kompaktor_kernels"
LIB = torch.library.Library(NAMESPACE, "FRAGMENT")
