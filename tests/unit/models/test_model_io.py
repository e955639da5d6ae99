"""Model files: every format round-trips predictions, broken files fail with a clear message."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from kompaktor.data import Dataset
from kompaktor.errors import KompaktorError, StageError
from kompaktor.models import format_of, load_model, predictor_for, save_onnx, save_torch
from kompaktor.training import fit

Saved = Callable[[str], Path]
FORMATS = ["model.pt2", "model.pt", "model.onnx"]


def _expected(module: nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return module(torch.from_numpy(x)).numpy()  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    ("name", "fmt"),
    [
        ("m.pt2", "pt2"),
        ("s3://bucket/dir/m.PT", "torchscript"),
        ("file:///x/m.onnx", "onnx"),
    ],
)
def test_format_of_reads_the_extension(name: str, fmt: str) -> None:
    assert format_of(name) == fmt


@pytest.mark.parametrize("name", ["model.pth", "model", "s3://b/model.safetensors"])
def test_format_of_rejects_unknown_extensions_naming_the_file(name: str) -> None:
    with pytest.raises(KompaktorError, match="unknown model format") as info:
        format_of(name)
    assert name in str(info.value)
    assert isinstance(info.value, ValueError)  # the stub's contract: a ValueError too


@pytest.mark.parametrize("filename", FORMATS)
@pytest.mark.parametrize("rows", [1, 7])
def test_round_trip_keeps_predictions(
    saved_digits_cnn: Saved,
    digits_cnn: nn.Module,
    digits_batch: np.ndarray,
    filename: str,
    rows: int,
) -> None:
    loaded = load_model(saved_digits_cnn(filename))
    x = digits_batch[:rows]
    got = predictor_for(loaded)(x)
    assert got.shape == (rows, 10)
    np.testing.assert_allclose(got, _expected(digits_cnn, x), rtol=1e-4, atol=1e-5)
    assert (loaded.module is None) == (loaded.format == "onnx")


@pytest.mark.parametrize("filename", ["again.pt2", "again.pt", "again.onnx"])
def test_an_exported_module_saves_again_in_every_format(
    tmp_path: Path,
    saved_digits_cnn: Saved,
    digits_cnn: nn.Module,
    digits_batch: np.ndarray,
    filename: str,
) -> None:
    exported = load_model(saved_digits_cnn("model.pt2")).module
    assert exported is not None
    again = load_model(save_torch(exported, (torch.zeros(1, 1, 8, 8),), tmp_path / filename))
    np.testing.assert_allclose(
        predictor_for(again)(digits_batch), _expected(digits_cnn, digits_batch), atol=1e-5
    )


def test_batch_one_example_still_exports_a_dynamic_batch(
    tmp_path: Path, digits_cnn: nn.Module, digits_batch: np.ndarray
) -> None:
    path = save_torch(digits_cnn, (torch.zeros(1, 1, 8, 8),), tmp_path / "m.pt2")
    assert predictor_for(load_model(path))(digits_batch).shape == (7, 10)


def test_onnx_is_one_self_contained_file_with_a_dynamic_batch(
    tmp_path: Path, digits_cnn: nn.Module, example: tuple[torch.Tensor, ...]
) -> None:
    path = save_onnx(digits_cnn, example, tmp_path / "m.onnx")
    assert [p.name for p in tmp_path.iterdir()] == ["m.onnx"]  # no external-data side file
    graph = onnx.load(str(path)).graph
    assert all(not init.external_data for init in graph.initializer)
    assert graph.input[0].type.tensor_type.shape.dim[0].dim_param  # symbolic, not a number


@pytest.mark.parametrize("filename", ["two.pt2", "two.onnx"])
def test_several_inputs_keep_their_order(
    tmp_path: Path, two_inputs: nn.Module, filename: str
) -> None:
    a, b = torch.randn(2, 3), torch.randn(2, 5)
    loaded = load_model(save_torch(two_inputs, (a, b), tmp_path / filename))
    xa, xb = np.random.default_rng(0).standard_normal((2, 5, 1)).astype(np.float32)
    xa, xb = xa @ np.ones((1, 3), np.float32), xb @ np.ones((1, 5), np.float32)
    want = two_inputs(torch.from_numpy(xa), torch.from_numpy(xb)).detach().numpy()
    np.testing.assert_allclose(predictor_for(loaded)(xa, xb), want, atol=1e-5)


class DictInput(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 2)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.linear(batch["a"] + batch["b"])  # type: ignore[no-any-return]


class KeywordInput(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor, *, mask: torch.Tensor) -> torch.Tensor:
        return self.linear(x * mask)  # type: ignore[no-any-return]


def test_a_model_that_takes_more_than_tensors_is_refused_at_load(tmp_path: Path) -> None:
    """A dict input crashed each stage with torch's own flattening error (StageCrashed)."""
    x = torch.randn(3, 4)
    dict_input = torch.export.export(DictInput(), ({"a": x, "b": x},))
    keywords = torch.export.export(KeywordInput(), (x,), {"mask": x})
    cases = [
        (dict_input, r"its argument 1 is a dict with keys 'a', 'b'"),
        (keywords, r"it takes keyword arguments \('mask'\)"),
    ]
    for number, (program, problem) in enumerate(cases):
        path = tmp_path / f"m{number}.pt2"
        torch.export.save(program, path)
        with pytest.raises(KompaktorError, match=f"{path}: {problem}.*one tensor per input"):
            load_model(path)
    scripted = tmp_path / "dict.pt"
    torch.jit.save(torch.jit.script(DictInput()), scripted)  # type: ignore[no-untyped-call]
    with pytest.raises(KompaktorError, match=r"argument 'batch' is Dict\[str, Tensor\]"):
        load_model(scripted)


