"""`kompaktor stage run` end to end on file:// outputs, through the real CLI parser."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from kompaktor.api.run import (
    EXIT_FAILED,
    EXIT_INVALID,
    EXIT_OK,
    FAILURE_FILE,
    LOG_FILE,
    RESULT_FILE,
    TERMINATION_LIMIT,
    RunFailure,
    RunRecord,
)
from kompaktor.artifacts import digest_bytes, digest_file
from kompaktor.cli import build_parser
from kompaktor.models import load_model
from kompaktor.stages.runner import StageRequest, StageRunError, run_stage
from kompaktor.stages.train import TrainStage

TRAIN = {"epochs": 1, "lr": 0.01, "batchSize": 32}


@pytest.fixture
def termination_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "termination-log"
    monkeypatch.setenv("KOMPAKTOR_TERMINATION_LOG", str(path))
    return path


def stage_run(model: Path, output: str, *extra: str, stage: str = "train",
              params: object = TRAIN, dataset: str = "sklearn:breast_cancer") -> int:  # fmt: skip
    argv = ["stage", "run", "--type", stage, "--params", json.dumps(params),
            "--input", str(model), "--dataset", dataset, "--output", output, *extra]  # fmt: skip
    args = build_parser().parse_args(argv)
    code: int = args.handler(args)
    return code


def test_train_run_writes_model_log_and_result(
    cancer_mlp_pt2: Path, tmp_path: Path, termination_log: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    out = tmp_path / "runs" / "train-1"
    code = stage_run(cancer_mlp_pt2, out.as_uri(), "--seed", "3", "--metric", "fidelity")
    assert code == EXIT_OK
    record = RunRecord.model_validate_json((out / RESULT_FILE).read_text())
    assert record.type == "train" and record.format == "pt2"
    assert record.params["lr"] == 0.01 and record.params["optimizer"] == "adam"  # defaults kept
    assert record.output.uri == (out / "model.pt2").as_uri()
    assert record.output.digest == digest_file(out / "model.pt2")
    m = record.metrics
    assert m["referenceMetric"] == 1.0  # the reference agrees with itself
    assert m["inputMetric"] == 1.0  # input is the reference here
    assert 0.8 < m["metric"] <= 1.0
    assert m["sizeBytes"] == (out / "model.pt2").stat().st_size
    assert m["sizeBytesInput"] == cancer_mlp_pt2.stat().st_size
    assert m["sizeBytesReference"] == cancer_mlp_pt2.stat().st_size  # the job's model
    assert m["parameters"] == 30 * 16 + 16 + 16 * 2 + 2
    assert m["latencyMs"] > 0 and m["epochs"] == 1.0 and m["finalLoss"] > 0
    assert record.energy_method in ("rapl", "estimate", "nvml")
    assert record.energy_joules is not None and record.energy_joules > 0
    assert record.cpu_seconds > 0 and record.duration_seconds > 0
    assert record.start_time and record.completion_time and record.node
    assert load_model(out / "model.pt2").module is not None
    assert "running stage train" in (out / LOG_FILE).read_text()
    assert not (out / FAILURE_FILE).exists()
    summary = termination_log.read_bytes()
    assert len(summary) <= TERMINATION_LIMIT
    assert RunRecord.model_validate_json(summary).output == record.output
    assert json.loads(capsys.readouterr().out)["output"]["digest"] == record.output.digest


def test_a_compression_that_cannot_shrink_the_file_says_so_in_the_log(
    cancer_mlp_pt2: Path, tmp_path: Path
) -> None:
    """Weight sharing on a 512-weight MLP: encoded, the decoding ops outweighed what the
    codebook saved (the file grew) while the stage reported its stored bytes shrinking. Its
    layers now stay floats, and both the stage and the size check say what happened."""
    out = tmp_path / "runs" / "compress-1"
    sharing = {"method": "weightsharing", "clusters": 4, "fineTuneEpochs": 0}
    assert stage_run(cancer_mlp_pt2, out.as_uri(), stage="compress", params=sharing) == EXIT_OK
    record = RunRecord.model_validate_json((out / RESULT_FILE).read_text())
    m, log = record.metrics, (out / LOG_FILE).read_text()
    assert record.details["storedDense"] == ["0", "2"]
    assert m["sizeBytes"] <= m["sizeBytesInput"]
    assert "compress: weightsharing: warning: the model will not get smaller" in log
    assert "warning: compress made the model larger" not in log


def test_finished_run_is_reused_not_rerun(
    cancer_mlp_pt2: Path, tmp_path: Path, termination_log: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "run"
    assert stage_run(cancer_mlp_pt2, str(out)) == EXIT_OK
    first = (out / RESULT_FILE).read_bytes()

    def explode(*args: object) -> None:
        raise AssertionError("a finished run must not run again")

    monkeypatch.setattr(TrainStage, "run", explode)
    termination_log.unlink()
    assert stage_run(cancer_mlp_pt2, str(out)) == EXIT_OK
    assert (out / RESULT_FILE).read_bytes() == first
    assert RunRecord.model_validate_json(termination_log.read_text()).type == "train"


def test_crashing_stage_leaves_failure_json_and_is_retryable(
    cancer_mlp_pt2: Path, tmp_path: Path, termination_log: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def crash(*args: object) -> None:
        raise RuntimeError("out of cheese")

    monkeypatch.setattr(TrainStage, "run", crash)
    out = tmp_path / "run"
    assert stage_run(cancer_mlp_pt2, str(out)) == EXIT_FAILED
    failure = RunFailure.model_validate_json((out / FAILURE_FILE).read_text())
    assert failure.reason == "StageCrashed" and failure.retryable
    assert "RuntimeError: out of cheese" in failure.message
    assert not (out / RESULT_FILE).exists()
    log = (out / LOG_FILE).read_text()
    assert "Traceback" in log and "out of cheese" in log
    assert RunFailure.model_validate_json(termination_log.read_text()) == failure


def test_bad_params_exit_2_naming_the_field(
    cancer_mlp_pt2: Path, tmp_path: Path, termination_log: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    out = tmp_path / "run"
    assert stage_run(cancer_mlp_pt2, str(out), params={"lr": -1}) == EXIT_INVALID
    assert "stage (train): params.lr: Input should be greater than 0" in capsys.readouterr().err
    failure = RunFailure.model_validate_json((out / FAILURE_FILE).read_text())
    assert failure.reason == "InvalidParams" and not failure.retryable
    assert RunFailure.model_validate_json(termination_log.read_text()) == failure


@pytest.mark.parametrize("value", ["-0.1", "nan"])
def test_a_negative_max_drop_flag_is_refused(
    tmp_path: Path, value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """--max-drop carries the job's objective.maxDrop, which is ≥ 0; -1 was taken."""
    argv = ["stage", "run", "--type", "hpo", "--input", "m.pt2", "--dataset", "sklearn:digits",
            "--output", str(tmp_path / "o"), "--max-drop", value]  # fmt: skip
    with pytest.raises(SystemExit):
        build_parser().parse_args(argv)
    assert "--max-drop: must be a number >= 0" in capsys.readouterr().err


