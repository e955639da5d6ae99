"""What a piece of work cost in time, CPU and energy, with how the energy was known.

Energy is measured where the hardware tells us (NVML on GPUs, RAPL powercap counters on CPUs)
and estimated otherwise from the pool's power draw and the CPU time used, so every figure
carries its `method`. RAPL and NVML count the whole package/device: the figure is what the
machine drew while the work ran, which is what a stage pod owning its node costs.

Estimate: `watts × cpu_seconds / cpu_count`, i.e. the pool's `watts` is the node's draw with
every core busy and an idle core costs nothing. Without `KOMPAKTOR_POOL_WATTS` (or with 0) we
assume `DEFAULT_WATTS_PER_CORE` per core, so the estimate is 10 J per CPU-second. A failed
attempt leaves no reading: the plan estimates it from the time it ran (`attempt_joules`).
"""

from __future__ import annotations

import importlib
import os
import resource
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from kompaktor.api.status import EnergyMethod

POWERCAP_DIR = Path("/sys/class/powercap")
DEFAULT_WATTS_PER_CORE = 10.0
#: RAPL counters wrap after max_energy_range_uj (~262 kJ, minutes at full load): sample often
#: enough that at most one wrap happens between samples.
RAPL_POLL_SECONDS = 30.0


def cpu_count() -> int:
    """Cores this process may run on (the container's share, not the host's)."""
    try:
        return max(len(os.sched_getaffinity(0)), 1)
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def pool_watts() -> float:
    """The node's full-load draw: KOMPAKTOR_POOL_WATTS, or 10 W per usable core."""
    raw = os.environ.get("KOMPAKTOR_POOL_WATTS", "")
    try:
        watts = float(raw)
    except ValueError:
        watts = 0.0
    return watts if watts > 0 else DEFAULT_WATTS_PER_CORE * cpu_count()


def estimate_joules(watts: float, cpu_seconds: float, cores: int) -> float:
    """The estimate where nothing measures: `watts` is the draw with all `cores` busy, and an
    idle core costs nothing."""
    return watts * cpu_seconds / cores


def attempt_joules(watts: float | None, seconds: float) -> float:
    """A failed attempt's estimate from the `seconds` its container or process ran: it left no
    reading, so its CPU time is unknown and it is taken as busy on every core (an upper bound).
    A pool with no `watts` (None or 0) counts as one core at DEFAULT_WATTS_PER_CORE."""
    return estimate_joules(watts or DEFAULT_WATTS_PER_CORE, seconds, 1)


def joint_method(first: EnergyMethod | None, second: EnergyMethod | None) -> EnergyMethod | None:
    """The method of a sum of two figures: theirs when they agree, else `estimate`."""
    if first is None or second is None or first == second:
        return first or second
    return "estimate"


