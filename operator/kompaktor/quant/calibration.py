"""Calibration data for ONNX Runtime's static quantization, checked against the model first.

A calibration batch of the wrong shape fails deep inside ONNX Runtime with a message about
tensor ranks; checking the dataset against the model's declared inputs up front turns that
into an error the user can act on.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import onnx
import torch
from onnxruntime.quantization import CalibrationDataReader


def onnx_inputs(path: Path) -> list[tuple[str, list[int | str]]]:
    """Each graph input's name and shape (ints, or the symbolic name of a free dimension)."""
    model = onnx.load(str(path), load_external_data=False)
    initializers = {i.name for i in model.graph.initializer}
    inputs = []
    for value in model.graph.input:
        if value.name in initializers:
            continue
        dims = value.type.tensor_type.shape.dim
        inputs.append(
            (value.name, [d.dim_value if d.HasField("dim_value") else d.dim_param for d in dims])
        )
    return inputs


def torch_inputs(module: torch.nn.Module) -> list[tuple[str, list[int | str]]] | None:
    """The inputs an exported GraphModule was traced with (symbolic dims by name), or None
    when the module does not record them (a plain module, TorchScript)."""
    if not isinstance(module, torch.fx.GraphModule):
        return None
    inputs: list[tuple[str, list[int | str]]] = []
    for node in module.graph.nodes:
        value = node.meta.get("val") if node.op == "placeholder" else None
        if isinstance(value, torch.Tensor):
            dims: list[int | str] = [d if isinstance(d, int) else str(d) for d in value.shape]
            inputs.append((str(node.name), dims))
    return inputs or None


def check_calibration_shapes(
    inputs: Sequence[tuple[str, list[int | str]]], arrays: Sequence[np.ndarray], where: str
) -> None:
    """ValueError naming `where` and both shapes when the data cannot feed the model."""
    if len(inputs) != len(arrays):
        raise ValueError(
            f"{where}: the dataset has {len(arrays)} input array(s) but the model takes "
            f"{len(inputs)} ({', '.join(name for name, _ in inputs)})"
        )
    for (name, dims), array in zip(inputs, arrays, strict=True):
        rows = tuple(array.shape)
        fits = len(dims) == len(rows) and all(
            isinstance(d, str) or d == 0 or d == r for d, r in zip(dims[1:], rows[1:], strict=True)
        )
        if not fits:
            expected = "(" + ", ".join(str(d or "?") for d in dims) + ")"
            raise ValueError(
                f"{where}: the data has shape {rows} but model input {name!r} expects {expected}"
            )


class CalibrationReader(CalibrationDataReader):  # type: ignore[misc]
    """Feeds the first `samples` rows of each input, `batch_size` rows at a time; calls
    `checkpoint` before each batch, where calibration pauses while a sibling run times a model
    (ONNX Runtime runs each batch as it is fed)."""

    def __init__(
        self,
        inputs: Sequence[tuple[str, list[int | str]]],
        arrays: Sequence[np.ndarray],
        samples: int,
        batch_size: int = 32,
        checkpoint: Callable[[], None] = lambda: None,
    ) -> None:
        self._checkpoint = checkpoint
        first = inputs[0][1][0] if inputs and inputs[0][1] else None
        step = first if isinstance(first, int) and first > 0 else batch_size  # a fixed batch
        rows = min(samples, len(arrays[0]))
        self._batches = iter(
            [
                {
                    name: np.ascontiguousarray(array[start : start + step])
                    for (name, _), array in zip(inputs, arrays, strict=True)
                }
                for start in range(0, rows - step + 1 if step != batch_size else rows, step)
            ]
        )

    def get_next(self) -> dict[str, np.ndarray] | None:
        self._checkpoint()
        return next(self._batches, None)
