"""Which compiled path runs: detected once, forcible so tests can cover every path.

`KOMPAKTOR_KERNELS_ISA=portable|avx2|avx512` picks the path at import; `set_isa` / `use_isa`
change it at runtime. Asking for a path the CPU lacks is an error from `set_isa`, but only a
warning from the environment variable, so one CI setting can run on mixed machines.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import torch

from kompaktor_kernels import _native

ISAS: tuple[str, ...] = ("portable", "avx2", "avx512")
ENV_VAR = "KOMPAKTOR_KERNELS_ISA"


def available_isas() -> tuple[str, ...]:
    """Paths this CPU can run, slowest first (portable is always there)."""
    return ISAS[: int(_native.best_isa()) + 1]


def active_isa() -> str:
    """The path the next kernel call will take."""
    return ISAS[int(_native.active_isa())]


def set_isa(name: str) -> None:
    """Force a path; raises ValueError for unknown names or paths this CPU lacks."""
    if name not in ISAS:
        raise ValueError(f"unknown ISA {name!r}; expected one of {ISAS}")
    if not _native.set_isa(ISAS.index(name)):
        raise ValueError(f"this CPU cannot run the {name!r} path; available: {available_isas()}")


def int8_path() -> str:
    """How int8 layers run on the active path: on the sliced layout, with the permute this CPU
    has, or on the CSR kernels (up to 3x apart at batch 1; kernels/README.md, "Sliced layouts").
    The batch bounds are csrc/kernels.h's i8_sliced_max_batch."""
    isa = active_isa()
    if isa == "portable":
        return "CSR kernels"
    if isa == "avx2":
        return "sliced layout, AVX2 shuffles, to batch 4; CSR kernels beyond"
    if _native.has_vbmi():
        return "sliced layout, vpermb (AVX512_VBMI)"
    return "sliced layout, AVX512BW shuffles, to batch 8; CSR kernels beyond"


@contextmanager
def use_isa(name: str) -> Iterator[None]:
    """Run a block on one path and restore the previous one afterwards."""
    previous = active_isa()
    set_isa(name)
    try:
        yield
    finally:
        set_isa(previous)


def num_threads() -> int:
    """Kernels use as many threads as torch does, so `torch.set_num_threads` governs both."""
    return max(1, torch.get_num_threads())


def _init_from_env() -> None:
    name = os.environ.get(ENV_VAR, "").strip().lower()
    if not name:
        return
    if name not in ISAS:
        raise ValueError(f"{ENV_VAR}={name!r} is not one of {ISAS}")
    if name not in available_isas():
        warnings.warn(
            f"{ENV_VAR}={name!r} is not supported by this CPU; using {active_isa()!r}",
            RuntimeWarning,
            stacklevel=2,
        )
        return
    set_isa(name)


_init_from_env()
