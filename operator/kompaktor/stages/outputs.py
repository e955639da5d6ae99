"""What a stage run leaves under its `--output` prefix, and its pod's termination message.

Order is the contract: model, then stage.log, then result.json last (its presence means the run
finished; see kompaktor.api.run). A failed run leaves failure.json and its log beside whatever
partial files it wrote, and never touches a result.json.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import TextIO

from kompaktor.api.run import (
    FAILURE_FILE,
    LOG_FILE,
    RESULT_FILE,
    TERMINATION_LIMIT,
    RunFailure,
    RunRecord,
)
from kompaktor.api.status import OutputRef
from kompaktor.artifacts import ArtifactError, ArtifactStore, open_store
from kompaktor.models import ModelFormat

MODEL_FILES: dict[ModelFormat, str] = {
    "pt2": "model.pt2",
    "torchscript": "model.pt",
    "onnx": "model.onnx",
}
DEFAULT_TERMINATION_LOG = Path("/dev/termination-log")


class OutputPrefix:
    """The artifact prefix one run owns (file://, s3://, or a plain path)."""

    def __init__(self, uri: str) -> None:
        self.uri = uri
        self.store: ArtifactStore = open_store(uri)

    def cached(self) -> RunRecord | None:
        """The record of a run that already finished here, if any."""
        if not self.store.exists(RESULT_FILE):
            return None
        return RunRecord.model_validate_json(self.store.get_bytes(RESULT_FILE))

    def put_model(self, path: Path, model_format: ModelFormat) -> OutputRef:
        ref = self.store.put_file(MODEL_FILES[model_format], path)
        return OutputRef(uri=ref.uri, digest=ref.digest)

    def put_log(self, path: Path) -> None:
        if path.is_file():
            self.store.put_file(LOG_FILE, path)

    def put_result(self, record: RunRecord) -> RunRecord:
        """Write result.json unless another run finished first; returns the record that won,
        which always describes the model stored here: two runs of one key may race, and the
        later one's model may have replaced the first's after the first published."""
        data = record.model_dump_json(by_alias=True, indent=2).encode()
        try:
            self.store.put_bytes(RESULT_FILE, data, overwrite=False)
        except ArtifactError:
            existing = self.cached()
            if existing is None:
                raise
            stored = self._stored_digest(record)
            if existing.output.digest != stored and record.output.digest == stored:
                self.store.put_bytes(RESULT_FILE, data, overwrite=True)
                return record
            return existing
        return record

    def _stored_digest(self, record: RunRecord) -> str | None:
        try:
            return self.store.digest(record.output.uri.rsplit("/", 1)[-1])
        except ArtifactError:
            return None

    def put_failure(self, failure: RunFailure) -> None:
        self.store.put_bytes(FAILURE_FILE, failure.model_dump_json(by_alias=True).encode())


class RunLog:
    """`log(text)`: a timestamped line to stderr and to the run's stage.log file."""

    def __init__(self, path: Path, stream: TextIO | None = None) -> None:
        self.path = path
        self._stream = stream
        self._file = path.open("a", encoding="utf-8")

    def __call__(self, text: str) -> None:
        stamp = time.strftime("%H:%M:%S")
        for line in str(text).splitlines() or [""]:
            entry = f"{stamp} {line}\n"
            (self._stream or sys.stderr).write(entry)
            self._file.write(entry)
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def termination_log_path() -> Path | None:
    """KOMPAKTOR_TERMINATION_LOG when set; else /dev/termination-log if the kubelet made it."""
    override = os.environ.get("KOMPAKTOR_TERMINATION_LOG")
    if override:
        return Path(override)
    return DEFAULT_TERMINATION_LOG if DEFAULT_TERMINATION_LOG.exists() else None


def _writable(path: Path) -> bool:
    if path.exists():
        return os.access(path, os.W_OK)
    return path.parent.is_dir() and os.access(path.parent, os.W_OK)


def write_termination_message(text: str) -> Path | None:
    """Write at most 4 KB where the pod's termination message is read; None if nowhere."""
    path = termination_log_path()
    if path is None or not _writable(path):
        return None
    data = text.encode()[:TERMINATION_LIMIT]
    try:
        path.write_bytes(data)
    except OSError:
        return None
    return path
