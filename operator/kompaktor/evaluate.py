"""Measure a model the same way everywhere: objective metric, size, parameters, latency.

Every stage output and every benchmark goes through these, so figures from different stages
compare honestly.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from kompaktor.data import Dataset, Split
from kompaktor.data.dataset import SPLITS, input_names
from kompaktor.errors import KompaktorError
from kompaktor.models import LoadedModel, Predictor
from kompaktor.timing_lock import working

if TYPE_CHECKING:
    import torch

METRICS = ("accuracy", "fidelity", "mse")
EVAL_BATCH = 512


def predict_all(
    predictor: Predictor, inputs: tuple[np.ndarray, ...], batch_size: int = EVAL_BATCH
) -> np.ndarray:
    """The predictor's outputs for all rows, in batches (bounded memory, same result), pausing
    between batches while a sibling run times a model (`kompaktor.timing_lock`)."""
    rows = len(inputs[0])
    outs = []
    with working() as checkpoint:
        for start in range(0, rows, batch_size):
            checkpoint()
            outs.append(predictor(*(a[start : start + batch_size] for a in inputs)))
    return np.concatenate(outs, axis=0)


def predicted_classes(outputs: np.ndarray) -> np.ndarray:
    """argmax over logits; a single logit per row is a binary model thresholded at 0."""
    if outputs.ndim == 1 or (outputs.ndim == 2 and outputs.shape[1] == 1):
        return (outputs.reshape(-1) > 0).astype(np.int64)
    return np.asarray(outputs.reshape(len(outputs), -1).argmax(axis=1), dtype=np.int64)


def _rows(shape: tuple[int | None, ...]) -> str:
    """A row shape as the user writes it; a dimension of any size shows as ?."""
    dims = ["?" if d is None else str(d) for d in shape]
    return f"({dims[0]},)" if len(dims) == 1 else f"({', '.join(dims)})"


def _check_inputs(predictor: Predictor, dataset: Dataset, split: Split) -> str | None:
    """Raise if the split's inputs cannot fit what the model declares (count, rank, fixed
    sizes: torch's guards and ONNX Runtime would refuse those anyway, in their own words).
    A dtype the model did not declare is returned, not raised: a model may convert its input
    itself, so only a failed prediction makes it the error."""
    from kompaktor.models.predict import expected_inputs, model_dtype

    inputs = dataset.inputs(split)
    names = input_names(split, len(inputs))
    where = f"dataset {dataset.name}"
    if not len(inputs[0]):
        raise KompaktorError(f"{where}: the {split} split has no rows to measure the model on")
    expected = expected_inputs(predictor)
    if expected is None:
        return None
    if len(expected) != len(inputs):
        spelled = ", ".join(input_names(split, len(expected)))
        raise KompaktorError(
            f"{where} has {len(inputs)} input array(s) per split ({', '.join(names)}) but the "
            f"model takes {len(expected)} ({', '.join(repr(e.name) for e in expected)}): "
            f"give one array per model input ({spelled})"
        )
    problems = []
    for name, array, spec in zip(names, inputs, expected, strict=True):
        fits = len(spec.shape) == array.ndim and all(
            d is None or d == n for d, n in zip(spec.shape[1:], array.shape[1:], strict=True)
        )
        if not fits:
            anything = " (? = any size)" if None in spec.shape[1:] else ""
            raise KompaktorError(
                f"{where}: {name} has rows of shape {_rows(array.shape[1:])} ({array.dtype}), "
                f"but the model's input {spec.name!r} takes rows of shape "
                f"{_rows(spec.shape[1:])}{anything} ({spec.dtype or 'dtype not recorded'})"
            )
        fed = model_dtype(array.dtype)
        if spec.dtype is not None and fed != spec.dtype:
            problems.append(
                f"{name} is {array.dtype} but the model's input {spec.name!r} takes "
                f"{spec.dtype} (save it as {spec.dtype}, scaled as the model was trained)"
            )
    if not problems:
        return None
    return f"{where}: {'; '.join(problems)}"


def _outputs(predictor: Predictor, dataset: Dataset, split: Split) -> np.ndarray:
    """The model's outputs for a split, after checking the split's inputs can feed it."""
    problem = _check_inputs(predictor, dataset, split)
    inputs = dataset.inputs(split)
    if problem is None:
        return predict_all(predictor, inputs)
    try:
        return predict_all(predictor, inputs)
    except Exception as error:  # torch and ONNX Runtime each have their own error types
        reason = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise KompaktorError(f"{problem} ({type(error).__name__}: {reason[:200]})") from error


def _check_labels(outputs: np.ndarray, dataset: Dataset) -> None:
    """Labels the model cannot predict would not fail a run: they would score 0 and the
    accuracy gate would compare two zeros. Every split is checked, as stages train on train."""
    per_row = int(np.prod(outputs.shape[1:], dtype=np.int64)) if outputs.ndim > 1 else 1
    classes = 2 if per_row == 1 else per_row  # one logit: a binary model (see predicted_classes)
    if per_row == 1:
        spread = "1 output (a binary classifier: classes 0–1)"
    else:
        spread = f"{per_row} outputs (classes 0–{per_row - 1})"
    for split in SPLITS:
        y = dataset.targets(split)
        if len(y) and int(y.max()) >= classes:
            raise KompaktorError(
                f"dataset {dataset.name}: y_{split} holds labels {int(y.min())}–{int(y.max())} "
                f"but the model has {spread}: labels must be classes the model can predict"
            )


def metric(
    name: str,
    predictor: Predictor,
    dataset: Dataset,
    split: Split = "test",
    reference: Predictor | None = None,
) -> float:
    """accuracy (argmax vs labels), fidelity (argmax agreement with `reference`), or mse.

    KompaktorError naming the array when the split cannot feed the model (count, shape,
    dtype) or a classification dataset has labels the model has no output for."""
    if name == "accuracy":
        if dataset.task != "classification":
            raise KompaktorError(f"metric accuracy needs a classification dataset ({dataset.name})")
        outputs = _outputs(predictor, dataset, split)
        _check_labels(outputs, dataset)
        return float(np.mean(predicted_classes(outputs) == dataset.targets(split)))
    if name == "fidelity":
        if reference is None:
            raise KompaktorError("metric fidelity needs the reference model's predictor")
        outputs = _outputs(predictor, dataset, split)
        if dataset.task == "classification":
            _check_labels(outputs, dataset)
        ours = predicted_classes(outputs)
        theirs = predicted_classes(_outputs(reference, dataset, split))
        return float(np.mean(ours == theirs))
    if name == "mse":
        out = _outputs(predictor, dataset, split)
        target = dataset.targets(split).astype(np.float64)
        return float(np.mean((out.reshape(target.shape).astype(np.float64) - target) ** 2))
    raise KompaktorError(f"unknown metric {name!r}; use one of {', '.join(METRICS)}")


def scorer(
    name: str, dataset: Dataset, split: Split = "val", reference: Predictor | None = None
) -> Callable[[Predictor], float]:
    """`metric(name, ·, dataset, split)` as a function of the predictor, for scoring a model
    again and again (a validation curve): the reference's predictions are computed once."""
    if name != "fidelity":
        return lambda predictor: metric(name, predictor, dataset, split)
    if reference is None:
        raise KompaktorError("metric fidelity needs the reference model's predictor")
    inputs = dataset.inputs(split)
    theirs = predicted_classes(_outputs(reference, dataset, split))

    def fidelity(predictor: Predictor) -> float:
        return float(np.mean(predicted_classes(predict_all(predictor, inputs)) == theirs))

    return fidelity


