"""One way to run any model on numpy batches, whatever its format.

Both paths take one numpy array per model input (float64 becomes float32) and return the first
output as a numpy array, so metrics and latency compare torch and ONNX Runtime like for like.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from kompaktor.models.io import set_eval
from kompaktor.models.lifted import lift_weights
from kompaktor.models.types import LoadedModel, Predictor


def _as_model_array(array: np.ndarray) -> np.ndarray:
    return array.astype(np.float32) if array.dtype == np.float64 else array


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
