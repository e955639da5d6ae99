"""Kernel tests run once per dispatch path this CPU has (portable always, avx512 with and
without VBMI where it has VBMI)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

import kompaktor_kernels as kk

# On a VBMI CPU the avx512 path also runs without VBMI, as on parts that lack it (Cascade Lake):
# the sliced int8 kernel's permute is then built from AVX512BW shuffles.
NO_VBMI = "avx512-novbmi"
PATHS = kk.available_isas() + ((NO_VBMI,) if kk._native.has_vbmi() else ())


@pytest.fixture(params=PATHS)
def isa(request: pytest.FixtureRequest) -> Iterator[str]:
    name = str(request.param)
    if name != NO_VBMI:
        with kk.use_isa(name):
            yield name
        return
    with kk.use_isa("avx512"):
        kk._native.set_vbmi(False)
        try:
            yield "avx512"
        finally:
            kk._native.set_vbmi(True)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