def test_a_loaded_pt2_module_trains_and_reexports(
    tmp_path: Path,
    saved_digits_cnn: Saved,
    digits: Dataset,
    digits_batch: np.ndarray,
    example: tuple[torch.Tensor, ...],
) -> None:
    module = load_model(saved_digits_cnn("model.pt2")).module
    assert module is not None
    before = [p.detach().clone() for p in module.parameters()]
    fit(module, digits, epochs=1, lr=1e-3, batch_size=64, seed=0)
    assert any(not torch.equal(b, p) for b, p in zip(before, module.parameters(), strict=True))
    reloaded = load_model(save_torch(module, example, tmp_path / "tuned.pt2"))
    np.testing.assert_allclose(
        predictor_for(reloaded)(digits_batch), _expected(module, digits_batch), atol=1e-5
    )


@pytest.mark.parametrize("filename", FORMATS)
@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty"])
def test_broken_files_raise_a_message_naming_file_and_format(
    tmp_path: Path, saved_digits_cnn: Saved, filename: str, damage: str
) -> None:
    good = saved_digits_cnn(filename).read_bytes()
    broken = tmp_path / f"broken{Path(filename).suffix}"
    content = {"garbage": b"not a model at all" * 10, "truncated": good[: len(good) // 2]}
    broken.write_bytes(content.get(damage, b""))
    with pytest.raises(KompaktorError) as info:
        load_model(broken)
    message = str(info.value)
    assert str(broken) in message
    assert format_of(filename) in message
    assert "\n" not in message


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_a_pickled_checkpoint_named_pt_is_refused_as_not_torchscript(
    tmp_path: Path, legacy: bool
) -> None:
    """torch.save(model, "model.pt") is the most common .pt: it is refused, unread, with what
    to do instead (it said "PytorchStreamReader failed locating file constants.pkl")."""
    path = tmp_path / "model.pt"
    torch.save(nn.Linear(3, 2), path, _use_new_zipfile_serialization=not legacy)
    with pytest.raises(KompaktorError, match=r"torch\.save pickle, not TorchScript.*torch\.export"):
        load_model(path)
    scripted = tmp_path / "scripted.pt"
    torch.jit.save(torch.jit.script(nn.Linear(3, 2)), scripted)
    assert load_model(scripted).format == "torchscript"


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(KompaktorError, match="does not exist"):
        load_model(tmp_path / "nope.pt2")


def test_require_module_explains_that_onnx_has_no_torch_module(saved_digits_cnn: Saved) -> None:
    onnx_model = load_model(saved_digits_cnn("model.onnx"))
    with pytest.raises(StageError, match=r"'prune' needs a PyTorch model.*model\.onnx"):
        onnx_model.require_module("prune")
    torch_model = load_model(saved_digits_cnn("model.pt2"))
    assert torch_model.require_module("prune") is torch_model.module


def test_pt2_with_kernel_ops_loads_in_a_fresh_process(tmp_path: Path) -> None:
    """A program calling kompaktor_kernels ops loads without the caller importing them."""
    kernels = pytest.importorskip("kompaktor_kernels")
    torch.manual_seed(0)
    dense = nn.Linear(16, 4)
    with torch.no_grad():
        dense.weight[dense.weight.abs() < 0.15] = 0
    model = nn.Sequential(kernels.SparseLinear.from_dense(dense)).eval()
    path = save_torch(model, (torch.zeros(2, 16),), tmp_path / "sparse.pt2")
    x = torch.ones(3, 16)
    np.save(tmp_path / "want.npy", model(x).detach().numpy())
    script = (
        "import sys, numpy as np; from pathlib import Path\n"
        "from kompaktor.models import load_model, predictor_for\n"
        "assert 'kompaktor_kernels' not in sys.modules\n"
        f"got = predictor_for(load_model(Path({str(path)!r})))(np.ones((3, 16), np.float32))\n"
        f"np.testing.assert_allclose(got, np.load({str(tmp_path / 'want.npy')!r}), atol=1e-5)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
