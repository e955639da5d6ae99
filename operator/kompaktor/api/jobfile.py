"""Read an OptimizationJob from YAML, with errors that point at the field (never a traceback)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from kompaktor.api.messages import describe_errors
from kompaktor.api.spec import API_VERSION, KIND, OptimizationJob
from kompaktor.errors import JobSpecError


def parse_job(document: Any, source: str) -> OptimizationJob:
    if not isinstance(document, dict):
        raise JobSpecError(f"{source}: expected an OptimizationJob mapping, got {document!r:.60}")
    try:
        return OptimizationJob.model_validate(document)
    except ValidationError as error:
        raise JobSpecError(
            f"{source}: invalid OptimizationJob\n"
            + "\n".join(describe_errors(error, document=document, model=OptimizationJob))
        ) from None


class _DuplicateKeyError(yaml.YAMLError):
    """A mapping that gives the same key twice."""


class UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping: PyYAML would keep the last
    one silently, so a job file with two `model:` entries would run a model nobody checked."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        first_lines: dict[Any, int] = {}
        for key_node, _ in node.value:
            # Merged keys (<<) may be overridden on purpose; only keys written here count.
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag.endswith(":merge"):
                continue
            key = self.construct_object(key_node)
            line = key_node.start_mark.line + 1
            if key in first_lines:
                raise _DuplicateKeyError(
                    f"line {line}: duplicate key {key!r} (first given on line {first_lines[key]})"
                )
            first_lines[key] = line
        return super().construct_mapping(node, deep=deep)


def load_job_file(path: Path) -> OptimizationJob:
    """The job in `path`; JobSpecError naming the file and the field when it is wrong."""
    documents = _documents(path)
    jobs = _jobs(documents)
    if len(jobs) != 1:
        raise JobSpecError(f"{path}: {_not_one_job(jobs, documents)}")
    return parse_job(jobs[0], str(path))


def job_name(path: Path) -> str | None:
    """metadata.name of the job in `path` also when the job does not validate (a failure
    summary names the job); None when the file has no one job document with a name."""
    try:
        jobs = _jobs(_documents(path))
    except JobSpecError:
        return None
    metadata = jobs[0].get("metadata") if len(jobs) == 1 else None
    name = metadata.get("name") if isinstance(metadata, dict) else None
    return name if isinstance(name, str) else None


def _documents(path: Path) -> list[Any]:
    """The YAML documents in `path`, empty ones left out."""
    try:
        text = path.read_text()
    except OSError as error:
        raise JobSpecError(f"cannot read job file {path}: {error.strerror}") from None
    try:
        return [d for d in yaml.load_all(text, Loader=UniqueKeyLoader) if d is not None]
    except _DuplicateKeyError as error:
        raise JobSpecError(f"{path}: {error}") from None
    except yaml.YAMLError as error:
        raise JobSpecError(f"{path}: not valid YAML: {error}") from None


def _jobs(documents: list[Any]) -> list[dict[str, Any]]:
    return [d for d in documents if isinstance(d, dict) and d.get("kind") == KIND]


def _not_one_job(jobs: list[dict[str, Any]], documents: list[Any]) -> str:
    """Why no single job was read: several, or none with the kinds that were found (a
    misspelled `kind: OptimisationJob` is then plain to see)."""
    if jobs:
        return f"expected exactly one {KIND} document, found {len(jobs)}"
    kinds = [d.get("kind") for d in documents if isinstance(d, dict)]
    found = ", ".join(sorted({repr(k) if not isinstance(k, str) else k for k in kinds if k}))
    what = f"found kind {found}" if found else "found no document with a kind"
    return f"{what}; expected {KIND} (apiVersion {API_VERSION})"


def job_relative_uri(uri: str, job_dir: Path) -> str:
    """`uri` as a job file means it: a path relative to the job file's folder (`job_dir`), made
    an absolute file:// URI; a URI (s3://, file://, sklearn:…) as it is."""
    if ":" in uri.split("/", 1)[0]:
        return uri
    path = Path(uri).expanduser()
    return (path if path.is_absolute() else (job_dir / path).resolve()).as_uri()
