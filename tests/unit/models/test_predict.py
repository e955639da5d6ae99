"""Predictors: the same numpy-in, numpy-out behaviour for torch and ONNX Runtime."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from kompaktor.models import load_model, predictor_for

Saved = Callable[[str], Path]


@pytest.mark.parametrize("filename", ["model.pt2", "model.pt", "model.onnx"])
def test_float64_inputs_give_float32_outputs(
    saved_digits_cnn: Saved, digits_batch: np.ndarray, filename: str
) -> None:
    predict = predictor_for(load_model(saved_digits_cnn(filename)))
    got = predict(digits_batch.astype(np.float64))
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, predict(digits_batch), atol=1e-6)


def test_torch_predictor_runs_with_the_requested_threads(
    saved_digits_cnn: Saved, digits_batch: np.ndarray
) -> None:
    model = load_model(saved_digits_cnn("model.pt2"))
    saved = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        predictor_for(model, threads=1)(digits_batch)
        assert torch.get_num_threads() == 1
        torch.set_num_threads(2)
        predictor_for(model)(digits_batch)  # no request: torch's own setting stands
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(saved)


@pytest.mark.parametrize("threads", [1, 2])
def test_onnx_predictor_sets_intra_op_threads(saved_digits_cnn: Saved, threads: int) -> None:
    predict = predictor_for(load_model(saved_digits_cnn("model.onnx")), threads)
    options = predict.session.get_session_options()  # type: ignore[attr-defined]
    assert options.intra_op_num_threads == threads


def test_onnx_predictor_checks_the_input_count(
    saved_digits_cnn: Saved, digits_batch: np.ndarray
) -> None:
    predict = predictor_for(load_model(saved_digits_cnn("model.onnx")))
    with pytest.raises(ValueError, match="takes 1 inputs, got 2"):
        predict(digits_batch, digits_batch)