def test_params_that_are_not_json_exit_2(cancer_mlp_pt2: Path, tmp_path: Path) -> None:
    args = build_parser().parse_args(["stage", "run", "--type", "train", "--params", "{lr:",
        "--input", str(cancer_mlp_pt2), "--dataset", "sklearn:breast_cancer",
        "--output", str(tmp_path / "o")])  # fmt: skip
    assert args.handler(args) == EXIT_INVALID


def test_unloadable_input_is_invalid_not_retryable(tmp_path: Path) -> None:
    broken = tmp_path / "broken.pt2"
    broken.write_bytes(b"not a model")
    request = StageRequest(type="train", input=str(broken), dataset="sklearn:breast_cancer",
                           output=str(tmp_path / "o"), params=TRAIN)  # fmt: skip
    with pytest.raises(StageRunError) as caught:
        run_stage(request)
    assert caught.value.exit_code == EXIT_INVALID
    assert caught.value.failure.reason == "InvalidInput"
    assert "broken.pt2" in caught.value.failure.message


def test_an_input_that_changed_since_it_was_planned_is_refused(
    cancer_mlp_pt2: Path, tmp_path: Path
) -> None:
    """A model replaced or corrupted after its run recorded it was used as is (same size, a
    few bytes flipped: accuracy 0.46), and the wrong result cached under the right key."""
    model = tmp_path / "model.pt2"
    model.write_bytes(cancer_mlp_pt2.read_bytes())
    planned = digest_file(model)
    request = StageRequest(type="train", input=str(model), dataset="sklearn:breast_cancer",
                           output=str(tmp_path / "o"), params=TRAIN, input_digest=planned,
                           reference_digest=planned)  # fmt: skip
    run_stage(request)  # as planned: runs
    data = bytearray(model.read_bytes())
    data[-100] ^= 0xFF  # corrupted in place, same size
    model.write_bytes(bytes(data))
    again = dataclasses.replace(request, output=str(tmp_path / "o2"))
    with pytest.raises(StageRunError) as caught:
        run_stage(again)
    assert caught.value.exit_code == EXIT_INVALID and not caught.value.failure.retryable
    message = caught.value.failure.message
    assert f"the input model {model} is not the one this run was planned with" in message
    assert planned in message and not (tmp_path / "o2" / RESULT_FILE).exists()


