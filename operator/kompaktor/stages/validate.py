"""Validate a job's stages before any work starts, with messages that name stage and field.

The same check runs at admission (controller), at reconcile, and in `kompaktor run`, so a bad
job file fails the same way everywhere:
`stage 'q' (spec.stages[2], quantize): params.mode: must be one of …`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import ValidationError

from kompaktor.api.jobfile import job_relative_uri
from kompaktor.api.messages import describe_errors
from kompaktor.api.model_refs import stage_model_files
from kompaktor.api.spec import DatasetRef, OptimizationJobSpec
from kompaktor.artifacts import ArtifactError, local_path
from kompaktor.artifacts.s3 import parse_s3_uri
from kompaktor.data.dataset import BUILTIN_PREFIX, BUILTIN_TASKS
from kompaktor.errors import JobSpecError, KompaktorError
from kompaktor.models import ModelFormat, format_of
from kompaktor.stages.base import RESERVED_TYPES, PlanContext, Precision, StageParams, registry

#: The task each objective metric is defined for, and why (evaluate.metric).
_METRIC_TASKS = {
    "accuracy": ("classification", "compares predicted classes with the labels", "use mse"),
    "fidelity": (
        "classification",
        "compares predicted classes with the input model's",
        "use mse",
    ),
    "mse": ("regression", "compares outputs with numeric targets", "use accuracy or fidelity"),
}


def parse_params(stage_type: str, params: dict[str, Any], where: str) -> StageParams:
    """The stage's typed params, or JobSpecError naming `where` and each bad field."""
    stage_cls = registry().get(stage_type)
    if stage_cls is None:
        raise JobSpecError(f"{where}: {_unknown_type(stage_type)}")
    try:
        return stage_cls.Params.model_validate(params)
    except ValidationError as error:
        lines = describe_errors(
            error, f"{where}: params.", model=stage_cls.Params, owner=stage_type
        )
        raise JobSpecError("\n".join(lines)) from None


def _unknown_type(stage_type: str) -> str:
    known = ", ".join(sorted(registry()))
    if stage_type in RESERVED_TYPES:
        return f"type: {stage_type!r} is not available in this version (available: {known})"
    return f"type: unknown stage type {stage_type!r} (known: {known})"


def uri_problem(uri: str) -> str | None:
    """Why the artifact stores cannot read or write `uri` (None: they can): s3://bucket/…,
    file:///absolute/path or a plain path."""
    try:
        if uri.startswith("s3://"):
            parse_s3_uri(uri)
        elif local_path(uri) is None:
            scheme = uri.split("://", 1)[0]
            return f"{uri}: unsupported URI scheme {scheme!r} (use s3://, file:/// or a path)"
    except ArtifactError as error:
        return str(error)
    return None


def _spec_problems(spec: OptimizationJobSpec) -> list[str]:
    """What is wrong outside the stages: URIs the stores cannot open, a dataset that does not
    exist or has another task, a metric the dataset's task has no meaning for."""
    dataset = spec.dataset
    known = ", ".join(BUILTIN_TASKS)
    uris = [("spec.model.uri", spec.model.uri), ("spec.artifacts.uri", spec.artifacts.uri)]
    uris += stage_model_files(spec)
    problems = []
    if dataset.uri.startswith(BUILTIN_PREFIX):
        builtin = BUILTIN_TASKS.get(dataset.uri)
        if builtin is None:
            problems.append(
                f"spec.dataset.uri: unknown built-in dataset {dataset.uri!r}; use one of {known}"
            )
        elif builtin != dataset.task:
            problems.append(
                f"spec.dataset.task: {dataset.uri} is a {builtin} dataset (got {dataset.task})"
            )
    elif not dataset.uri.endswith(".npz"):
        problems.append(
            f"spec.dataset.uri: {dataset.uri}: expected a .npz file or a built-in ({known})"
        )
    else:
        uris.append(("spec.dataset.uri", dataset.uri))
    problems += [
        f"{where}: {problem}"
        for where, uri in uris
        if uri is not None and (problem := uri_problem(uri)) is not None
    ]
    task, source = _task(dataset)
    needs, why, instead = _METRIC_TASKS[spec.objective.metric]
    if task != needs:
        problems.append(
            f"spec.objective.metric: {spec.objective.metric} {why} and needs a {needs} dataset "
            f"({source}); {instead}"
        )
    return problems


def _local_file_problems(spec: OptimizationJobSpec, job_dir: Path) -> list[str]:
    """Model files (the input, a distill teacher) and the dataset named by a path (relative
    to `job_dir`, as `kompaktor run` reads them) or by file:// that are missing, or a dataset
    without the arrays a run reads. S3 objects are not looked at: validation uses no network."""
    problems = []
    for where, path in _local_files(spec, job_dir):
        if not path.is_file():
            problems.append(f"{where}: file not found: {path}")
        elif where == "spec.dataset.uri" and (problem := npz_problem(path)) is not None:
            problems.append(f"{where}: {path}: {problem}")
    return problems


