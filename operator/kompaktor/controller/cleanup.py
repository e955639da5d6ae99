"""What `spec.artifacts.deleteOnJobDeletion` deletes when an OptimizationJob goes.

The job's own root (the operator's `<artifactsUri>/<namespace>/<name>`) goes whole. An explicit
`spec.artifacts.uri` may be shared, and other jobs reuse its runs: only the run folders this
job's status names go, and of those only the ones no other OptimizationJob uses. When the other
jobs cannot be listed, nothing goes: this never guesses towards deletion.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from pydantic import ValidationError

from kompaktor.api.run import RESULT_FILE
from kompaktor.api.spec import OptimizationJobSpec
from kompaktor.artifacts import ArtifactError, ArtifactStore, local_path, open_store
from kompaktor.config import OperatorConfig
from kompaktor.controller.kube import ApiError, Kube, all_crs_path, cr_path
from kompaktor.errors import KompaktorError
from kompaktor.plan.keys import output_uri


def deletes_artifacts(spec: Mapping[str, Any]) -> bool:
    artifacts: Any = spec.get("artifacts") or {}
    return bool(artifacts.get("deleteOnJobDeletion"))


async def delete_artifacts(
    body: Mapping[str, Any],
    namespace: str,
    name: str,
    config: OperatorConfig,
    kube: Callable[[], Kube],
    logger: logging.Logger | logging.LoggerAdapter[Any],
) -> None:
    """Delete what the job may delete of its artifacts (the module docstring says what)."""
    spec: Mapping[str, Any] = body.get("spec") or {}
    try:
        parsed = OptimizationJobSpec.model_validate(dict(spec))
        root = config.artifacts_for(parsed, namespace, name)
    except (ValidationError, KompaktorError) as error:  # no root to tell: nothing to delete
        logger.warning("deleted no artifacts: the spec names no artifacts root (%s)", error)
        return
    endpoint = config.s3_endpoint_url
    if not parsed.artifacts.uri:
        removed = await asyncio.to_thread(
            lambda: open_store(root, endpoint_url=endpoint).delete_prefix("")
        )
        logger.info("deleted %d artifacts under %s, the job's own root", removed, root)
        return
    runs, outside = job_runs(root, spec, body.get("status"))
    for uri in outside:
        logger.info("kept %s: not in a run folder under %s", uri, root)
    if not runs:
        logger.info("no run folder of this job to delete under %s (a shared root)", root)
        return
    try:
        jobs = await list_jobs(kube(), config.namespaces, namespace)
    except Exception as error:  # never guess towards deletion
        logger.warning(
            "kept all %d run folders of this job under %s: cannot list the OptimizationJobs "
            "to tell which runs others still use (%s)", len(runs), root, error,
        )  # fmt: skip
        return
    others = [job for job in jobs if _job_name(job) != f"{namespace}/{name}"]
    doomed, kept = await asyncio.to_thread(shared_runs, root, runs, others, config)
    for folder, users in kept.items():
        logger.info("kept %s/%s: %s", root.rstrip("/"), folder, "; ".join(users))
    removed = await asyncio.to_thread(
        lambda: delete_runs(open_store(root, endpoint_url=endpoint), doomed)
    )
    logger.info(
        "deleted %d artifacts in %d run folders under %s; kept %d that other jobs use",
        removed, len(doomed), root, len(kept),
    )  # fmt: skip


def job_runs(root: str, spec: Mapping[str, Any], status: Any) -> tuple[list[str], list[str]]:
    """The run folders (`runs/<type>-<key>`, relative to `root`) that a job's status names:
    every stage's (and pool run's) key and output, every HPO trial's key and output, the
    result; and the output URIs it names that are in no run folder under `root` (kept)."""
    folders: set[str] = set()
    outside: list[str] = []

    def by_key(stage_type: Any, key: Any) -> None:
        if isinstance(stage_type, str) and stage_type and isinstance(key, str) and key:
            folder = run_folder(root, output_uri(root, stage_type, key))
            if folder is not None:
                folders.add(folder)

    def by_uri(uri: Any) -> None:
        if isinstance(uri, str) and uri:
            folder = run_folder(root, uri)
            if folder is None:
                outside.append(uri)
            else:
                folders.add(folder)

    found: Mapping[str, Any] = status if isinstance(status, Mapping) else {}
    for stage in _items(found, "stages"):
        for run in (stage, *_items(stage, "pools")):
            by_key(stage.get("type"), run.get("key"))
            by_uri(_output(run))
    targets = _hpo_targets(spec)
    for trial in _items(found, "trials"):
        by_key(targets.get(str(trial.get("stage"))), trial.get("key"))
        by_uri(_output(trial))
    result = found.get("result")
    if isinstance(result, Mapping):
        by_uri(result.get("uri"))
    return sorted(folders), sorted(set(outside))


def run_folder(root: str, uri: str) -> str | None:
    """`runs/<name>` when `uri` is that run folder of `root` or inside it, else None."""
    base = root.rstrip("/") + "/"
    if not uri.startswith(base):
        return None
    parts = uri[len(base) :].split("/")
    if len(parts) < 2 or parts[0] != "runs" or parts[1] in ("", ".", ".."):
        return None
    if parts[1].startswith(".") or "\\" in parts[1] or "\x00" in parts[1]:
        return None
    return f"runs/{parts[1]}"


def shared_runs(
    root: str, folders: list[str], others: list[dict[str, Any]], config: OperatorConfig
) -> tuple[list[str], dict[str, list[str]]]:
    """Which of a job's run folders may go, and who still uses each of the others.

    Another job uses a folder when its spec or status names a URI in it (an output, an input
    model, a teacher), or when its status holds the folder's key and its artifacts root is
    this one (or cannot be told). A job that is itself being deleted with
    deleteOnJobDeletion does not count: it deletes its own runs.
    """
    canonical_root = canonical_uri(root)
    base = root.rstrip("/")
    targets = {folder: f"{base}/{folder}" for folder in folders}
    canonical = {folder: canonical_uri(uri) for folder, uri in targets.items()}
    users: dict[str, list[str]] = {}
    for job in others:
        meta = job.get("metadata") or {}
        if meta.get("deletionTimestamp") and deletes_artifacts(job.get("spec") or {}):
            continue
        who = _job_name(job)
        same_root = _same_root(job, canonical_root, config)
        keys = {key[:24] for key in _keys(job.get("status"))}
        named = set(_strings([job.get("spec"), job.get("status")]))
        named_canonical = {c for c in map(canonical_uri, named) if c is not None}
        for folder in folders:
            reasons = []
            if same_root is not False and folder.rsplit("-", 1)[-1] in keys:
                root_note = "" if same_root else " (its artifacts root is unknown)"
                reasons.append(f"{who} has its run key{root_note}")
            uri, canon = targets[folder], canonical[folder]
            if _names(named, uri) or (canon is not None and _names(named_canonical, canon)):
                reasons.append(f"{who} names a file in it")
            if reasons:
                users.setdefault(folder, []).extend(reasons)
    doomed = [folder for folder in folders if folder not in users]
    return doomed, users


def delete_runs(store: ArtifactStore, folders: list[str]) -> int:
    """Delete each run folder, its result.json first: a cache probe that runs meanwhile then
    takes the run for unfinished, never for whole."""
    removed = 0
    for folder in folders:
        removed += store.delete_prefix(f"{folder}/{RESULT_FILE}")
        removed += store.delete_prefix(folder)
    return removed


async def list_jobs(kube: Kube, namespaces: list[str], own: str) -> list[dict[str, Any]]:
    """Every OptimizationJob: cluster-wide, or, where only namespaced access is granted, those
    of each watched namespace (and the job's own). Any failure raises."""
    try:
        return await kube.list(all_crs_path())
    except ApiError as error:
        if error.status != 403 or not namespaces:
            raise
    found: list[dict[str, Any]] = []
    for ns in dict.fromkeys([*namespaces, own]):
        found += await kube.list(cr_path(ns))
    return found


def canonical_uri(uri: str) -> str | None:
    """One spelling per location: `s3://bucket/a/b`, or an absolute local path with links
    resolved; None for anything else (a built-in dataset name, a message)."""
    if uri.startswith("s3://"):
        bucket, _, key = uri[len("s3://") :].partition("/")
        return "/".join(["s3:/", bucket, *(part for part in key.split("/") if part)])
    if not (uri.startswith("file:") or uri.startswith("/")):
        return None
    try:
        path = local_path(uri)
        return None if path is None else path.resolve().as_posix()
    except (ArtifactError, OSError, ValueError):
        return None


def _names(uris: set[str], folder: str) -> bool:
    return any(uri == folder or uri.startswith(folder + "/") for uri in uris)


def _same_root(job: Mapping[str, Any], root: str | None, config: OperatorConfig) -> bool | None:
    """Whether another job writes under the same artifacts root; None when it cannot be told."""
    meta = job.get("metadata") or {}
    try:
        spec = OptimizationJobSpec.model_validate(job.get("spec") or {})
        ns, name = str(meta.get("namespace") or "default"), str(meta.get("name") or "")
        other = config.artifacts_for(spec, ns, name)
    except Exception:  # an invalid spec: its runs may be anywhere
        return None
    found = canonical_uri(other)
    return None if found is None or root is None else found == root


def _job_name(job: Mapping[str, Any]) -> str:
    meta = job.get("metadata") or {}
    return f"{meta.get('namespace') or 'default'}/{meta.get('name')}"


def _items(mapping: Mapping[str, Any], field: str) -> list[Mapping[str, Any]]:
    value = mapping.get(field)
    return [item for item in value if isinstance(item, Mapping)] if isinstance(value, list) else []


def _output(run: Mapping[str, Any]) -> Any:
    output = run.get("output")
    return output.get("uri") if isinstance(output, Mapping) else None


def _hpo_targets(spec: Mapping[str, Any]) -> dict[str, str]:
    """HPO stage name → the stage type its trials run (their runs are keyed by it)."""
    targets: dict[str, str] = {}
    for stage in _items(spec, "stages"):
        params = stage.get("params")
        target = params.get("target") if isinstance(params, Mapping) else None
        if stage.get("type") == "hpo" and isinstance(target, str):
            targets[str(stage.get("name"))] = target
    return targets


def _keys(value: Any) -> Iterator[str]:
    """Every run key in a status: stages', pool runs', trials'."""
    if isinstance(value, Mapping):
        for field, item in value.items():
            if field == "key" and isinstance(item, str) and item:
                yield item
            else:
                yield from _keys(item)
    elif isinstance(value, list):
        for item in value:
            yield from _keys(item)


def _strings(value: Any) -> Iterator[str]:
    """Every string in a spec or status, mapping keys included (`modelFileDigests` is keyed
    by URI)."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, Mapping):
        for field, item in value.items():
            if isinstance(field, str):
                yield field
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)