def test_two_runs_of_one_key_leave_a_record_of_the_model_stored(tmp_path: Path) -> None:
    """The later run replaced model.pt2 after the first published result.json, and the record
    kept describing the first run's bytes."""
    from kompaktor.stages.outputs import OutputPrefix

    out = OutputPrefix(str(tmp_path / "run"))

    def publish(content: bytes) -> RunRecord:
        model = tmp_path / "model.pt2"
        model.write_bytes(content)
        ref = out.put_model(model, "pt2")
        record = RunRecord(type="train", output=ref, format="pt2")
        return out.put_result(record)

    publish(b"first run")
    second = publish(b"second run")  # raced: stored its model after the first published
    assert second.output.digest == digest_bytes(b"second run")
    assert out.cached() == second
    assert (tmp_path / "run" / "model.pt2").read_bytes() == b"second run"


def test_a_dataset_the_model_cannot_take_is_invalid_input_and_logged_without_traceback(
    cancer_mlp_pt2: Path, tmp_path: Path
) -> None:
    """Labels the model has no output for fail the run before the stage does anything: exit 2
    and not retryable, like any other bad input (they were a StageError, exit 1), and the log
    says why in one line: a traceback is for crashes."""
    import numpy as np
    from sklearn.datasets import load_breast_cancer

    x, y = load_breast_cancer(return_X_y=True)
    x = x.astype(np.float32)
    data = tmp_path / "shifted.npz"
    np.savez(data, x_train=x[:400], y_train=y[:400] + 5, x_test=x[400:], y_test=y[400:] + 5)
    out = tmp_path / "run"
    request = StageRequest(type="train", input=str(cancer_mlp_pt2), dataset=str(data),
                           output=str(out), params=TRAIN)  # fmt: skip
    with pytest.raises(StageRunError) as caught:
        run_stage(request)
    assert caught.value.exit_code == EXIT_INVALID
    assert caught.value.failure.reason == "InvalidInput" and not caught.value.failure.retryable
    assert "y_train holds labels 5–6 but the model has 2 outputs" in caught.value.failure.message
    assert "Traceback" not in (out / LOG_FILE).read_text()


def test_onnx_input_to_a_torch_stage_is_invalid(
    cancer_mlp_pt2: Path, tmp_path: Path, cancer: object
) -> None:
    from kompaktor.models import save_onnx
    from kompaktor.training import as_tensors

    module = load_model(cancer_mlp_pt2).module
    assert module is not None
    onnx = save_onnx(module, as_tensors([x[:4] for x in cancer.inputs("test")]),  # type: ignore[attr-defined]
                     tmp_path / "m.onnx")  # fmt: skip
    request = StageRequest(type="train", input=str(onnx), dataset="sklearn:breast_cancer",
                           output=str(tmp_path / "o"), params=TRAIN)  # fmt: skip
    with pytest.raises(StageRunError) as caught:
        run_stage(request)
    assert caught.value.exit_code == EXIT_INVALID
    assert "cannot take onnx models" in caught.value.failure.message


@pytest.mark.parametrize(
    ("stage", "params"), [("train", TRAIN), ("prune", {"sparsity": 0.5, "fineTuneEpochs": 1})]
)
def test_a_torchscript_input_gives_a_torchscript_output(
    cancer_mlp_pt2: Path, tmp_path: Path, stage: str, params: dict[str, object]
) -> None:
    """torch.export cannot take a ScriptModule: these stages crashed writing their output."""
    import torch

    from kompaktor.models import save_torch
    from kompaktor.stages.base import registry

    module = load_model(cancer_mlp_pt2).module
    assert module is not None
    scripted = save_torch(module, (torch.randn(4, 30),), tmp_path / "m.pt")
    request = StageRequest(type=stage, input=str(scripted), dataset="sklearn:breast_cancer",
                           output=str(tmp_path / "o"), params=params)  # fmt: skip
    record = run_stage(request)
    assert record.format == "torchscript" and record.output.uri.endswith("model.pt")
    assert record.metrics["metric"] > 0.85
    loaded = load_model(tmp_path / "o" / "model.pt")
    assert loaded.format == "torchscript" and loaded.module is not None
    before = dict(load_model(scripted).module.named_parameters())  # type: ignore[union-attr]
    changed = [n for n, p in loaded.module.named_parameters() if not torch.equal(p, before[n])]
    assert changed  # trained or pruned, not passed through
    assert registry()[stage]().output_format("torchscript", None) == "torchscript"  # the plan


def test_benchmark_run_keeps_the_input_and_compares_to_reference(
    digits_cnn_small_pt2: Path, digits_cnn_pt2: Path, tmp_path: Path
) -> None:
    request = StageRequest(
        type="benchmark", input=str(digits_cnn_small_pt2), dataset="sklearn:digits",
        output=str(tmp_path / "bench"), reference=str(digits_cnn_pt2),
        params={"batchSizes": [1], "iterations": 10, "warmup": 1},
    )  # fmt: skip
    record = run_stage(request)
    assert record.output.digest == digest_file(digits_cnn_small_pt2)  # output = input
    assert record.metrics["sizeRatio"] < 1.0
    assert record.metrics["latencyMs"] == record.metrics["p50Ms@1"]  # the careful figure wins
    assert record.metrics["referenceMetric"] > 0.8
    assert record.details["models"]["reference"]["format"] == "pt2"
