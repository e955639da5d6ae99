from __future__ import annotations

import pytest

import kompaktor_kernels as kk
from kompaktor_kernels import _dispatch


def test_portable_always_available() -> None:
    assert kk.available_isas()[0] == "portable"
    assert kk.active_isa() in kk.available_isas()


def test_use_isa_restores_previous() -> None:
    before = kk.active_isa()
    with kk.use_isa("portable"):
        assert kk.active_isa() == "portable"
    assert kk.active_isa() == before


def test_unknown_isa_rejected() -> None:
    with pytest.raises(ValueError, match="unknown ISA"):
        kk.set_isa("sse9")


def test_env_var_forces_path(monkeypatch: pytest.MonkeyPatch) -> None:
    before = kk.active_isa()
    monkeypatch.setenv(kk.ENV_VAR, "portable")
    try:
        _dispatch._init_from_env()
        assert kk.active_isa() == "portable"
    finally:
        kk.set_isa(before)


def test_env_var_unknown_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(kk.ENV_VAR, "avx9000")
    with pytest.raises(ValueError, match=kk.ENV_VAR):
        _dispatch._init_from_env()


def test_env_var_unsupported_path_warns(monkeypatch: pytest.MonkeyPatch) -> None:
    if len(kk.available_isas()) == len(kk.ISAS):
        pytest.skip("this CPU supports every path")
    monkeypatch.setenv(kk.ENV_VAR, kk.ISAS[-1])
    with pytest.warns(RuntimeWarning):
        _dispatch._init_from_env()


def test_int8_path_names_the_kernels_each_path_runs() -> None:
    vbmi = kk._native.has_vbmi()
    expected = {
        "portable": "CSR kernels",
        "avx2": "AVX2 shuffles, to batch 4",
        "avx512": "vpermb" if vbmi else "AVX512BW shuffles, to batch 8",
    }
    for name in kk.available_isas():
        with kk.use_isa(name):
            assert expected[name] in kk.int8_path()
    if vbmi:  # as on AVX-512 CPUs without VBMI
        with kk.use_isa("avx512"):
            kk._native.set_vbmi(False)
            try:
                assert "AVX512BW shuffles, to batch 8" in kk.int8_path()
            finally:
                kk._native.set_vbmi(True)
