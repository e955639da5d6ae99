"""Evaluation: metric values on known outputs, parameter counts, latency statistics."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from kompaktor.data import Dataset, Split, load_dataset
from kompaktor.errors import KompaktorError
from kompaktor.evaluate import (
    higher_is_better,
    make_batch,
    measure_latency,
    metric,
    model_size_bytes,
    parameter_count,
    predicted_classes,
)
from kompaktor.models import (
    LoadedModel,
    Predictor,
    load_model,
    predictor_for,
    save_onnx,
    save_torch,
)
from kompaktor.zoo import train_tabular_mlp

SPLITS: tuple[Split, ...] = ("train", "val", "test")


def _dataset(y: np.ndarray, task: str = "classification") -> Dataset:
    """Inputs are row indices, so a fake predictor can answer per row."""
    x = np.arange(len(y), dtype=np.float32).reshape(-1, 1)
    return Dataset(
        name="known",
        task=task,  # type: ignore[arg-type]
        x={s: (x,) for s in SPLITS},
        y={s: y for s in SPLITS},
        num_classes=None if task == "regression" else int(y.max()) + 1,
    )


def _answers(outputs: np.ndarray) -> Predictor:
    """A predictor returning `outputs[row]` for each row index it is given."""

    def predict(*x: np.ndarray) -> np.ndarray:
        return np.asarray(outputs[x[0][:, 0].astype(int)])

    return predict


def test_accuracy_is_argmax_agreement_with_labels() -> None:
    logits = np.array([[2, 1, 0], [0, 3, 1], [0, 0, 5], [9, 0, 0]], np.float32)
    data = _dataset(np.array([0, 1, 1, 2]))
    assert metric("accuracy", _answers(logits), data) == pytest.approx(0.5)


@pytest.mark.parametrize("shape", [(4,), (4, 1)])
def test_a_single_logit_is_thresholded_at_zero(shape: tuple[int, ...]) -> None:
    logits = np.array([-1.5, 0.2, 3.0, -0.1], np.float32).reshape(shape)
    data = _dataset(np.array([0, 1, 0, 0]))
    assert metric("accuracy", _answers(logits), data) == pytest.approx(0.75)


def test_fidelity_is_argmax_agreement_with_the_reference() -> None:
    ours = np.array([[1, 0], [0, 1], [1, 0], [0, 1], [1, 0]], np.float32)
    theirs = np.array([[5, 0], [0, 2], [0, 1], [0, 1], [0, 3]], np.float32)
    data = _dataset(np.zeros(5, np.int64))
    assert metric("fidelity", _answers(ours), data, reference=_answers(theirs)) == 0.6
    with pytest.raises(KompaktorError, match="reference"):
        metric("fidelity", _answers(ours), data)


def test_mse_compares_outputs_with_targets() -> None:
    data = _dataset(np.array([1.0, 2.0, 3.0], np.float32), task="regression")
    outputs = np.array([[1.0], [4.0], [0.0]], np.float32)
    assert metric("mse", _answers(outputs), data) == pytest.approx((0 + 4 + 9) / 3)
    assert not higher_is_better("mse") and higher_is_better("accuracy")


def test_unknown_metric_and_accuracy_on_regression_are_errors() -> None:
    data = _dataset(np.array([1.0, 2.0], np.float32), task="regression")
    with pytest.raises(KompaktorError, match="unknown metric 'f1'"):
        metric("f1", _answers(np.zeros((2, 1))), data)
    with pytest.raises(KompaktorError, match="classification"):
        metric("accuracy", _answers(np.zeros((2, 1))), data)


def test_prediction_is_batched_and_covers_every_row() -> None:
    rows = 1100
    seen: list[int] = []
    labels = np.arange(rows) % 2

    def predict(*x: np.ndarray) -> np.ndarray:
        seen.append(len(x[0]))
        return np.asarray(np.eye(2, dtype=np.float32)[labels[x[0][:, 0].astype(int)]])

    assert metric("accuracy", predict, _dataset(labels)) == 1.0
    assert seen == [512, 512, 76]


@pytest.fixture(scope="module")
def cancer() -> Dataset:
    return load_dataset("sklearn:breast_cancer")


@pytest.fixture(scope="module")
def cancer_mlp(cancer: Dataset) -> nn.Module:
    return train_tabular_mlp(cancer, seed=0)


def test_a_trained_model_scores_and_agrees_with_itself(
    tmp_path: Path, cancer: Dataset, cancer_mlp: nn.Module
) -> None:
    example = (torch.zeros(2, 30),)
    torch_model = load_model(save_torch(cancer_mlp, example, tmp_path / "m.pt2"))
    onnx_model = load_model(save_onnx(cancer_mlp, example, tmp_path / "m.onnx"))
    ours, theirs = predictor_for(onnx_model), predictor_for(torch_model)
    assert metric("accuracy", theirs, cancer) > 0.9
    assert metric("fidelity", ours, cancer, reference=theirs) == 1.0
    constant = nn.Linear(30, 2)
    with torch.no_grad():
        constant.bias.copy_(torch.tensor([10.0, 0.0]))  # always class 0
    untrained = nn.Sequential(constant)
    always_zero = predictor_for(load_model(save_torch(untrained, example, tmp_path / "z.pt2")))
    share_of_zeros = float(np.mean(cancer.targets("test") == 0))
    assert metric("fidelity", always_zero, cancer, reference=theirs) < 0.5
    assert metric("accuracy", always_zero, cancer) == pytest.approx(share_of_zeros)


def test_parameter_count_and_size_agree_across_formats(
    tmp_path: Path, cancer_mlp: nn.Module
) -> None:
    example = (torch.zeros(2, 30),)
    expected = sum(p.numel() for p in cancer_mlp.parameters())
    for name in ("m.pt2", "m.pt", "m.onnx"):
        model = load_model(save_torch(cancer_mlp, example, tmp_path / name))
        assert parameter_count(model) == expected, name
        assert model_size_bytes(model) == (tmp_path / name).stat().st_size
        assert model_size_bytes(model) > 4 * expected  # float32 weights are in the file


def test_int8_onnx_counts_its_weights_not_its_scales(tmp_path: Path, cancer_mlp: nn.Module) -> None:
    """Quantized models read more parameters than their float input (20,738 → 21,254 for
    dynamic int8 here): the scales and zero points were counted as weights."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        quantize_dynamic,
        quantize_static,
    )

    class Rows(CalibrationDataReader):
        def __init__(self) -> None:
            self.rows = iter([{"input": np.ones((1, 30), dtype=np.float32)}] * 4)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.rows, None)

    expected = sum(p.numel() for p in cancer_mlp.parameters())
    source = save_onnx(cancer_mlp, (torch.zeros(2, 30),), tmp_path / "m.onnx")
    dynamic, static = tmp_path / "dynamic.onnx", tmp_path / "static.onnx"
    quantize_dynamic(source, dynamic, per_channel=True)
    quantize_static(source, static, Rows(), quant_format=QuantFormat.QDQ, per_channel=True)
    for path in (dynamic, static):
        assert parameter_count(load_model(path)) == expected, path.name