def _local_files(spec: OptimizationJobSpec, job_dir: Path) -> list[tuple[str, Path]]:
    """The models and the .npz dataset as files on this machine, where they are files: not
    remote, not a built-in dataset, nor a URI `_spec_problems` refuses."""
    uris = [("spec.model.uri", spec.model.uri), *stage_model_files(spec)]
    if spec.dataset.uri.endswith(".npz"):
        uris.append(("spec.dataset.uri", spec.dataset.uri))
    files = []
    for where, uri in uris:
        absolute = job_relative_uri(uri, job_dir)
        try:
            path = local_path(absolute) if absolute.startswith("file:") else None
        except ArtifactError:
            continue
        if path is not None:
            files.append((where, path))
    return files


def npz_problem(path: Path) -> str | None:
    """What a run would miss in the .npz dataset at `path` (data/dataset.py's layout), read
    from the file's index alone; None when every array a run reads is there."""
    from kompaktor.data.dataset import missing_arrays, npz_names

    try:
        names = npz_names(path, str(path))
    except KompaktorError as error:
        return str(error).removeprefix(f"dataset {path} is ")
    missing = missing_arrays(names)
    if not missing:
        return None
    has = ", ".join(sorted(names)) or "no arrays"
    return (
        f"has no array {', '.join(missing)} (it has {has}); a dataset holds x_train, y_train, "
        f"x_test, y_test and optionally x_val, y_val (x_train_0, x_train_1, … for a model "
        f"with several inputs)"
    )


def _task(dataset: DatasetRef) -> tuple[str, str]:
    """The dataset's task (a built-in's own, whatever spec.dataset.task says) and, for
    messages, what says so."""
    builtin = BUILTIN_TASKS.get(dataset.uri)
    if builtin is not None:
        return builtin, f"{dataset.uri} is a {builtin} dataset"
    default = "" if "task" in dataset.model_fields_set else ", the default"
    return dataset.task, f"spec.dataset.task is {dataset.task}{default}"


def validate_job(spec: OptimizationJobSpec, job_dir: Path | None = None) -> list[StageParams]:
    """Every stage's parsed params, in order; raises JobSpecError listing every problem.
    With `job_dir` (the job file's folder, for a job run on this machine) the model and
    dataset files it names must be there too."""
    problems: list[str] = []
    parsed: list[StageParams] = []
    try:
        model_format: ModelFormat | None = format_of(spec.model.uri)
    except ValueError as error:
        problems.append(f"spec.model.uri: {error}")
        model_format = None
    problems += _spec_problems(spec)
    if job_dir is not None:
        problems += _local_file_problems(spec, job_dir)
    precision: Precision = "float32"
    quantized_by: str | None = None
    earlier: list[str] = []
    made_by: str | None = None  # which choice of the stage before gives model_format
    for index, stage in enumerate(spec.stages):
        where = stage.where(index)
        cause, made_by = made_by, None
        try:
            params = parse_params(stage.type, stage.params, where)
        except JobSpecError as error:
            problems.append(str(error))
            earlier.append(stage.name)
            model_format = None
            continue
        parsed.append(params)
        impl = registry()[stage.type]()
        if len(stage.pool_names) > 1 and not impl.multi_pool:
            problems.append(f"{where}: pools: only benchmark stages run on several pools")
        if model_format is not None:
            if model_format not in impl.accepts:
                accepted = ", ".join(sorted(impl.accepts))
                problems.append(
                    f"{where}: cannot take {model_format} models (it needs {accepted}; "
                    f"the stage before it or spec.model.uri gives {model_format})"
                    if cause is None
                    else f"{where}: cannot take {model_format} models (it needs {accepted}), "
                    f"and {cause}; keep only choices that give "
                    f"{' or '.join(sorted(impl.accepts))} models"
                )
            plan = PlanContext(
                stage.name,
                model_format,
                tuple(earlier),
                spec.dataset.task,
                input_precision=precision,
                quantized_by=quantized_by,
            )
            try:
                impl.check(params, plan)
            except ValueError as error:
                problems.append(f"{where}: {error}")
                model_format = None  # what it would output is unknown too
            else:
                output = impl.output_format(model_format, params)
                reason = impl.format_cause(model_format, params, output)
                made_by = None if reason is None else f"{where}: {reason}"
                model_format = output
                output_precision = impl.output_precision(precision, params)
                if output_precision != precision:
                    precision, quantized_by = output_precision, stage.name
        earlier.append(stage.name)
    if spec.stages and not spec.stages[-1].gate:
        problems.append(
            f"{spec.stages[-1].where(len(spec.stages) - 1)}: gate: the last stage's output is "
            "the job's result and must keep objective.maxDrop; remove gate: false"
        )
    if problems:
        raise JobSpecError("\n".join(problems))
    return parsed
