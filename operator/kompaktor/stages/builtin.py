"""Imports each technique module once so its Stage subclass registers itself."""

import importlib

_MODULES = ("train", "benchmark", "hpo", "prune", "distill", "compress", "quantize")

for _name in _MODULES:
    try:
        importlib.import_module(f"kompaktor.stages.{_name}")
    except ModuleNotFoundError as error:  # a technique not built yet stays reserved
        if error.name != f"kompaktor.stages.{_name}":
            raise