def test_tied_weights_count_once() -> None:
    layer = nn.Linear(4, 4)
    tied = nn.Sequential(layer, nn.ReLU(), layer)
    assert parameter_count(LoadedModel("pt2", Path("x.pt2"), tied)) == 20


def test_make_batch_cycles_sample_rows() -> None:
    (batch,) = make_batch((np.array([[1.0], [2.0], [3.0]]),), 7)
    assert batch[:, 0].tolist() == [1, 2, 3, 1, 2, 3, 1]


def test_latency_percentiles_are_ordered_and_throughput_consistent(
    cancer: Dataset, cancer_mlp: nn.Module
) -> None:
    predict = predictor_for(LoadedModel("pt2", Path("in-memory.pt2"), cancer_mlp))
    latency = measure_latency(predict, cancer.inputs("test"), 16, warmup=3, iterations=50)
    assert latency.batch_size == 16
    assert 0 < latency.p50_ms <= latency.p95_ms <= latency.p99_ms
    # samples per second from the mean call time: near batch / p50 (not per-call, not ms)
    assert 0.1 < latency.throughput * (latency.p50_ms / 1e3) / 16 < 10


def test_latency_runs_warmup_then_iterations_with_the_batch_size() -> None:
    sizes: list[int] = []

    def predict(*x: np.ndarray) -> np.ndarray:
        sizes.append(len(x[0]))
        return x[0]

    measure_latency(predict, (np.ones((3, 2), np.float32),), 5, warmup=4, iterations=20)
    assert sizes == [5] * 24


def test_min_seconds_extends_the_iterations() -> None:
    calls = 0

    def predict(*x: np.ndarray) -> np.ndarray:
        nonlocal calls
        calls += 1
        return x[0]

    measure_latency(predict, (np.ones((1, 2), np.float32),), 1, warmup=0, iterations=5,
                    min_seconds=0.05)  # fmt: skip
    assert calls > 5
    with pytest.raises(ValueError, match="≥ 1"):
        measure_latency(predict, (np.ones((1, 2), np.float32),), 0)


# ------------------------------------------------- data the model cannot take, named


def _rows_dataset(x: tuple[np.ndarray, ...], y: np.ndarray) -> Dataset:
    return Dataset(
        name="probe.npz",
        task="classification",
        x={s: x for s in SPLITS},
        y={s: y for s in SPLITS},
        num_classes=int(y.max()) + 1,
    )


def test_labels_beyond_the_models_outputs_are_an_error_not_a_zero_score() -> None:
    logits = np.tile(np.eye(10, dtype=np.float32), (2, 1))  # 20 rows, 10 classes
    data = _dataset(np.arange(20) % 10 + 5)  # labels 5–14
    with pytest.raises(KompaktorError, match=r"y_train holds labels 5–14 but the model has 10 o"):
        metric("accuracy", _answers(logits), data)
    with pytest.raises(KompaktorError, match=r"known: y_train holds labels 5–14"):
        metric("fidelity", _answers(logits), data, reference=_answers(logits))


