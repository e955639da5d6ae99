"""EnergyMeter: RAPL counters (with wraparound), NVML, and the estimate, each saying which."""

from __future__ import annotations

from pathlib import Path

import pytest

from kompaktor.metrics import EnergyMeter, cpu_count, pool_watts

MAX_UJ = 1_000_000_000


def rapl_zone(root: Path, name: str, energy_uj: int, max_uj: int = MAX_UJ) -> Path:
    zone = root / name
    zone.mkdir(parents=True)
    (zone / "energy_uj").write_text(f"{energy_uj}\n")
    (zone / "max_energy_range_uj").write_text(f"{max_uj}\n")
    return zone / "energy_uj"


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def meter(powercap: Path, **kwargs: object) -> EnergyMeter:
    return EnergyMeter(powercap=powercap, nvml=lambda: None, poll_seconds=None, **kwargs)  # type: ignore[arg-type]


def test_rapl_sums_packages_and_ignores_subdomains(tmp_path: Path) -> None:
    pkg0 = rapl_zone(tmp_path, "intel-rapl:0", 5_000_000)
    pkg1 = rapl_zone(tmp_path, "intel-rapl:1", 1_000_000)
    core = rapl_zone(tmp_path, "intel-rapl:0:0", 0)  # inside package 0: not counted again
    with meter(tmp_path) as m:
        pkg0.write_text("7500000")
        pkg1.write_text("2000000")
        core.write_text("9000000")
    assert m.reading is not None
    assert m.reading.method == "rapl"
    assert m.reading.joules == pytest.approx(3.5)
    assert m.reading.parts == {"rapl": pytest.approx(3.5)}


def test_rapl_wraparound_between_samples(tmp_path: Path) -> None:
    counter = rapl_zone(tmp_path, "intel-rapl:0", MAX_UJ - 1_000_000)
    with meter(tmp_path) as m:
        counter.write_text("500000")  # wrapped: 1 J to the top, then 0.5 J
        m.sample()
        counter.write_text(str(MAX_UJ - 2_000_000))  # nearly a whole lap more
        m.sample()
        counter.write_text("0")  # wrapped a second time
    assert m.reading is not None
    assert m.reading.joules == pytest.approx((1_500_000 + MAX_UJ - 2_500_000 + 2_000_000) / 1e6)


def test_unreadable_rapl_falls_back_to_estimate_from_cpu_time(tmp_path: Path) -> None:
    zone = tmp_path / "intel-rapl:0"
    zone.mkdir()  # present but no energy_uj (as when permissions hide it)
    cpu = FakeClock()
    with meter(tmp_path, watts=80.0, cpu_clock=cpu) as m:
        cpu.now += 3.0
    assert m.reading is not None
    assert m.reading.method == "estimate"
    assert m.reading.cpu_seconds == pytest.approx(3.0)
    assert m.reading.joules == pytest.approx(80.0 * 3.0 / cpu_count())


def test_pool_watts_default_is_per_core(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KOMPAKTOR_POOL_WATTS", "250")
    assert pool_watts() == 250.0
    for unset in ("0.0", "", "junk"):  # pods get "0.0" when the pool names no watts
        monkeypatch.setenv("KOMPAKTOR_POOL_WATTS", unset)
        assert pool_watts() == 10.0 * cpu_count()


class FakeGpu:
    def __init__(self) -> None:
        self.used = 0.0

    def joules(self) -> float:
        return self.used


def test_nvml_energy_is_added_and_named(tmp_path: Path) -> None:
    counter = rapl_zone(tmp_path, "intel-rapl:0", 0)
    gpu = FakeGpu()
    m = EnergyMeter(powercap=tmp_path, nvml=lambda: gpu, poll_seconds=None)  # type: ignore[arg-type,return-value]
    with m:
        counter.write_text("2000000")
        gpu.used = 40.0
    assert m.reading is not None
    assert m.reading.method == "nvml"
    assert m.reading.joules == pytest.approx(42.0)
    assert m.reading.parts == {"rapl": pytest.approx(2.0), "nvml": pytest.approx(40.0)}


def test_real_meter_on_this_machine_counts_cpu_work() -> None:
    with EnergyMeter(poll_seconds=None) as m:
        total = sum(i * i for i in range(300_000))
    assert total > 0
    assert m.reading is not None
    assert m.reading.method in ("rapl", "estimate", "nvml")
    assert m.reading.cpu_seconds > 0
    assert m.reading.wall_seconds > 0
    assert m.reading.joules > 0