def process_cpu_seconds() -> float:
    """User + system CPU time of this process and its waited-for children."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


@dataclass
class _RaplDomain:
    """One package counter; `total_uj` accumulates deltas across wraparounds."""

    path: Path
    max_uj: int
    last_uj: int
    total_uj: int = 0

    def sample(self) -> None:
        now = int(self.path.read_text())
        delta = now - self.last_uj
        if delta < 0:  # the counter wrapped once since the last sample
            delta += self.max_uj
        self.total_uj += delta
        self.last_uj = now


def rapl_domains(root: Path = POWERCAP_DIR) -> list[_RaplDomain]:
    """Readable top-level package counters (`intel-rapl:N`; subdomains are inside them)."""
    domains = []
    for zone in sorted(root.glob("intel-rapl:*")):
        if zone.name.count(":") != 1:
            continue
        try:
            start = int((zone / "energy_uj").read_text())
            max_uj = int((zone / "max_energy_range_uj").read_text())
        except (OSError, ValueError):
            continue
        domains.append(_RaplDomain(zone / "energy_uj", max_uj, start))
    return domains


class _Nvml:
    """GPU energy via pynvml's total-energy counters (millijoules), when a GPU is present."""

    def __init__(self, nvml: Any) -> None:
        self._nvml = nvml
        count = nvml.nvmlDeviceGetCount()
        self._handles = [nvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
        self._start = self._read()

    @classmethod
    def open(cls) -> _Nvml | None:
        try:
            nvml = importlib.import_module("pynvml")
            nvml.nvmlInit()
            meter = cls(nvml)
        except Exception:  # no pynvml, no driver, no GPU, or no energy counter: not measurable
            return None
        return meter if meter._handles else None

    def _read(self) -> int:
        return sum(int(self._nvml.nvmlDeviceGetTotalEnergyConsumption(h)) for h in self._handles)

    def joules(self) -> float:
        return (self._read() - self._start) / 1e3


@dataclass(frozen=True)
class EnergyReading:
    """What a metered block cost. `parts` splits energy by source when several were summed."""

    wall_seconds: float
    cpu_seconds: float
    joules: float
    method: EnergyMethod
    parts: dict[str, float] = field(default_factory=dict)


class EnergyMeter:
    """Context manager: `with EnergyMeter() as meter: ...` then `meter.reading`.

    GPU energy (NVML) is added to CPU energy (RAPL, else the estimate); the method is the
    best source used: nvml, then rapl, then estimate, with `parts` keeping the breakdown.
    `powercap` and `nvml` are injectable for tests (nvml: a factory returning None for none).
    """

    def __init__(
        self,
        *,
        powercap: Path = POWERCAP_DIR,
        nvml: Callable[[], _Nvml | None] | None = None,
        watts: float | None = None,
        poll_seconds: float | None = RAPL_POLL_SECONDS,
        clock: Callable[[], float] = time.perf_counter,
        cpu_clock: Callable[[], float] = process_cpu_seconds,
    ) -> None:
        self._powercap = powercap
        self._nvml_factory = nvml or _Nvml.open
        self._watts = watts
        self._poll_seconds = poll_seconds
        self._clock = clock
        self._cpu_clock = cpu_clock
        self._rapl: list[_RaplDomain] = []
        self._gpu: _Nvml | None = None
        self._stop = threading.Event()
        self._poller: threading.Thread | None = None
        self._lock = threading.Lock()
        self.reading: EnergyReading | None = None

    def __enter__(self) -> EnergyMeter:
        self._rapl = rapl_domains(self._powercap)
        self._gpu = self._nvml_factory()
        self._start_wall, self._start_cpu = self._clock(), self._cpu_clock()
        if self._rapl and self._poll_seconds:
            self._poller = threading.Thread(target=self._poll, daemon=True, name="rapl-poll")
            self._poller.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        if self._poller is not None:
            self._poller.join()
        self.reading = self.read()

    def sample(self) -> None:
        """Fold the RAPL counters' progress into the totals (called by the poller)."""
        with self._lock:
            for domain in self._rapl:
                domain.sample()

    def read(self) -> EnergyReading:
        """The cost so far (the meter keeps running inside the block)."""
        self.sample()
        wall = self._clock() - self._start_wall
        cpu = self._cpu_clock() - self._start_cpu
        parts: dict[str, float] = {}
        if self._rapl:
            parts["rapl"] = sum(d.total_uj for d in self._rapl) / 1e6
        else:
            watts = self._watts if self._watts is not None else pool_watts()
            parts["estimate"] = estimate_joules(watts, cpu, cpu_count())
        if self._gpu is not None:
            parts["nvml"] = self._gpu.joules()
        method: EnergyMethod = (
            "nvml" if self._gpu is not None else "rapl" if self._rapl else "estimate"
        )
        return EnergyReading(wall, cpu, sum(parts.values()), method, parts)

    def _poll(self) -> None:
        assert self._poll_seconds is not None
        while not self._stop.wait(self._poll_seconds):
            self.sample()