def test_labels_are_checked_in_every_split_the_stages_use() -> None:
    logits = np.eye(3, dtype=np.float32)
    fine, wrong = np.array([0, 1, 2]), np.array([0, 1, 3])
    data = Dataset(
        name="known",
        task="classification",
        x={s: (np.arange(3, dtype=np.float32).reshape(-1, 1),) for s in SPLITS},
        y={"train": wrong, "val": fine, "test": fine},
        num_classes=4,
    )
    with pytest.raises(
        KompaktorError, match=r"y_train holds labels 0–3 .* 3 outputs \(classes 0–2"
    ):
        metric("accuracy", _answers(logits), data)


def test_a_single_logit_model_predicts_two_classes_not_more() -> None:
    logits = np.array([[1.0], [-1.0], [2.0]], np.float32)
    assert metric("accuracy", _answers(logits), _dataset(np.array([1, 0, 1]))) == 1.0
    with pytest.raises(KompaktorError, match=r"labels 0–2 but the model has 1 output \(a binary"):
        metric("accuracy", _answers(logits), _dataset(np.array([1, 0, 2])))


def test_an_empty_split_is_named_instead_of_a_numpy_error() -> None:
    empty = Dataset(
        name="known",
        task="classification",
        x={s: (np.zeros((0, 1), np.float32),) for s in SPLITS},
        y={s: np.zeros(0, np.int64) for s in SPLITS},
        num_classes=1,
    )
    with pytest.raises(KompaktorError, match="the test split has no rows"):
        metric("accuracy", _answers(np.zeros((1, 2), np.float32)), empty)


class _Casts(nn.Module):
    """Takes what it is given and converts it itself."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.linear(x.float())
        return out


@pytest.fixture(scope="module")
def small_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Predictor]:
    """A 4-feature, 3-class linear model as .pt2 and .onnx."""
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("small")
    linear = nn.Linear(4, 3)
    example = (torch.zeros(2, 4),)
    return {
        "pt2": predictor_for(load_model(save_torch(linear, example, folder / "m.pt2"))),
        "onnx": predictor_for(load_model(save_onnx(linear, example, folder / "m.onnx"))),
    }


@pytest.mark.parametrize("fmt", ["pt2", "onnx"])
def test_rows_of_the_wrong_shape_name_the_array_and_what_the_model_takes(
    small_models: dict[str, Predictor], fmt: str
) -> None:
    data = _rows_dataset((np.zeros((5, 2, 3), np.float32),), np.arange(5) % 3)
    pattern = r"x_test has rows of shape \(2, 3\) \(float32\), but the model's input .* \(4,\)"
    with pytest.raises(KompaktorError, match=pattern):
        metric("accuracy", small_models[fmt], data)


@pytest.mark.parametrize("fmt", ["pt2", "onnx"])
def test_integer_inputs_for_a_float_model_name_both_dtypes(
    small_models: dict[str, Predictor], fmt: str
) -> None:
    data = _rows_dataset((np.ones((5, 4), np.int64),), np.arange(5) % 3)
    with pytest.raises(KompaktorError, match=r"probe\.npz: x_test is int64 .* takes float32"):
        metric("accuracy", small_models[fmt], data)


def test_a_recorded_dtype_is_an_error_only_when_the_model_fails_on_other_data() -> None:
    """A graph may record float32 yet convert its input itself (no guard refuses int64)."""
    graph = torch.fx.symbolic_trace(_Casts())
    (placeholder,) = graph.graph.find_nodes(op="placeholder")
    placeholder.meta["val"] = torch.zeros(2, 4)
    predict = predictor_for(LoadedModel("pt2", Path("traced.pt2"), graph))
    data = _rows_dataset((np.ones((5, 4), np.int64),), np.arange(5) % 3)
    assert 0.0 <= metric("accuracy", predict, data) <= 1.0


@pytest.mark.parametrize("fmt", ["pt2", "onnx"])
def test_more_input_arrays_than_model_inputs_are_named(
    small_models: dict[str, Predictor], fmt: str
) -> None:
    x = np.zeros((5, 4), np.float32)
    data = _rows_dataset((x, x), np.arange(5) % 3)
    with pytest.raises(KompaktorError, match=r"2 input array\(s\) per split \(x_test_0, x_test_1"):
        metric("accuracy", small_models[fmt], data)


@pytest.mark.parametrize("fmt", ["pt2", "onnx"])
def test_data_that_fits_the_model_is_measured_as_before(
    small_models: dict[str, Predictor], fmt: str
) -> None:
    x = np.random.default_rng(0).standard_normal((6, 4))  # float64 is fed as float32
    data = _rows_dataset((x,), np.arange(6) % 3)
    expected = np.mean(
        predicted_classes(small_models["pt2"](x.astype(np.float32))) == data.y["test"]
    )
    assert metric("accuracy", small_models[fmt], data) == pytest.approx(expected)
