"""Executors start and stop stage runs; the plan decides which (DESIGN.md §1)."""

from kompaktor.executors.base import Executor

__all__ = ["Executor"]
