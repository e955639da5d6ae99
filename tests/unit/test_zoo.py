"""The reference models learn their datasets: the benches and examples rely on real accuracy."""

from __future__ import annotations

import torch

from kompaktor.data import load_dataset
from kompaktor.evaluate import metric
from kompaktor.models.predict import TorchPredictor
from kompaktor.zoo import DIGITS_URI, DigitsMLP, train_digits_mlp


def test_the_digits_mlp_takes_images_and_learns_them() -> None:
    data = load_dataset(DIGITS_URI)
    model = train_digits_mlp(0, hidden=128, epochs=4, dataset=data)
    assert isinstance(model, DigitsMLP)
    assert [m.weight.shape for m in model.modules() if isinstance(m, torch.nn.Linear)] == [
        (128, 64),
        (128, 128),
        (10, 128),
    ]
    assert metric("accuracy", TorchPredictor(model), data, "test") > 0.9
