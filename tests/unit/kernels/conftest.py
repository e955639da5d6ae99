"""Kernel tests run once per dispatch path this CPU has (portable always)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

import kompaktor_kernels as kk


@pytest.fixture(params=kk.available_isas())
def isa(request: pytest.FixtureRequest) -> Iterator[str]:
    name = str(request.param)
    with kk.use_isa(name):
        yield name


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
