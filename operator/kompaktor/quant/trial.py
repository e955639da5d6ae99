"""One forward pass of a quantized model on a few dataset rows, before the stage hands it on.

A conversion can write a file that cannot run: a bf16 graph that still makes a float32 tensor
meets bf16 weights in one op, an int8 graph can hold an op ONNX Runtime has no kernel for. The
runner's evaluation then failed on it as a crash, with torch's or ONNX Runtime's traceback.
Trying the model here turns that into an error naming the op that failed.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import fx, nn
from torch.fx.interpreter import Interpreter

#: Rows of the trial batch, when the model does not fix its batch size.
TRIAL_ROWS = 8


class TrialError(Exception):
    """The model failed on the trial batch; `op` names the failing op when it is known."""

    def __init__(self, op: str | None, message: str) -> None:
        super().__init__(message)
        self.op = op
        self.message = message


def trial_batch(
    arrays: Sequence[np.ndarray], inputs: Sequence[tuple[str, list[int | str]]] | None
) -> list[np.ndarray] | None:
    """The first rows of each input array, as many as the model's fixed batch size (if its
    declared inputs fix one) or TRIAL_ROWS, float64 as float32; None when the data has too few
    rows for a fixed batch."""
    first = inputs[0][1][0] if inputs and inputs[0][1] else None
    fixed = first if isinstance(first, int) and first > 0 else None
    if fixed is not None and any(len(array) < fixed for array in arrays):
        return None
    rows = fixed or TRIAL_ROWS
    batch = [np.ascontiguousarray(np.asarray(array)[:rows]) for array in arrays]
    return [a.astype(np.float32) if a.dtype == np.float64 else a for a in batch]


def try_torch(module: nn.Module, batch: Sequence[np.ndarray]) -> None:
    """TrialError when `module` fails on `batch`, naming the graph node that failed (for a
    GraphModule whose placeholders are its inputs)."""
    tensors = [torch.from_numpy(a) for a in batch]
    try:
        with torch.no_grad():
            module(*tensors)
    except Exception as error:
        op = _failing_node(module, tensors) if isinstance(module, fx.GraphModule) else None
        raise TrialError(op, _first_line(error)) from error


def try_onnx(path: Path, batch: Sequence[np.ndarray]) -> None:
    """TrialError when ONNX Runtime (CPU) cannot load or run the model on `batch`; its message
    names the failing node and op type."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = max(torch.get_num_threads(), 1)
    try:
        session = ort.InferenceSession(
            str(path), sess_options=options, providers=["CPUExecutionProvider"]
        )
        names = [i.name for i in session.get_inputs()]
        session.run(None, dict(zip(names, batch, strict=False)))
    except Exception as error:
        raise TrialError(_onnx_op(str(error)), _first_line(error)) from error


def _failing_node(gm: fx.GraphModule, tensors: list[torch.Tensor]) -> str | None:
    """'name (target)' of the node that raises when the graph is run node by node."""
    placeholders = gm.graph.find_nodes(op="placeholder")
    if len(placeholders) != len(tensors):
        return None
    interpreter = _Tracking(gm)
    try:
        with torch.no_grad():
            interpreter.run(*tensors)
    except Exception:
        node = interpreter.current
        return None if node is None else f"{node.name} ({_target_name(node.target)})"
    return None


class _Tracking(Interpreter):
    def __init__(self, gm: fx.GraphModule) -> None:
        super().__init__(gm)
        self.current: fx.Node | None = None

    def run_node(self, n: fx.Node) -> Any:
        self.current = n
        return super().run_node(n)


def _target_name(target: Any) -> str:
    if isinstance(target, str | torch._ops.OpOverload):
        return str(target)
    return str(getattr(target, "__name__", target))


def _onnx_op(message: str) -> str | None:
    """ONNX Runtime's 'running MatMul node. Name:'/fc/MatMul'' as 'MatMul node /fc/MatMul'."""
    import re

    found = re.search(r"running (\w+) node\. Name:'([^']*)'", message) or re.search(
        r"for (\w+)\(\d+\) node with name '([^']*)'", message
    )
    return f"{found.group(1)} node {found.group(2)!r}" if found else None


def _first_line(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    return f"{type(error).__name__}: {text.splitlines()[0]}"
