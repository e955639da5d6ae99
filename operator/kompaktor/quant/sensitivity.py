"""A one-pass proxy for how much int8 hurts each layer, for models with too many layers to
quantize one at a time (`kompaktor.quant.fallback`).

It measures what int8 rounding does to the numbers each layer sees, from one float run on the
calibration rows: the rounding noise of its weights (int8, per output channel or per tensor, as
params say) and of its input and output activations (8 bits over the tensor's calibrated
min/max range, as MinMax calibration sets it), each against the signal's variance channel by
channel. A per-channel ratio is what catches the failure fallback exists for: one channel with
a huge range sets the tensor's step, and every other channel's signal drowns in it, though the
tensor's total error looks small beside the outlier's own variance.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from kompaktor.quant.layers import Layer

#: Rows per float run (the model's own batch size when it fixes one).
BATCH = 64


def noise_to_signal(
    path: Path, layers: Sequence[Layer], rows: Sequence[np.ndarray], per_channel: bool
) -> dict[str, float]:
    """Each layer's summed noise-to-signal ratio (weights, input, output) under int8."""
    model = onnx.load(str(path))
    nodes = {node.name: node for node in model.graph.node}
    weights = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    ends = {
        layer.name: (nodes[layer.node].input[0], nodes[layer.node].output[0]) for layer in layers
    }
    seen = _float_run(model, sorted({name for pair in ends.values() for name in pair}), rows)
    ratios = {}
    for layer in layers:
        node = nodes[layer.node]
        weight = _weight_ratio(weights[node.input[1]], _out_axis(node), per_channel)
        activations = sum(seen[name].ratio() for name in ends[layer.name] if name in seen)
        ratios[layer.name] = round(float(weight + activations), 6)
    return ratios


@dataclass
class _Stats:
    """A tensor's range and per-channel (axis 1) moments, gathered batch by batch so a large
    model's activations are never held whole."""

    low: float = 0.0
    high: float = 0.0
    count: int = 0
    total: np.ndarray | None = None
    squares: np.ndarray | None = None

    def add(self, values: np.ndarray) -> None:
        flat = values.reshape(len(values), -1) if values.ndim == 1 else values
        channels = np.moveaxis(flat, 1, 0).reshape(flat.shape[1], -1).astype(np.float64)
        self.low, self.high = (
            min(self.low, float(values.min())),
            max(self.high, float(values.max())),
        )
        self.count += channels.shape[1]
        total, squares = channels.sum(axis=1), (channels**2).sum(axis=1)
        self.total = total if self.total is None else self.total + total
        self.squares = squares if self.squares is None else self.squares + squares

    def ratio(self) -> float:
        """Rounding noise of 8 bits over [min, max] (0 included, as MinMax calibration sets
        it) against each channel's variance (channels that never vary carry no signal)."""
        if self.total is None or self.squares is None:
            return 0.0
        noise = ((self.high - self.low) / 255.0) ** 2 / 12.0
        mean = self.total / self.count
        variance = self.squares / self.count - mean**2
        live = variance > 1e-12
        return float(np.mean(noise / variance[live])) if live.any() else 0.0


def _float_run(
    model: onnx.ModelProto, names: Sequence[str], rows: Sequence[np.ndarray]
) -> dict[str, _Stats]:
    """The named tensors' statistics over all rows, read by making them graph outputs (none
    when there are fewer rows than the model's fixed batch)."""
    import onnxruntime as ort

    from kompaktor.timing_lock import working

    known = {v.name: v for v in [*model.graph.value_info, *model.graph.output]}
    del model.graph.output[:]
    for name in names:
        typed = onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None)
        model.graph.output.append(known.get(name) or typed)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    inputs = [i.name for i in session.get_inputs()]
    first = session.get_inputs()[0].shape[0]
    stats: dict[str, _Stats] = {}
    with working() as checkpoint:
        for batch in _batches(rows, first if isinstance(first, int) and first > 0 else None):
            checkpoint()
            outputs = session.run(list(names), dict(zip(inputs, batch, strict=True)))
            for name, values in zip(names, outputs, strict=True):
                stats.setdefault(name, _Stats()).add(np.asarray(values))
    return stats


def _batches(rows: Sequence[np.ndarray], fixed: int | None) -> Iterator[list[np.ndarray]]:
    """BATCH rows at a time, or whole batches of the model's fixed size."""
    size, total = fixed or BATCH, len(rows[0])
    for start in range(0, total - total % size if fixed else total, size):
        batch = [np.asarray(a[start : start + size]) for a in rows]
        yield [a.astype(np.float32) if a.dtype == np.float64 else a for a in batch]


def _weight_ratio(weight: np.ndarray, axis: int, per_channel: bool) -> float:
    """The weight's symmetric int8 rounding error against its variance, per output channel."""
    rows = np.moveaxis(weight, axis, 0).reshape(weight.shape[axis], -1).astype(np.float64)
    peak = np.abs(rows).max(axis=1, keepdims=True) if per_channel else np.abs(rows).max()
    scale = np.maximum(peak, 1e-12) / 127.0
    error = ((rows - np.round(rows / scale) * scale) ** 2).mean(axis=1)
    variance = rows.var(axis=1)
    live = variance > 1e-24
    return float(np.mean(error[live] / variance[live])) if live.any() else 0.0


def _out_axis(node: onnx.NodeProto) -> int:
    """The weight axis of output channels: Conv (O, I, …); ConvTranspose (I, O, …); MatMul
    (K, N); Gemm (N, K) when transB, else (K, N)."""
    if node.op_type == "Gemm":
        trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
        return 0 if trans_b else 1
    return 0 if node.op_type == "Conv" else 1
