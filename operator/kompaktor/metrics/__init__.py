"""Measurements of work done: energy (measured or estimated, always saying which), CPU time."""

from kompaktor.metrics.energy import EnergyMeter, EnergyReading, cpu_count, pool_watts

__all__ = ["EnergyMeter", "EnergyReading", "cpu_count", "pool_watts"]
