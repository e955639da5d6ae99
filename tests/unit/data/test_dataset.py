"""Datasets: built-in splits are fixed and sane; .npz files are read strictly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from kompaktor.data import Dataset, Split, dataset_digest, load_dataset
from kompaktor.errors import KompaktorError

SPLITS: tuple[Split, ...] = ("train", "val", "test")


def _write(path: Path, **arrays: np.ndarray) -> str:
    np.savez(path, **arrays)  # type: ignore[arg-type]
    return str(path)


def _arrays(rows: tuple[int, int, int] = (6, 2, 2)) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    out: dict[str, np.ndarray] = {}
    for split, n in zip(SPLITS, rows, strict=True):
        out[f"x_{split}"] = rng.standard_normal((n, 3))
        out[f"y_{split}"] = np.arange(n) % 3
    return out


@pytest.mark.parametrize(
    ("name", "shape", "classes", "rows"),
    [
        ("digits", (1, 8, 8), 10, 1797),
        ("breast_cancer", (30,), 2, 569),
        ("wine", (13,), 3, 178),
    ],
)
def test_builtins_have_shapes_classes_and_a_60_20_20_split(
    name: str, shape: tuple[int, ...], classes: int, rows: int
) -> None:
    data = load_dataset(f"sklearn:{name}")
    sizes = {s: len(data.targets(s)) for s in SPLITS}
    assert sum(sizes.values()) == rows
    assert sizes["train"] == pytest.approx(0.6 * rows, abs=1)
    assert sizes["val"] == pytest.approx(0.2 * rows, abs=1)
    assert data.num_classes == classes and data.task == "classification"
    for split in SPLITS:
        (x,) = data.inputs(split)
        assert x.shape[1:] == shape and x.dtype == np.float32
        assert data.targets(split).dtype == np.int64
        assert set(np.unique(data.targets(split))) == set(range(classes))  # stratified


def test_builtin_splits_are_deterministic_and_disjoint() -> None:
    first, second = load_dataset("sklearn:wine"), load_dataset("sklearn:wine")
    for split in SPLITS:
        np.testing.assert_array_equal(first.inputs(split)[0], second.inputs(split)[0])
    rows = [{r.tobytes() for r in first.inputs(s)[0]} for s in SPLITS]
    assert not (rows[0] & rows[1]) and not (rows[0] & rows[2]) and not (rows[1] & rows[2])


def test_digits_pixels_are_scaled_to_unit_range() -> None:
    (x,) = load_dataset("sklearn:digits").inputs("train")
    assert x.min() == 0.0 and x.max() == 1.0


def test_tabular_builtins_are_standardized_with_train_statistics() -> None:
    data = load_dataset("sklearn:breast_cancer")
    (train,) = data.inputs("train")
    np.testing.assert_allclose(train.mean(axis=0), 0, atol=1e-4)
    np.testing.assert_allclose(train.std(axis=0), 1, atol=1e-3)
    (test,) = data.inputs("test")
    assert np.abs(test.mean(axis=0)).max() > 1e-3  # test rows were not standardized on their own


def test_unknown_builtin_names_the_known_ones() -> None:
    with pytest.raises(KompaktorError, match="sklearn:digits"):
        load_dataset("sklearn:mnist")


def test_npz_round_trip_via_save_npz(tmp_path: Path) -> None:
    data = load_dataset("sklearn:wine")
    loaded = load_dataset(str(data.save_npz(tmp_path / "wine.npz")))
    for split in SPLITS:
        np.testing.assert_array_equal(loaded.inputs(split)[0], data.inputs(split)[0])
        np.testing.assert_array_equal(loaded.targets(split), data.targets(split))
    assert loaded.num_classes == 3


def test_npz_through_a_file_uri_casts_float64_to_float32(tmp_path: Path) -> None:
    path = _write(tmp_path / "d.npz", **_arrays())
    data = load_dataset(Path(path).as_uri())
    assert data.inputs("train")[0].dtype == np.float32
    assert data.targets("val").dtype == np.int64
    assert data.num_classes == 3


def test_npz_with_several_inputs_keeps_their_order(tmp_path: Path) -> None:
    arrays = _arrays()
    for split in SPLITS:
        x = arrays.pop(f"x_{split}")
        arrays[f"x_{split}_0"], arrays[f"x_{split}_1"] = x, x[:, :1] * 10
    data = load_dataset(_write(tmp_path / "two.npz", **arrays))
    first, second = data.inputs("test")
    assert first.shape[1] == 3 and second.shape[1] == 1
    np.testing.assert_allclose(second[:, 0], first[:, 0] * 10, rtol=1e-6)


def test_multi_input_round_trip_via_save_npz(tmp_path: Path) -> None:
    base = load_dataset(_write(tmp_path / "one.npz", **_arrays()))
    two = Dataset(
        name="two",
        task="classification",
        x={s: (base.inputs(s)[0], base.inputs(s)[0] + 1) for s in SPLITS},
        y=base.y,
        num_classes=3,
    )
    back = load_dataset(str(two.save_npz(tmp_path / "two.npz")))
    assert len(back.inputs("train")) == 2
    np.testing.assert_array_equal(back.inputs("val")[1], base.inputs("val")[0] + 1)


@pytest.mark.parametrize("missing", ["x_val", "y_test"])
def test_missing_arrays_are_named_with_the_file(tmp_path: Path, missing: str) -> None:
    arrays = _arrays()
    del arrays[missing]
    uri = _write(tmp_path / "partial.npz", **arrays)
    with pytest.raises(KompaktorError, match=missing) as info:
        load_dataset(uri)
    assert uri in str(info.value)


def test_mismatched_lengths_are_an_error(tmp_path: Path) -> None:
    arrays = _arrays()
    arrays["y_train"] = arrays["y_train"][:-1]
    with pytest.raises(KompaktorError, match="train arrays have different lengths"):
        load_dataset(_write(tmp_path / "bad.npz", **arrays))


def test_classification_needs_integer_labels(tmp_path: Path) -> None:
    arrays = _arrays()
    arrays["y_val"] = arrays["y_val"].astype(np.float64) + 0.5
    uri = _write(tmp_path / "float.npz", **arrays)
    with pytest.raises(KompaktorError, match="y_val must hold class indices"):
        load_dataset(uri)
    regression = load_dataset(uri, task="regression")
    assert regression.num_classes is None
    assert regression.targets("val").dtype == np.float32


@pytest.mark.parametrize("content", [b"", b"PK\x03\x04 broken zip"])
def test_unreadable_npz_is_a_clear_error(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "broken.npz"
    path.write_bytes(content)
    with pytest.raises(KompaktorError, match=r"not a readable \.npz"):
        load_dataset(str(path))


@pytest.mark.parametrize("uri", ["data.csv", "s3://bucket/data.parquet"])
def test_other_file_types_are_refused(uri: str) -> None:
    with pytest.raises(KompaktorError, match=r"expected a \.npz file"):
        load_dataset(uri)


def test_missing_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(KompaktorError, match="no artifact"):
        load_dataset(str(tmp_path / "absent.npz"))


def test_npz_digest_follows_content_not_name(tmp_path: Path) -> None:
    arrays = _arrays()
    a = _write(tmp_path / "a.npz", **arrays)
    b = _write(tmp_path / "b.npz", **arrays)
    assert dataset_digest(a) == dataset_digest(b)
    arrays["y_test"] = arrays["y_test"][::-1].copy()
    a2 = _write(tmp_path / "a.npz", **arrays)
    assert dataset_digest(a2) != dataset_digest(b)
    assert dataset_digest(a2).startswith("sha256:")


def test_builtin_digests_are_stable_and_distinct() -> None:
    assert dataset_digest("sklearn:wine") == dataset_digest("sklearn:wine")
    assert dataset_digest("sklearn:wine") != dataset_digest("sklearn:digits")


@pytest.mark.parametrize(
    ("array", "value", "count"),
    [
        ("x_train", np.nan, 4),
        ("x_test", -np.inf, 1),
        ("x_val", 1e39, 2),  # finite in float64, inf once stored as float32
    ],
)
def test_non_finite_inputs_are_refused_naming_the_array_and_count(
    tmp_path: Path, array: str, value: float, count: int
) -> None:
    arrays = _arrays()
    arrays[array].flat[:count] = value
    with pytest.raises(KompaktorError, match=rf"{array} has {count} non-finite value"):
        load_dataset(_write(tmp_path / "nan.npz", **arrays))


def test_non_finite_regression_targets_are_refused(tmp_path: Path) -> None:
    arrays = _arrays()
    arrays["y_test"] = np.array([1.5, np.nan])
    with pytest.raises(KompaktorError, match="y_test has 1 non-finite value"):
        load_dataset(_write(tmp_path / "nan.npz", **arrays), task="regression")


@pytest.mark.parametrize("split", ["train", "test"])
def test_an_empty_train_or_test_split_is_refused_naming_it(tmp_path: Path, split: str) -> None:
    rows = {"train": (0, 2, 2), "test": (6, 2, 0)}[split]
    with pytest.raises(KompaktorError, match=rf"the {split} split is empty \(x_{split} and y_"):
        load_dataset(_write(tmp_path / "empty.npz", **_arrays(rows)))


def test_an_empty_val_split_is_allowed(tmp_path: Path) -> None:
    data = load_dataset(_write(tmp_path / "noval.npz", **_arrays((6, 0, 2))))
    assert len(data.targets("val")) == 0
    assert len(data.with_validation(0.5, seed=0).targets("val")) == 3


def test_splits_with_different_row_shapes_are_refused(tmp_path: Path) -> None:
    arrays = _arrays()
    arrays["x_test"] = np.zeros((2, 4))
    with pytest.raises(
        KompaktorError, match=r"x_test has rows of shape \(4,\).*x_train has \(3,\)"
    ):
        load_dataset(_write(tmp_path / "shapes.npz", **arrays))


def test_splits_with_different_input_counts_are_refused(tmp_path: Path) -> None:
    arrays = _arrays()
    arrays["x_val_0"] = arrays["x_val_1"] = arrays.pop("x_val")
    with pytest.raises(
        KompaktorError, match=r"val split has 2 input array\(s\) \(x_val_0, x_val_1"
    ):
        load_dataset(_write(tmp_path / "counts.npz", **arrays))


def test_non_numeric_inputs_are_refused_naming_the_array(tmp_path: Path) -> None:
    arrays = _arrays()
    arrays["x_train"] = np.array([["a", "b", "c"]] * 6)
    with pytest.raises(KompaktorError, match="x_train has dtype <U1"):
        load_dataset(_write(tmp_path / "text.npz", **arrays))


def test_classification_labels_must_be_one_per_row(tmp_path: Path) -> None:
    arrays = _arrays()
    arrays["y_test"] = arrays["y_test"].reshape(-1, 1)
    with pytest.raises(KompaktorError, match=r"y_test must hold one class index per row.*\(2, 1\)"):
        load_dataset(_write(tmp_path / "column.npz", **arrays))
