"""The `kompaktor_kernels` torch.library namespace, behind typed helpers.

Ops are defined with the low-level Library API (not the `custom_op` decorator) because its
eager dispatch overhead is a few microseconds, which matters for batch-1 sparse linear.
torch.library is untyped, so the `type: ignore`s live here and nowhere else."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import torch

NAMESPACE = "kompaktor_kernels"
LIB = torch.library.Library(NAMESPACE, "FRAGMENT")  # type: ignore[no-untyped-call]

F = TypeVar("F", bound=Callable[..., Any])


def define(schema: str) -> None:
    LIB.define(schema)  # type: ignore[no-untyped-call]


def impl_cpu(name: str, fn: Callable[..., Any]) -> None:
    LIB.impl(name, fn, "CPU")  # type: ignore[no-untyped-call]


def register_fake(name: str) -> Callable[[F], F]:
    def wrap(fn: F) -> F:
        torch.library.register_fake(f"{NAMESPACE}::{name}")(fn)  # type: ignore[no-untyped-call]
        return fn

    return wrap


def check(cond: bool, message: str) -> None:
    """torch._check: an assertion that symbolic tracing understands."""
    torch._check(cond, lambda: message)  # type: ignore[no-untyped-call]
