"""The stage command against a real S3-protocol server: input from S3, output prefix on S3."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from kompaktor.api.run import LOG_FILE, RESULT_FILE, RunRecord
from kompaktor.artifacts import open_store
from kompaktor.data import load_dataset
from kompaktor.models import save_torch
from kompaktor.stages.runner import StageRequest, run_stage
from kompaktor.training import as_tensors, fit


def test_train_run_reads_and_writes_s3(s3_bucket: str, tmp_path: Path) -> None:
    cancer = load_dataset("sklearn:breast_cancer")
    torch.manual_seed(0)
    module = nn.Sequential(nn.Linear(30, 8), nn.ReLU(), nn.Linear(8, 2))
    fit(module, cancer, epochs=1, lr=1e-2, batch_size=32, seed=0)
    local = save_torch(module, as_tensors([x[:4] for x in cancer.inputs("test")]),
                       tmp_path / "mlp.pt2")  # fmt: skip
    store = open_store(s3_bucket)
    store.put_file("models/mlp.pt2", local)
    request = StageRequest(
        type="train", input=f"{s3_bucket}/models/mlp.pt2", dataset="sklearn:breast_cancer",
        output=f"{s3_bucket}/runs/train-1", params={"epochs": 1, "lr": 0.01}, seed=1,
    )  # fmt: skip

    record = run_stage(request)

    keys = store.list("runs/train-1")
    assert keys == ["runs/train-1/model.pt2", "runs/train-1/result.json", "runs/train-1/stage.log"]
    assert record.output.uri == f"{s3_bucket}/runs/train-1/model.pt2"
    assert record.output.digest == store.digest("runs/train-1/model.pt2")
    saved = RunRecord.model_validate_json(store.get_bytes(f"runs/train-1/{RESULT_FILE}"))
    assert saved == record
    assert b"running stage train" in store.get_bytes(f"runs/train-1/{LOG_FILE}")
    assert run_stage(request) == record  # finished: reused from S3, not redone
