"""`kompaktor operator`: start kopf with our handlers, configuration and peering."""

from __future__ import annotations

import argparse
import asyncio
import os
from collections.abc import Sequence

import kopf

from kompaktor.config import CONFIG_ENV, load_config
from kompaktor.metrics.prometheus import JobStatusCollector, serve


async def operate(
    config_path: str | None = None,
    *,
    namespaces: Sequence[str] = (),
    standalone: bool | None = None,
    stop_flag: asyncio.Event | None = None,
    ready_flag: asyncio.Event | None = None,
    liveness_endpoint: str | None = None,
    metrics_port: int | None = None,
) -> None:
    """Run the operator in the current event loop until `stop_flag` (or cancellation)."""
    from kompaktor.controller import handlers  # noqa: F401  (registers the handlers)

    config = load_config(config_path)
    metrics = JobStatusCollector()
    if metrics_port is not None:
        serve(metrics, metrics_port)
    watched = list(namespaces) or config.namespaces
    if standalone is None and not config.peering.enabled:
        standalone = True
    await kopf.operator(
        clusterwide=not watched,
        namespaces=watched,
        standalone=standalone,
        peering_name=config.peering.name,
        stop_flag=stop_flag,
        ready_flag=ready_flag,
        liveness_endpoint=liveness_endpoint,
        memo=kopf.Memo(config_path=config_path or os.environ.get(CONFIG_ENV), metrics=metrics),
    )


def run_operator(args: argparse.Namespace) -> int:
    """Run the operator as `add_operator_arguments` parsed it, until it is stopped."""
    load_config(args.config)  # fail fast, with a clear message, on a bad file
    kopf.configure(verbose=args.verbose)
    asyncio.run(
        operate(
            args.config,
            namespaces=args.namespace,
            standalone=True if args.standalone else None,
            liveness_endpoint=args.liveness,
            metrics_port=args.metrics_port,
        )
    )
    return 0
