"""One way to run any model on numpy batches, whatever its format.

Both paths take one numpy array per model input (float64 becomes float32) and return the first
output as a numpy array, so metrics and latency compare torch and ONNX Runtime like for like.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import fx, nn

from kompaktor.models.io import set_eval
from kompaktor.models.lifted import lift_weights
from kompaktor.models.types import LoadedModel, Predictor


@dataclass(frozen=True)
class InputSpec:
    """One model input as its file declares it, so bad data is named before torch or ONNX
    Runtime fail on it in their own terms. `shape` includes the batch dimension; None marks a
    dimension of any size, and a dtype None one the file does not say (or numpy cannot hold)."""

    name: str
    shape: tuple[int | None, ...]
    dtype: np.dtype[Any] | None


def model_dtype(dtype: np.dtype[Any]) -> np.dtype[Any]:
    """The dtype an input array reaches the model in: float64 goes in as float32."""
    return np.dtype(np.float32) if dtype == np.float64 else dtype


def _as_model_array(array: np.ndarray) -> np.ndarray:
    return array.astype(model_dtype(array.dtype), copy=False)


def _numpy_dtype(dtype: torch.dtype) -> np.dtype[Any] | None:
    try:
        return torch.empty((), dtype=dtype).numpy().dtype
    except (TypeError, RuntimeError):  # bfloat16, quantized and other torch-only dtypes
        return None


def _torch_inputs(module: nn.Module) -> tuple[InputSpec, ...] | None:
    """The placeholders' example tensors an exported program records (dynamic sizes are
    symbols); None for a module without them (TorchScript, an eager or traced module)."""
    if not isinstance(module, fx.GraphModule):
        return None
    specs = []
    for node in module.graph.find_nodes(op="placeholder"):
        example = node.meta.get("val")
        if not isinstance(example, torch.Tensor):
            return None
        shape = tuple(d if isinstance(d, int) else None for d in example.shape)
        specs.append(InputSpec(node.name, shape, _numpy_dtype(example.dtype)))
    return tuple(specs)


#: ONNX tensor element types by the name ONNX Runtime reports (`tensor(float)`).
_ONNX_DTYPES = {
    "float": np.float32,
    "double": np.float64,
    "float16": np.float16,
    "int8": np.int8,
    "int16": np.int16,
    "int32": np.int32,
    "int64": np.int64,
    "uint8": np.uint8,
    "uint16": np.uint16,
    "uint32": np.uint32,
    "uint64": np.uint64,
    "bool": np.bool_,
}


def _onnx_inputs(args: Sequence[Any]) -> tuple[InputSpec, ...]:
    """ONNX Runtime's NodeArgs; a named, empty (0) or missing dimension takes any size."""
    specs = []
    for arg in args:
        dims = tuple(d if isinstance(d, int) and d > 0 else None for d in arg.shape or ())
        element = str(arg.type).removeprefix("tensor(").removesuffix(")")
        dtype = _ONNX_DTYPES.get(element)
        specs.append(InputSpec(arg.name, dims, None if dtype is None else np.dtype(dtype)))
    return tuple(specs)


def _first_output(out: Any) -> torch.Tensor:
    while isinstance(out, tuple | list):
        out = out[0]
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"model returned {type(out).__name__}, expected a tensor")
    return out


class TorchPredictor:
    """eval + inference_mode; `threads` (if given) is applied per call, else torch's setting.

    An exported model runs with its weights lifted into arguments (`kompaktor.models.lifted`),
    so its latency is the model's, not torch's per-call framing."""

    def __init__(self, module: nn.Module, threads: int | None = None) -> None:
        self.module = set_eval(module)
        self.run = lift_weights(self.module) or self.module
        self.threads = threads
        self.inputs = _torch_inputs(self.module)

    def __call__(self, *inputs: np.ndarray) -> np.ndarray:
        if self.threads is not None and torch.get_num_threads() != self.threads:
            torch.set_num_threads(self.threads)
        tensors = [torch.from_numpy(np.ascontiguousarray(_as_model_array(a))) for a in inputs]
        with torch.inference_mode():
            out = _first_output(self.run(*tensors))
        return out.detach().float().numpy()


class OnnxPredictor:
    """ONNX Runtime CPU session; inputs bound to the session's inputs in order."""

    def __init__(self, path: str, threads: int | None = None) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads if threads is not None else torch.get_num_threads()
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        # Spinning workers would starve a torch model measured beside this one (benchmark).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(
            path, sess_options=options, providers=["CPUExecutionProvider"]
        )
        self.names = [i.name for i in self.session.get_inputs()]
        self.inputs: tuple[InputSpec, ...] | None = _onnx_inputs(self.session.get_inputs())

    def __call__(self, *inputs: np.ndarray) -> np.ndarray:
        if len(inputs) != len(self.names):
            raise ValueError(f"ONNX model takes {len(self.names)} inputs, got {len(inputs)}")
        feed = {
            n: np.ascontiguousarray(_as_model_array(a))
            for n, a in zip(self.names, inputs, strict=True)
        }
        out = self.session.run(None, feed)[0]
        return np.asarray(out, dtype=np.float32)


def predictor_for(model: LoadedModel, threads: int | None = None) -> Predictor:
    """torch (eval, inference_mode) for pt2/TorchScript, ONNX Runtime CPU session for ONNX.

    Weights a saved graph computes from stored tensors (a weight-shared model's codebook
    gathers) are computed once here, as a deployment decodes on load, not on every call."""
    if model.module is not None:
        from kompaktor.compression.materialize import materialized_copy

        return TorchPredictor(materialized_copy(model.module)[0], threads)
    return OnnxPredictor(str(model.path), threads)


def expected_inputs(predictor: Predictor) -> tuple[InputSpec, ...] | None:
    """What the predictor's model declares it takes; None when it does not say (a TorchScript
    or eager module, any other callable)."""
    if isinstance(predictor, TorchPredictor | OnnxPredictor):
        return predictor.inputs
    return None
