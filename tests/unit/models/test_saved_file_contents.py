"""What a saved model file holds besides the model: no dataset rows, nothing that grows on a
load→save round trip."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from kompaktor.data import Dataset
from kompaktor.models import load_model, predictor_for, save_torch
from kompaktor.models.io import STORED_EXAMPLE_ROWS

VOCABULARY = 50


class TokenModel(nn.Module):
    """Integer inputs: token ids that must stay below VOCABULARY to run."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCABULARY, 8)
        self.head = nn.Linear(8, 3)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.head(self.embed(tokens).mean(1))
        return out


def _tokens(rows: int) -> torch.Tensor:
    return torch.randint(1, VOCABULARY, (rows, 6), generator=torch.Generator().manual_seed(0))


def _rows_in_file(path: Path, rows: torch.Tensor) -> list[int]:
    """Which rows' raw bytes the file holds (torch and ONNX store tensors uncompressed)."""
    data = path.read_bytes()
    return [i for i, row in enumerate(rows) if row.numpy().tobytes() in data]


@pytest.mark.parametrize("filename", ["model.pt2", "model.pt", "model.onnx"])
def test_no_saved_format_holds_the_rows_it_was_exported_with(
    digits_cnn: nn.Module, digits: Dataset, tmp_path: Path, filename: str
) -> None:
    rows = torch.from_numpy(digits.inputs("test")[0][:8])
    path = save_torch(digits_cnn, (rows,), tmp_path / filename)
    assert _rows_in_file(path, rows) == []


def test_a_pt2_stores_zero_examples_that_run_an_integer_input_model(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model, tokens = TokenModel().eval(), _tokens(8)
    path = save_torch(model, (tokens,), tmp_path / "tokens.pt2")
    assert _rows_in_file(path, tokens) == []
    (stored,), kwargs = torch.export.load(path).example_inputs
    assert kwargs == {}
    assert stored.dtype == torch.int64
    assert stored.shape == (STORED_EXAMPLE_ROWS, 6)
    assert not stored.any()
    loaded = load_model(path).require_module("test")
    with torch.no_grad():
        torch.testing.assert_close(loaded(stored), model(stored))
        torch.testing.assert_close(loaded(tokens), model(tokens))


def test_load_save_round_trips_keep_the_size_and_the_predictions(
    digits_cnn: nn.Module, digits: Dataset, tmp_path: Path
) -> None:
    """Each re-export nested torch's module keys one level deeper (+64 bytes a save here).
    The first re-save may be smaller than the export of the original module, never larger."""
    example = (torch.from_numpy(digits.inputs("test")[0][:8]),)
    path = save_torch(digits_cnn, example, tmp_path / "0.pt2")
    sizes = [path.stat().st_size]
    for _ in range(3):
        path = save_torch(load_model(path).require_module("test"), example, path)
        sizes.append(path.stat().st_size)
    assert max(sizes[1:]) - min(sizes[1:]) <= 4 and max(sizes) == sizes[0], sizes
    x = digits.inputs("test")[0][:7]
    with torch.no_grad():
        want = digits_cnn(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(predictor_for(load_model(path))(x), want, atol=1e-5)


def test_the_stored_example_size_does_not_depend_on_the_rows_traced(
    digits_cnn: nn.Module, digits: Dataset, tmp_path: Path
) -> None:
    """A stage traces with 8 rows what was saved with 4: the same model, the same size."""
    x = digits.inputs("test")[0]
    few = save_torch(digits_cnn, (torch.tensor(x[:4]),), tmp_path / "few" / "m.pt2")
    many = save_torch(digits_cnn, (torch.tensor(x[:8]),), tmp_path / "many" / "m.pt2")
    assert abs(many.stat().st_size - few.stat().st_size) <= 4


def test_the_file_name_does_not_change_a_pt2s_size(
    digits_cnn: nn.Module, tmp_path: Path, example: tuple[torch.Tensor, ...]
) -> None:
    """torch named the archive's root folder after the file: the runner's model.pt2 grew
    past the same model saved as m.pt2."""
    short = save_torch(digits_cnn, example, tmp_path / "m.pt2")
    long = save_torch(digits_cnn, example, tmp_path / "a-model-with-a-longer-name.pt2")
    assert short.stat().st_size == long.stat().st_size
