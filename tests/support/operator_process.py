"""The operator as its own process, for tests and benchmarks (`-m tests.support.operator_process`).

A process, not a thread, because a crashed operator pod is a killed process: SIGKILL leaves no
graceful shutdown to rely on, and its sockets close with it. `--ready-file` is written once
kopf reports ready; `--stub-inputs` replaces the model/dataset probes with fixed answers so
fake stages can run without real files.
"""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

import kopf

FAKE_DIGEST = "sha256:" + "d" * 64


def stub_inputs() -> None:
    import kompaktor.engine as engine
    import kompaktor.stages.validate as validate

    engine.dataset_digest = lambda uri: FAKE_DIGEST  # type: ignore[assignment,attr-defined]
    validate.format_of = lambda uri: "pt2"  # type: ignore[assignment,attr-defined,return-value]


async def run(
    config: str, ready_file: Path | None, standalone: bool, metrics_port: int | None
) -> None:
    from kompaktor.controller import operate

    ready = asyncio.Event()

    async def announce() -> None:
        await ready.wait()
        if ready_file is not None:
            ready_file.write_text("ready")

    announcer = asyncio.create_task(announce())
    try:
        await operate(
            config, standalone=standalone or None, ready_flag=ready, metrics_port=metrics_port
        )
    finally:
        announcer.cancel()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", required=True)
    parser.add_argument("--ready-file", type=Path)
    parser.add_argument("--stub-inputs", action="store_true")
    parser.add_argument("--standalone", action="store_true")
    parser.add_argument("--metrics-port", type=int)
    args = parser.parse_args()
    kopf.configure(verbose=True)  # the log is what a failing test shows
    if args.stub_inputs:
        stub_inputs()
    asyncio.run(run(args.config, args.ready_file, args.standalone, args.metrics_port))


if __name__ == "__main__":
    main()
