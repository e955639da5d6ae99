"""Read an OptimizationJob from YAML, with errors that point at the field (never a traceback)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from kompaktor.api.messages import describe_errors
from kompaktor.api.spec import OptimizationJob
from kompaktor.errors import JobSpecError


def parse_job(document: Any, source: str) -> OptimizationJob:
    if not isinstance(document, dict):
        raise JobSpecError(f"{source}: expected an OptimizationJob mapping, got {document!r:.60}")
    try:
        return OptimizationJob.model_validate(document)
    except ValidationError as error:
        raise JobSpecError(
            f"{source}: invalid OptimizationJob\n"
            + "\n".join(describe_errors(error, document=document))
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
    try:
        text = path.read_text()
    except OSError as error:
        raise JobSpecError(f"cannot read job file {path}: {error.strerror}") from None
    try:
        documents = [d for d in yaml.load_all(text, Loader=UniqueKeyLoader) if d is not None]
    except _DuplicateKeyError as error:
        raise JobSpecError(f"{path}: {error}") from None
    except yaml.YAMLError as error:
        raise JobSpecError(f"{path}: not valid YAML: {error}") from None
    jobs = [d for d in documents if isinstance(d, dict) and d.get("kind") == "OptimizationJob"]
    if len(jobs) != 1:
        found = "none" if not jobs else f"{len(jobs)}"
        raise JobSpecError(f"{path}: expected exactly one OptimizationJob document, found {found}")
    return parse_job(jobs[0], str(path))
