"""Accuracy-aware int8: keep the layers int8 hurts most in float, most sensitive first, until the
quantized model is within the job's maxDrop (as Intel Neural Compressor's and Olive's
accuracy-driven tuning do).

Sensitivity is measured, not guessed: each layer is quantized *alone* (every other layer float)
and the model scored; the metric it loses is that layer's sensitivity. The opposite probe
(every layer int8 but one) gives no signal exactly when fallback matters most: an activation
outlier between two layers collapses the model whichever one of them stays int8, so every
leave-one-float trial scores the same chance-level metric. Quantized alone, each layer shows its
own damage. That costs one quantization and one evaluation per layer, which is cheap for the
models that fit a stage's time (ONNX Runtime calibrates a small model in well under a second);
above MEASURED_LAYERS layers the caller's cheaper proxy ranks them instead
(`kompaktor.quant.sensitivity`: int8 rounding noise against signal, from one float pass), and
`details.fallback.method` says which ranked them.

The caller scores on validation rows (the val split; train rows when the dataset has none),
never on test rows: the plan's gate judges the output on test rows, and a choice fitted to those
would make the gate's figure optimistic.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kompaktor.quant.layers import Layer

#: Above this many candidate layers, sensitivity comes from the proxy, not N quantizations.
MEASURED_LAYERS = 32

#: Writes the model quantized with these layers float and returns the file.
Quantize = Callable[[Sequence[Layer]], Path]


@dataclass(frozen=True)
class Step:
    """One quantized model tried: the layers it kept float and its metric."""

    excluded: tuple[str, ...]
    metric: float
    drop: float
    path: Path


@dataclass(frozen=True)
class Judge:
    """Scores a quantized file, and says how far a score falls short of the job's input model
    on the same rows (`drop`, positive when worse, in the metric's direction) and whether that
    is within `max_drop`."""

    score: Callable[[Path], float]
    drop: Callable[[float], float]
    max_drop: float

    def admits(self, value: float) -> bool:
        return self.drop(value) <= self.max_drop + 1e-12  # AccuracyBound's tolerance


@dataclass
class Fallback:
    """The outcome: `steps[-1]` is the model handed on when `within`."""

    method: str
    steps: list[Step] = field(default_factory=list)
    sensitivity: dict[str, float] = field(default_factory=dict)
    within: bool = False

    @property
    def chosen(self) -> Step:
        return self.steps[-1]

    @property
    def best(self) -> Step:
        return min(self.steps, key=lambda step: step.drop)

    def details(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "excluded": list(self.chosen.excluded),
            "steps": [{"excluded": list(s.excluded), "metric": s.metric} for s in self.steps],
            "sensitivity": self.sensitivity,
        }


def search(
    layers: Sequence[Layer],
    fixed: Sequence[Layer],
    quantize: Quantize,
    judge: Judge,
    cap: int,
    proxy: Callable[[Sequence[Layer]], dict[str, float]],
    log: Callable[[str], None],
) -> Fallback:
    """Quantize with `fixed` float; while outside the bound, keep one more layer float, most
    sensitive first, up to `cap` layers beyond `fixed`."""
    result = Fallback(method="notNeeded")
    if _try(result, fixed, quantize, judge):
        return result
    candidates = [layer for layer in layers if layer not in fixed]
    if len(candidates) > MEASURED_LAYERS:
        result.method, result.sensitivity = "proxy", proxy(candidates)
    else:
        result.method = "measured"
        result.sensitivity = _measured(candidates, fixed, quantize, judge)
    ranked = sorted(candidates, key=lambda layer: -result.sensitivity[layer.name])
    log(f"quantize: fallback: sensitivity ({result.method}): {_listed(result, ranked)}")
    for count in range(1, min(cap, len(ranked)) + 1):
        if _try(result, [*fixed, *ranked[:count]], quantize, judge):
            return result
    return result


def _try(result: Fallback, excluded: Sequence[Layer], quantize: Quantize, judge: Judge) -> bool:
    """Quantize with `excluded` float, record the step; whether it is within the bound."""
    path = quantize(excluded)
    value = judge.score(path)
    names = tuple(layer.name for layer in excluded)
    result.steps.append(Step(names, value, judge.drop(value), path))
    result.within = judge.admits(value)
    return result.within


def _measured(
    candidates: Sequence[Layer], fixed: Sequence[Layer], quantize: Quantize, judge: Judge
) -> dict[str, float]:
    """Each layer's metric drop when it is the only int8 layer (`fixed` stay float too)."""
    sensitivity = {}
    for layer in candidates:
        others = [*fixed, *(other for other in candidates if other != layer)]
        sensitivity[layer.name] = round(judge.drop(judge.score(quantize(others))), 6)
    return sensitivity


def _listed(result: Fallback, ranked: Sequence[Layer]) -> str:
    return ", ".join(f"{layer.name} {result.sensitivity[layer.name]:.4g}" for layer in ranked)