def has_rows(dataset: Dataset, split: Split) -> bool:
    return len(dataset.targets(split)) > 0


def higher_is_better(metric_name: str) -> bool:
    return metric_name != "mse"


@dataclass(frozen=True)
class AccuracyBound:
    """The job's bound on a trial's metric: no more than `max_drop` worse than the input
    model's `baseline` (math.inf: unbounded). One object, so that selection, its reason and
    the no-winner message all judge and describe the same bound, in the metric's direction."""

    metric: str
    baseline: float | None
    max_drop: float

    @classmethod
    def of(cls, metric: str, baseline: float | None, max_drop: float | None) -> AccuracyBound:
        """The bound for a job that may give no maxDrop (None: unbounded)."""
        return cls(metric, baseline, math.inf if max_drop is None else max_drop)

    @property
    def unbounded(self) -> bool:
        return math.isinf(self.max_drop)

    @property
    def sign(self) -> float:
        """1 when a higher metric is better, -1 when lower is (mse): ranks trials best first."""
        return 1.0 if higher_is_better(self.metric) else -1.0

    def drop(self, value: float) -> float:
        """How much worse than the baseline `value` is (negative: better); NaN without one."""
        return math.nan if self.baseline is None else self.sign * (self.baseline - value)

    def admits(self, value: float, own_baseline: float | None = None) -> bool:
        """`value` is no more than `max_drop` worse than the baseline: the trial's own (the
        input model on the rows it was ranked on) when it has one, else the bound's; always
        when there is none to compare with."""
        baseline = self.baseline if own_baseline is None else own_baseline
        if baseline is None or math.isnan(baseline):
            return True
        if self.sign > 0:
            return value >= baseline - self.max_drop - 1e-12
        return value <= baseline + self.max_drop + 1e-12


