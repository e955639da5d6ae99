"""Load a job's dataset into train/val/test splits.

.npz layout: `x_train, y_train, x_val, y_val, x_test, y_test`; a model with several inputs
uses `x_train_0, x_train_1, …` (likewise for val/test) in the order of the model's arguments.
The val arrays may be left out: the split is then empty, and a stage that needs validation rows
(train) holds some train rows out instead (`Dataset.with_validation`).
Built-ins: `sklearn:digits` (N,1,8,8 float32 in [0,1]), `sklearn:breast_cancer` and
`sklearn:wine` (standardized with train statistics); split 60/20/20 stratified with seed 0, so
every stage and every pod sees the same rows.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import zipfile
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal, get_args

import numpy as np

from kompaktor.artifacts import digest_bytes, digest_file, fetch
from kompaktor.errors import KompaktorError

Split = Literal["train", "val", "test"]
Task = Literal["classification", "regression"]
SPLITS: tuple[Split, ...] = get_args(Split)
SPLIT_SEED = 0
BUILTIN_PREFIX = "sklearn:"


@dataclass(frozen=True)
class Dataset:
    name: str
    task: Task
    x: dict[Split, tuple[np.ndarray, ...]]  # one array per model input
    y: dict[Split, np.ndarray]
    num_classes: int | None  # None for regression

    def inputs(self, split: Split) -> tuple[np.ndarray, ...]:
        return self.x[split]

    def targets(self, split: Split) -> np.ndarray:
        return self.y[split]

    def with_validation(self, fraction: float, seed: int) -> Dataset:
        """This dataset when it has validation rows; otherwise `fraction` of the train rows
        (a seeded draw, at least one row, at least one left to train on) become the val split."""
        rows = len(self.y["train"])
        if len(self.y["val"]) or rows < 2:
            return self
        held = min(max(1, round(fraction * rows)), rows - 1)
        order = np.random.default_rng(seed).permutation(rows)
        val, train = np.sort(order[:held]), np.sort(order[held:])
        x = dict(self.x)
        y = dict(self.y)
        x["val"] = tuple(a[val] for a in self.x["train"])
        y["val"] = self.y["train"][val]
        x["train"] = tuple(a[train] for a in self.x["train"])
        y["train"] = self.y["train"][train]
        return replace(self, x=x, y=y)

    def save_npz(self, path: Path) -> Path:
        """Write the .npz layout `load_dataset` reads (so built-ins can ship as files)."""
        arrays: dict[str, np.ndarray] = {}
        for split in SPLITS:
            xs = self.x[split]
            if len(xs) == 1:
                arrays[f"x_{split}"] = xs[0]
            else:
                arrays.update({f"x_{split}_{i}": a for i, a in enumerate(xs)})
            arrays[f"y_{split}"] = self.y[split]
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("wb") as f:
            np.savez_compressed(f, **arrays)  # type: ignore[arg-type]
        return path


# ---------------------------------------------------------------- built-ins


def _split_indices(y: np.ndarray) -> dict[Split, np.ndarray]:
    """Stratified 60/20/20 with a fixed seed."""
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(y))
    train, rest = train_test_split(idx, test_size=0.4, stratify=y, random_state=SPLIT_SEED)
    val, test = train_test_split(rest, test_size=0.5, stratify=y[rest], random_state=SPLIT_SEED)
    return {"train": np.sort(train), "val": np.sort(val), "test": np.sort(test)}


def _builtin(name: str, x: np.ndarray, y: np.ndarray, *, standardize: bool) -> Dataset:
    parts = _split_indices(y)
    xs = {s: x[i].astype(np.float32) for s, i in parts.items()}
    if standardize:
        mean = xs["train"].mean(axis=0)
        std = xs["train"].std(axis=0)
        std[std == 0] = 1.0
        xs = {s: ((a - mean) / std).astype(np.float32) for s, a in xs.items()}
    ys = {s: y[i].astype(np.int64) for s, i in parts.items()}
    return Dataset(
        name=f"{BUILTIN_PREFIX}{name}",
        task="classification",
        x={s: (a,) for s, a in xs.items()},
        y=ys,
        num_classes=int(y.max()) + 1,
    )


def _digits() -> Dataset:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = (bunch.images / 16.0).reshape(-1, 1, 8, 8)
    return _builtin("digits", x, bunch.target, standardize=False)


def _tabular(name: str) -> Dataset:
    from sklearn import datasets

    bunch = getattr(datasets, f"load_{name}")()
    return _builtin(name, bunch.data, bunch.target, standardize=True)


BUILTINS: dict[str, Callable[[], Dataset]] = {
    "digits": _digits,
    "breast_cancer": lambda: _tabular("breast_cancer"),
    "wine": lambda: _tabular("wine"),
}
#: Each built-in by its URI, with its task (`_builtin` makes them all classification): job
#: validation reads this without importing scikit-learn.
BUILTIN_TASKS: dict[str, Task] = {f"{BUILTIN_PREFIX}{name}": "classification" for name in BUILTINS}


def _builtin_name(uri: str) -> str:
    name = uri[len(BUILTIN_PREFIX) :]
    if name not in BUILTINS:
        raise KompaktorError(
            f"unknown built-in dataset {uri!r}; use one of "
            + ", ".join(BUILTIN_PREFIX + n for n in BUILTINS)
        )
    return name


# ---------------------------------------------------------------- .npz files


def _cache_dir() -> Path:
    """Where remote datasets are downloaded: $KOMPAKTOR_CACHE_DIR, else under the temp dir."""
    configured = os.environ.get("KOMPAKTOR_CACHE_DIR")
    base = Path(configured) if configured else Path(tempfile.gettempdir()) / "kompaktor-cache"
    return base / "datasets"


def _local_file(uri: str) -> Path:
    if not uri.endswith(".npz"):
        raise KompaktorError(f"dataset {uri!r}: expected a .npz file or a built-in (sklearn:…)")
    # one folder per URI: two remote files with the same name must not overwrite each other
    return fetch(uri, _cache_dir() / hashlib.sha256(uri.encode()).hexdigest()[:16])


def _split_inputs(
    arrays: Mapping[str, np.ndarray], split: Split, where: str
) -> tuple[np.ndarray, ...]:
    single = f"x_{split}"
    if single in arrays:
        return (arrays[single],)
    many: list[np.ndarray] = []
    while f"{single}_{len(many)}" in arrays:
        many.append(arrays[f"{single}_{len(many)}"])
    if not many:
        raise KompaktorError(f"dataset {where} has no array {single!r} (nor {single}_0, …)")
    return tuple(many)


def _read_npz(path: Path, where: str, *, index_only: bool = False) -> dict[str, np.ndarray]:
    """The file's arrays by name (with `index_only`, the names alone, each mapped to an empty
    array: nothing is read but the index)."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            if index_only:
                return dict.fromkeys(npz.files, np.empty(0))
            return {key: npz[key] for key in npz.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise KompaktorError(f"dataset {where} is not a readable .npz file: {exc}") from exc


def _gives_val(names: Iterable[str]) -> bool:
    """Whether the file gives a val split; without one, a stage holds train rows out."""
    return any(name == "y_val" or name.startswith("x_val") for name in names)


def npz_names(path: Path, where: str) -> list[str]:
    """The names of the .npz file's arrays, from its index alone."""
    return list(_read_npz(path, where, index_only=True))


def missing_arrays(names: Collection[str]) -> list[str]:
    """The arrays a run reads that an .npz with these `names` lacks: x and y of train and test,
    and of val when it gives any (an input also as x_<split>_0, …)."""
    splits = [split for split in SPLITS if split != "val" or _gives_val(names)]
    wanted = [f"{axis}_{split}" for split in splits for axis in ("x", "y")]
    return [n for n in wanted if n not in names and f"{n}_0" not in names]


def _from_npz(path: Path, where: str, task: Task) -> Dataset:
    arrays = _read_npz(path, where)
    xs: dict[Split, tuple[np.ndarray, ...]] = {}
    ys: dict[Split, np.ndarray] = {}
    for split in SPLITS:
        if split == "val" and not _gives_val(arrays):
            xs[split] = tuple(a[:0] for a in xs["train"])  # no validation rows given
            ys[split] = arrays["y_train"][:0]
            continue
        xs[split] = _split_inputs(arrays, split, where)
        if f"y_{split}" not in arrays:
            raise KompaktorError(f"dataset {where} has no array 'y_{split}'")
        ys[split] = arrays[f"y_{split}"]
        _check_rows(xs[split], ys[split], split, where)
    xs = {s: tuple(_float32(a) for a in v) for s, v in xs.items()}
    _check_row_shapes(xs, where)
    if task == "classification":
        for split, y in ys.items():
            if not np.issubdtype(y.dtype, np.integer) or (y.size and y.min() < 0):
                raise KompaktorError(
                    f"dataset {where}: y_{split} must hold class indices (integers ≥ 0) "
                    f"for a classification task, got {y.dtype}"
                )
            if y.ndim != 1:
                raise KompaktorError(
                    f"dataset {where}: y_{split} must hold one class index per row (shape "
                    f"(rows,)) for a classification task, got shape {y.shape}"
                )
        ys = {s: y.astype(np.int64) for s, y in ys.items()}
        num_classes: int | None = int(max(int(y.max()) for y in ys.values() if y.size)) + 1
    else:
        for split, y in ys.items():
            if y.dtype.kind not in "biuf":
                raise KompaktorError(
                    f"dataset {where}: y_{split} must hold real numbers for a regression task, "
                    f"got {y.dtype}"
                )
        ys = {s: y.astype(np.float32) for s, y in ys.items()}
        num_classes = None
    _check_finite(xs, ys, where)
    return Dataset(name=where, task=task, x=xs, y=ys, num_classes=num_classes)


def _float32(array: np.ndarray) -> np.ndarray:
    """Float inputs as models take them; a value beyond float32's range becomes ±inf, which
    `_check_finite` then reports by the array's name (numpy's overflow warning names none)."""
    if not np.issubdtype(array.dtype, np.floating):
        return array
    with np.errstate(over="ignore"):
        return array.astype(np.float32)


def input_names(split: Split, count: int) -> list[str]:
    """The .npz names of a split's input arrays, as the file spells them."""
    return [f"x_{split}"] if count == 1 else [f"x_{split}_{i}" for i in range(count)]


def _check_rows(xs: tuple[np.ndarray, ...], y: np.ndarray, split: Split, where: str) -> None:
    """One row per sample in every array, the same count in each, and rows where they are
    needed: every run measures on test rows and trains, calibrates or exports from train rows
    (only val may be empty, see `Dataset.with_validation`)."""
    for name, array in zip([*input_names(split, len(xs)), f"y_{split}"], [*xs, y], strict=True):
        if array.ndim == 0:
            raise KompaktorError(
                f"dataset {where}: {name} is a single value; it must have one row per sample"
            )
    for name, array in zip(input_names(split, len(xs)), xs, strict=True):
        if array.dtype.kind not in "biuf":
            raise KompaktorError(
                f"dataset {where}: {name} has dtype {array.dtype}; model inputs must be real "
                "numbers (float, integer or bool)"
            )
    lengths = {len(a) for a in xs} | {len(y)}
    if len(lengths) != 1:
        raise KompaktorError(
            f"dataset {where}: the {split} arrays have different lengths {sorted(lengths)}"
        )
    if split != "val" and not len(y):
        names = ", ".join(input_names(split, len(xs)))
        raise KompaktorError(
            f"dataset {where}: the {split} split is empty ({names} and y_{split} have 0 rows); "
            "only the val split may be left empty"
        )


def _check_row_shapes(xs: Mapping[Split, tuple[np.ndarray, ...]], where: str) -> None:
    """Every split feeds the same model: the same inputs, each with the same row shape and
    dtype in every split that has rows (checked here once, so the model is checked on one)."""
    base = xs["train"]
    for split in SPLITS[1:]:
        arrays = xs[split]
        if len(arrays) != len(base):
            raise KompaktorError(
                f"dataset {where}: the {split} split has {len(arrays)} input array(s) "
                f"({', '.join(input_names(split, len(arrays)))}) but the train split has "
                f"{len(base)} ({', '.join(input_names('train', len(base)))})"
            )
        if not len(arrays[0]):
            continue
        names = zip(input_names(split, len(arrays)), input_names("train", len(base)), strict=True)
        for (name, base_name), array, first in zip(names, arrays, base, strict=True):
            if array.shape[1:] != first.shape[1:] or array.dtype != first.dtype:
                raise KompaktorError(
                    f"dataset {where}: {name} has rows of shape {array.shape[1:]} "
                    f"({array.dtype}) but {base_name} has {first.shape[1:]} ({first.dtype}); "
                    "every split must have the same row shape and dtype"
                )


def _check_finite(
    xs: Mapping[Split, tuple[np.ndarray, ...]], ys: Mapping[Split, np.ndarray], where: str
) -> None:
    """NaN or ±inf (also a float64 value beyond float32's range) would not fail a run: every
    prediction would be one arbitrary class and the metric a plausible-looking number."""
    named = [
        (name, array)
        for split in SPLITS
        for name, array in [
            *zip(input_names(split, len(xs[split])), xs[split], strict=True),
            (f"y_{split}", ys[split]),
        ]
        if np.issubdtype(array.dtype, np.floating)
    ]
    for name, array in named:
        bad = int(array.size - np.count_nonzero(np.isfinite(array)))
        if bad:
            raise KompaktorError(
                f"dataset {where}: {name} has {bad} non-finite value(s) among its {array.size} "
                "(NaN, or ±inf once stored as float32); inputs and targets must be finite"
            )


# ---------------------------------------------------------------- public


def load_dataset(uri: str, task: Task = "classification") -> Dataset:
    """Built-in name or .npz at any artifact URI; KompaktorError naming the URI/array if wrong."""
    if uri.startswith(BUILTIN_PREFIX):
        name = _builtin_name(uri)
        if task != "classification":
            raise KompaktorError(f"built-in dataset {uri} is a classification task, not {task}")
        return BUILTINS[name]()
    return _from_npz(_local_file(uri), uri, task)


def dataset_digest(uri: str) -> str:
    """sha256 of the .npz content, or of the built-in's name and scikit-learn version."""
    if uri.startswith(BUILTIN_PREFIX):
        import sklearn

        text = f"{_builtin_name(uri)}\0sklearn={sklearn.__version__}\0split-seed={SPLIT_SEED}"
        return digest_bytes(text.encode())
    return digest_file(_local_file(uri))
