"""The compiled kernels when they are importable, so stages still work without them."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def optional_kernel(name: str) -> Callable[..., Any] | None:
    """A function of kompaktor_kernels, or None when the compiled package is not importable
    (a source checkout without the built extension): callers fall back to pure PyTorch."""
    try:
        import kompaktor_kernels
    except ImportError:
        return None
    found = getattr(kompaktor_kernels, name, None)
    return found if callable(found) else None