def model_size_bytes(model: LoadedModel) -> int:
    """Bytes of the model file on disk (what ships)."""
    return model.path.stat().st_size


def _torch_parameter_count(module: torch.nn.Module) -> int:
    seen: set[int] = set()
    total = 0
    for tensor in [*module.parameters(), *module.buffers()]:
        if id(tensor) not in seen:  # tied weights count once
            seen.add(id(tensor))
            total += tensor.numel()
    return total


#: Input positions of ONNX ops that take no weights: quantization scales and zero points, and
#: a reshape's target shape.
_NOT_WEIGHT_INPUTS = {
    "QuantizeLinear": {1, 2},
    "DequantizeLinear": {1, 2},
    "MatMulInteger": {2, 3},
    "ConvInteger": {2, 3},
    "Reshape": {1},
}


def _onnx_parameter_count(model: LoadedModel) -> int:
    """Initializer elements that are weights: int8 stores as many as float does, and its scales
    and zero points (like a reshape's shape) are not weights."""
    import onnx

    graph = onnx.load(str(model.path)).graph
    made_by = {out: node.op_type for node in graph.node for out in node.output}
    uses: dict[str, list[bool]] = {}
    for node in graph.node:
        positions = _NOT_WEIGHT_INPUTS.get(node.op_type, set())
        # dynamic int8: a weight's scale times the activation's scale, computed per call
        scales = node.op_type == "Mul" and any(
            made_by.get(source) == "DynamicQuantizeLinear" for source in node.input
        )
        for index, name in enumerate(node.input):
            uses.setdefault(name, []).append(scales or index in positions)
    return sum(
        int(np.prod(init.dims, dtype=np.int64))
        for init in graph.initializer
        if not (uses.get(init.name) and all(uses[init.name]))
    )


def parameter_count(model: LoadedModel) -> int:
    """Stored weight elements (torch parameters+buffers, or ONNX initializers)."""
    if model.module is not None:
        return _torch_parameter_count(model.module)
    return _onnx_parameter_count(model)


@dataclass(frozen=True)
class Latency:
    batch_size: int
    p50_ms: float
    p95_ms: float
    p99_ms: float
    throughput: float  # samples per second (batch size / mean call time)


def make_batch(sample: tuple[np.ndarray, ...], batch_size: int) -> tuple[np.ndarray, ...]:
    """`batch_size` rows cycled from `sample` (any number of rows ≥ 1)."""
    rows = np.arange(batch_size) % len(sample[0])
    return tuple(np.ascontiguousarray(a[rows]) for a in sample)


def time_calls(call: Callable[[], object], *, calls: int, seconds: float = 0.0) -> list[float]:
    """Seconds taken by each of at least `calls` calls of `call`, going on until the timed calls
    add up to `seconds`: a fast model gets as much sampling as a slow one, so its percentiles
    are as stable (the sum counts call time only, so loop overhead cannot cut sampling short)."""
    times_ns: list[int] = []
    total_ns, wanted_ns = 0, math.ceil(seconds * 1e9)
    while len(times_ns) < calls or total_ns < wanted_ns:
        start = time.perf_counter_ns()
        call()
        elapsed = time.perf_counter_ns() - start
        times_ns.append(elapsed)
        total_ns += elapsed
    return [t / 1e9 for t in times_ns]


def measure_latency(
    predictor: Predictor,
    sample: tuple[np.ndarray, ...],
    batch_size: int,
    *,
    warmup: int = 10,
    iterations: int = 100,
    min_seconds: float = 0.0,
) -> Latency:
    """Time `predictor` on a batch built from `sample` rows; percentiles over iterations.

    Runs at least `iterations` calls and keeps going until `min_seconds` of calls are timed
    (`time_calls`), so fast models get enough samples for a stable p99.
    """
    if batch_size < 1 or iterations < 1:
        raise ValueError("batch_size and iterations must be ≥ 1")
    batch = make_batch(sample, batch_size)
    for _ in range(warmup):
        predictor(*batch)
    seconds = time_calls(lambda: predictor(*batch), calls=iterations, seconds=min_seconds)
    ms = np.asarray(seconds, dtype=np.float64) * 1e3
    p50, p95, p99 = np.percentile(ms, [50, 95, 99])
    return Latency(
        batch_size=batch_size,
        p50_ms=float(p50),
        p95_ms=float(p95),
        p99_ms=float(p99),
        throughput=float(batch_size / (ms.mean() / 1e3)),
    )
