"""A stage's models from S3: read once (hashed as they download), and refused when they are not
the ones the plan keyed the run by."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from torch import nn

from kompaktor.api.run import EXIT_INVALID, FAILURE_FILE, RESULT_FILE, RunFailure
from kompaktor.artifacts import S3Store, digest_file, open_store
from kompaktor.data import load_dataset
from kompaktor.models import load_model, save_torch
from kompaktor.stages.outputs import RunLog
from kompaktor.stages.runner import StageRequest, StageRunError, _load_inputs, run_stage
from kompaktor.training import as_tensors

IO_STATS = Path("/proc/self/io")


def export_mlp(path: Path, hidden: int, seed: int) -> Path:
    """An untrained breast-cancer classifier (30 features, 2 classes) as .pt2."""
    torch.manual_seed(seed)
    module = nn.Sequential(nn.Linear(30, hidden), nn.ReLU(), nn.Linear(hidden, 2))
    rows = load_dataset("sklearn:breast_cancer").inputs("test")
    return save_torch(module, as_tensors([x[:4] for x in rows]), path)


def bytes_read() -> int:
    """What this process has read through read() calls so far (files, not sockets' recv)."""
    for line in IO_STATS.read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    raise AssertionError("no rchar in /proc/self/io")


def request(bucket: str, tmp_path: Path, digest: str) -> StageRequest:
    return StageRequest(type="train", input=f"{bucket}/models/m.pt2",
                        dataset="sklearn:breast_cancer", output=f"{bucket}/runs/train-1",
                        params={"epochs": 1}, input_digest=digest,
                        reference_digest=digest)  # fmt: skip


@pytest.mark.skipif(not IO_STATS.exists(), reason="needs Linux's /proc/self/io")
def test_an_s3_model_is_hashed_as_it_downloads_not_read_again(
    s3_bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The digest check read the downloaded file once more (digest_file after the download
    had hashed it already): a second pass over a multi-gigabyte model."""
    monkeypatch.setenv("MOTO_S3_DEFAULT_KEY_BUFFER_SIZE", str(64 << 20))  # served from memory
    local = export_mlp(tmp_path / "m.pt2", hidden=65536, seed=0)
    size = local.stat().st_size
    assert size > 8 << 20  # well above what making an S3 client reads (1.5 MB of botocore data)
    digest = digest_file(local)
    open_store(s3_bucket).put_file("models/m.pt2", local)
    run = request(s3_bucket, tmp_path, digest)
    log = RunLog(tmp_path / "stage.log")
    _load_inputs(run, tmp_path / "warm", log)  # imports and dataset caches: once per process

    before = bytes_read()
    model, reference, _ = _load_inputs(run, tmp_path / "w", log)
    fetching = bytes_read() - before
    before = bytes_read()
    load_model(local), load_model(local)  # what loading the input and the reference reads
    fetching -= bytes_read() - before
    log.close()

    assert model.path.read_bytes() == local.read_bytes() and reference.path == model.path
    assert fetching < size / 2  # was 2.2 x size: hashed again for the input and for the reference


@pytest.mark.parametrize("what", ["input", "reference"])
def test_an_s3_model_replaced_since_it_was_planned_is_refused(
    s3_bucket: str, tmp_path: Path, what: str
) -> None:
    """Replaced with a new model and its own digest recorded, so only the plan's digest tells."""
    planned = export_mlp(tmp_path / "planned.pt2", hidden=8, seed=0)
    store = open_store(s3_bucket)
    store.put_file("models/m.pt2", export_mlp(tmp_path / "other.pt2", hidden=8, seed=1))
    store.put_file("models/ref.pt2", planned)
    replaced, kept = f"{s3_bucket}/models/m.pt2", f"{s3_bucket}/models/ref.pt2"
    inputs = (replaced, kept) if what == "input" else (kept, replaced)
    run = dataclasses.replace(
        request(s3_bucket, tmp_path, digest_file(planned)), input=inputs[0], reference=inputs[1]
    )
    with pytest.raises(StageRunError) as caught:
        run_stage(run)
    assert caught.value.exit_code == EXIT_INVALID
    failure = caught.value.failure
    assert (failure.reason, failure.retryable) == ("InvalidInput", False)
    assert failure.message.startswith(
        f"the {what} model {replaced} is not the one this run was planned with: its sha256 is "
        f"{store.digest('models/m.pt2')}, the plan's {digest_file(planned)}."
    )
    assert store.list("runs/train-1") == [f"runs/train-1/{FAILURE_FILE}", "runs/train-1/stage.log"]
    assert (
        RunFailure.model_validate_json(store.get_bytes(f"runs/train-1/{FAILURE_FILE}")) == failure
    )
    assert not store.exists(f"runs/train-1/{RESULT_FILE}")


def test_an_s3_model_corrupted_in_the_store_is_refused(s3_bucket: str, tmp_path: Path) -> None:
    """Bytes that are not the ones the object's own sha256 records: refused while downloading."""
    planned = export_mlp(tmp_path / "planned.pt2", hidden=8, seed=0)
    store = S3Store(s3_bucket)
    store.put_file("models/m.pt2", planned)
    head = store.client.head_object(Bucket=store.bucket, Key="prefix/models/m.pt2")
    data = bytearray(planned.read_bytes())
    data[-100] ^= 0xFF  # same size, one byte flipped, the recorded digest kept
    store.client.put_object(
        Bucket=store.bucket, Key="prefix/models/m.pt2", Body=bytes(data), Metadata=head["Metadata"]
    )
    with pytest.raises(StageRunError) as caught:
        run_stage(request(s3_bucket, tmp_path, digest_file(planned)))
    failure = caught.value.failure
    assert (failure.reason, failure.retryable) == ("InvalidInput", False)
    assert failure.message.startswith(f"digest mismatch reading {s3_bucket}/models/m.pt2")
