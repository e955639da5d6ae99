"""A stand-in for `kompaktor stage run` that tests the operator's mechanics in milliseconds.

It speaks the stage protocol exactly (output model, result.json written last, termination
message, RunFailure JSON and exit codes) without training anything. Behaviour comes from the
environment the test kubelet passes: FAKE_STAGE_SECONDS (run time), FAKE_STAGE_FAIL (stage
types that fail, retryably), FAKE_STAGE_INVALID (stage types that fail for good, exit 2).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from kompaktor.api.run import EXIT_FAILED, EXIT_INVALID, RESULT_FILE, RunFailure, RunRecord
from kompaktor.api.status import OutputRef
from kompaktor.artifacts import digest_bytes, open_store, split_uri


def _terminate(text: str) -> None:
    path = os.environ.get("KOMPAKTOR_TERMINATION_LOG")
    if path:
        Path(path).write_text(text)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("command", nargs=2)
    for name in ("type", "params", "input", "dataset", "output", "reference", "metric", "task",
                 "trial", "max-drop", "input-digest", "reference-digest"):  # fmt: skip
        parser.add_argument(f"--{name}")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    time.sleep(float(os.environ.get("FAKE_STAGE_SECONDS", "0")))
    for variable, code, retryable in (("FAKE_STAGE_FAIL", EXIT_FAILED, True),
                                      ("FAKE_STAGE_INVALID", EXIT_INVALID, False)):  # fmt: skip
        if args.type in os.environ.get(variable, "").split(","):
            failure = RunFailure(type=args.type, reason="StageFailed",
                                 message=f"{args.type} exploded", retryable=retryable)  # fmt: skip
            _terminate(failure.model_dump_json(by_alias=True))
            print(f"error: {args.type} exploded", file=sys.stderr)
            return code
    store, key = split_uri(args.input)
    model = store.get_bytes(key) + json.dumps(json.loads(args.params), sort_keys=True).encode()
    out = open_store(args.output)
    out.put_bytes("model.pt2", model)
    record = RunRecord(
        type=args.type,
        params=json.loads(args.params),
        output=OutputRef(uri=f"{args.output.rstrip('/')}/model.pt2", digest=digest_bytes(model)),
        format="pt2",
        metrics={"metric": 0.9, "referenceMetric": 0.9, "sizeBytes": float(len(model))},
        duration_seconds=0.5,
        node=os.environ.get("KOMPAKTOR_NODE_NAME"),
    )
    out.put_bytes(RESULT_FILE, record.model_dump_json(by_alias=True, exclude_none=True).encode())
    _terminate(record.summary())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
