"""`kompaktor init digits`: a runnable job, its data and a trained model, from nothing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from kompaktor.api.jobfile import load_job_file
from kompaktor.data import load_dataset
from kompaktor.errors import KompaktorError
from kompaktor.evaluate import metric, parameter_count
from kompaktor.models import load_model, predictor_for
from kompaktor.quickstart import digits_job, init_digits
from kompaktor.stages import validate_job


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return init_digits(tmp_path_factory.mktemp("qs") / "digits")


def test_writes_a_valid_job_naming_files_beside_it(quickstart: Path) -> None:
    job = load_job_file(quickstart)
    assert job.metadata.name == "digits-cnn"
    assert (job.spec.model.uri, job.spec.dataset.uri) == ("model.pt2", "digits.npz")
    assert (quickstart.parent / job.spec.model.uri).is_file()
    assert (quickstart.parent / job.spec.dataset.uri).is_file()
    assert job.spec.objective.metric == "accuracy"
    assert job.spec.objective.max_drop == 0.01
    assert [(s.type, s.params) for s in job.spec.stages] == [
        ("train", {"epochs": 2, "lr": 0.0001}),
        ("benchmark", {"batchSizes": [1, 16]}),
    ]
    raw = yaml.safe_load(quickstart.read_text())
    assert (raw["apiVersion"], raw["kind"]) == ("kompaktor.io/v1alpha1", "OptimizationJob")


def test_saved_model_is_accurate_and_has_weights_to_remove(quickstart: Path) -> None:
    model = load_model(quickstart.parent / "model.pt2")
    data = load_dataset(str(quickstart.parent / "digits.npz"))
    assert metric("accuracy", predictor_for(model), data) >= 0.95
    assert predictor_for(model)(data.inputs("test")[0][:1]).shape == (1, 10)
    assert parameter_count(model) > 100_000


def test_data_file_is_the_builtin_split(quickstart: Path) -> None:
    saved, builtin = (
        load_dataset(str(quickstart.parent / "digits.npz")),
        load_dataset("sklearn:digits"),
    )
    for split in ("train", "val", "test"):
        np.testing.assert_array_equal(saved.inputs(split)[0], builtin.inputs(split)[0])
        np.testing.assert_array_equal(saved.targets(split), builtin.targets(split))


@pytest.mark.parametrize("full", [False, True])
def test_both_pipelines_pass_stage_validation(tmp_path: Path, full: bool) -> None:
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(digits_job(full=full)))
    job = load_job_file(path)
    params = validate_job(job.spec)
    assert len(params) == len(job.spec.stages) == (5 if full else 2)


def test_refuses_to_overwrite_an_existing_job(quickstart: Path) -> None:
    before = quickstart.read_text()
    with pytest.raises(KompaktorError, match="already exists"):
        init_digits(quickstart.parent)
    assert quickstart.read_text() == before


@pytest.mark.slow
def test_progress_reports_every_epoch_and_file_and_leaves_the_model_alone(
    tmp_path: Path,
) -> None:
    """Init trained for a minute or more in silence; the report must not change the weights,
    so the demo stays the model the README's figures were measured on."""
    lines: list[str] = []
    reported = init_digits(tmp_path / "reported", epochs=2, progress=lines.append)
    silent = init_digits(tmp_path / "silent", epochs=2)
    epochs = [line.strip() for line in lines if "validation accuracy" in line]
    assert [line.split(":")[0] for line in epochs] == ["epoch 1/2", "epoch 2/2"]
    assert all(0.5 < float(line.split("accuracy ")[1].split()[0]) <= 1.0 for line in epochs)
    for name in ("digits.npz", "model.pt2", "job.yaml"):
        assert any(line.startswith(f"writing {reported.parent / name}") for line in lines)
    model = "model.pt2"
    assert (reported.parent / model).read_bytes() == (silent.parent / model).read_bytes()
