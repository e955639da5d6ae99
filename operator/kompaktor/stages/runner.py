"""`kompaktor stage run`: one stage run, the same in a pod and in a local subprocess.

Fetch and load the input, the job's original model (reference) and the dataset; run the
technique; save its output; measure it the same way for every stage; write model, stage.log and
result.json (last) under `--output`. A failure leaves failure.json instead and exits 1, or 2
when retrying cannot help (bad params, an input that does not load). A prefix that already has
a result.json is a finished run: it is reported again, never redone or overwritten.

Heavy imports (torch, models) happen inside functions: the CLI imports this module to build its
parser for every command.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import socket
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import ValidationError

from kompaktor.api.run import EXIT_FAILED, EXIT_INVALID, EXIT_OK, LOG_FILE, RunFailure, RunRecord
from kompaktor.api.spec import max_drop_problem
from kompaktor.errors import JobSpecError, KompaktorError, StageError

if TYPE_CHECKING:
    from kompaktor.data import Dataset
    from kompaktor.models import LoadedModel, ModelFormat
    from kompaktor.stages.base import Curve, StageContext, StageResult
    from kompaktor.stages.outputs import OutputPrefix, RunLog

#: The quick latency figure every run reports (benchmark measures properly): at least 30 calls
#: over at least 0.1 s, so a burst from a neighbour cannot set a fast model's median (30 calls
#: of 25 µs took under a millisecond, and one burst moved a figure by 1.5×).
LATENCY_WARMUP, LATENCY_ITERATIONS, LATENCY_SECONDS = 5, 30, 0.1
FAILURE_MESSAGE_LIMIT = 3000
#: Stages whose point is a smaller file: a larger one is worth a warning in the run's log.
SHRINKING = frozenset({"compress", "quantize"})


@dataclass(frozen=True)
class StageRequest:
    """The stage command's arguments. `reference` defaults to `input`."""

    type: str
    input: str
    dataset: str
    output: str
    params: dict[str, Any] = field(default_factory=dict)
    reference: str | None = None
    metric: str = "accuracy"
    task: Literal["classification", "regression"] = "classification"
    seed: int = 0
    #: An HPO trial's context (TrialContext as JSON): the pruner and the finished trials.
    trial: dict[str, Any] | None = None
    #: The job's objective.maxDrop (hpo run standalone picks its winner within it).
    max_drop: float | None = None
    #: The digests the plan keyed the run by (`--input-digest`, `--reference-digest`).
    input_digest: str | None = None
    reference_digest: str | None = None


class _FinishedElsewhere(Exception):  # noqa: N818 (a signal, not an error)
    """Another run of the same key published its result while this one ran."""

    def __init__(self, record: RunRecord) -> None:
        super().__init__("another run of this key finished first")
        self.record = record


class StageRunError(KompaktorError):
    """The run failed; `failure` is what failure.json says, `exit_code` what the command exits,
    `logged` whether the run's log (stderr too) already said it, so the command does not."""

    def __init__(self, failure: RunFailure, exit_code: int, *, logged: bool = False) -> None:
        super().__init__(failure.message)
        self.failure = failure
        self.exit_code = exit_code
        self.logged = logged


class _InvalidInputError(KompaktorError):
    """An input that cannot be used by this stage at all: retrying will not help."""


# --------------------------------------------------------------------------- CLI


def build_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `stage run` to the `kompaktor` command."""
    from kompaktor.stages.base import registry

    stage = sub.add_parser("stage", help="run one stage (what each pod or local process runs)")
    stage_sub = stage.add_subparsers(dest="stage_command", required=True)
    run = stage_sub.add_parser("run", help="run one stage and write its output")
    run.add_argument("--type", required=True, help=f"stage type: {', '.join(sorted(registry()))}")
    run.add_argument("--params", default="{}", help="the stage's params as a JSON object")
    run.add_argument("--input", required=True, help="input model URI (.pt2, .pt, .onnx)")
    run.add_argument("--dataset", required=True, help="dataset URI or built-in (sklearn:digits)")
    run.add_argument("--output", required=True, help="output prefix URI (s3://, file://, path)")
    run.add_argument("--reference", help="the job's original model (default: --input)")
    run.add_argument(
        "--input-digest",
        help="sha256:… the input model must have (the plan passes the digest it keyed the run "
        "by, so a file replaced or corrupted since is refused, not used)",
    )
    run.add_argument("--reference-digest", help="the same for --reference")
    run.add_argument(
        "--metric",
        default="accuracy",
        choices=["accuracy", "fidelity", "mse"],
        help="the job's objective.metric, measured on the test split (default: accuracy)",
    )
    run.add_argument(
        "--task",
        default="classification",
        choices=["classification", "regression"],
        help="the job's spec.dataset.task: decides the loss (default: classification)",
    )
    run.add_argument("--seed", type=int, default=0, help="the job's seed (default: 0)")
    run.add_argument(
        "--trial",
        help="HPO trial context as JSON (the pruner and the finished trials' curves); the plan "
        "passes it when the hpo stage has a pruner",
    )
    run.add_argument(
        "--max-drop",
        type=_max_drop,
        help="the job's objective.maxDrop: a standalone hpo run picks its winner among trials "
        "within it (default: no bound)",
    )
    run.set_defaults(handler=main_stage)


def _max_drop(text: str) -> float:
    """objective.maxDrop's rule (a number ≥ 0), for the flag that passes it on."""
    value = float(text)
    if not value >= 0:  # also NaN
        raise argparse.ArgumentTypeError(f"must be a number >= 0, got {text}")
    return value


def main_stage(args: argparse.Namespace) -> int:
    """Run the stage from parsed args; print the record (stdout) and leave the pod's summary.

    SIGTERM and SIGHUP (a pod deleted or evicted, `kompaktor run` stopping its stages) and
    Ctrl-C stop the run as a retryable failure (exit 1, reason Interrupted) after its cleanup
    has run: a multipart upload under way is aborted, the temporary folder removed."""
    from kompaktor.interrupts import termination_interrupts
    from kompaktor.stages.outputs import write_termination_message

    try:
        _check_max_drop(args.type, args.metric, args.max_drop)
        request = StageRequest(
            type=args.type,
            params=_parse_json_object(args.type, "--params", args.params),
            input=args.input,
            dataset=args.dataset,
            output=args.output,
            reference=args.reference,
            metric=args.metric,
            task=args.task,
            seed=args.seed,
            trial=_parse_json_object(args.type, "--trial", args.trial) if args.trial else None,
            max_drop=args.max_drop,
            input_digest=args.input_digest,
            reference_digest=args.reference_digest,
        )
        with termination_interrupts():
            record = run_stage(request)
    except StageRunError as error:
        write_termination_message(error.failure.model_dump_json(by_alias=True))
        if not error.logged:
            print(f"error: {error.failure.message}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt as stop:
        failure = RunFailure(
            type=args.type,
            reason="Interrupted",
            message=f"stage ({args.type}): stopped by {stop or 'SIGINT'} before it finished",
            retryable=True,
        )
        write_termination_message(failure.model_dump_json(by_alias=True))
        print(f"error: {failure.message}", file=sys.stderr, flush=True)
        _leave_interrupted(args.output, failure)
        return EXIT_FAILED
    write_termination_message(record.summary())
    print(record.model_dump_json(by_alias=True, indent=2))
    return EXIT_OK


def _leave_interrupted(output: str, failure: RunFailure) -> None:
    """failure.json for an interrupted run, best effort: the store may be what is down."""
    from kompaktor.stages.outputs import OutputPrefix

    try:
        OutputPrefix(output).put_failure(failure)
    except Exception as error:
        print(f"could not write failure.json to {output}: {error}", file=sys.stderr)


def _parse_json_object(stage_type: str, option: str, text: str) -> dict[str, Any]:
    try:
        params = json.loads(text)
    except json.JSONDecodeError as error:
        params, problem = None, f"not JSON ({error})"
    else:
        problem = "must be a JSON object"
    if isinstance(params, dict):
        return params
    raise _invalid(stage_type, option, problem)


def _check_max_drop(stage_type: str, metric: str, max_drop: float | None) -> None:
    """objective.maxDrop's rule for its metric, for the flag that passes it on."""
    problem = None if max_drop is None else max_drop_problem(metric, max_drop)
    if problem is not None:
        raise _invalid(stage_type, "--max-drop", problem)


def _invalid(stage_type: str, option: str, problem: str) -> StageRunError:
    """A flag that cannot work: failure.json says so, and retrying will not help."""
    message = f"stage ({stage_type}): {option}: {problem}"
    failure = RunFailure(type=stage_type, reason="InvalidParams", message=message, retryable=False)
    return StageRunError(failure, EXIT_INVALID)


# --------------------------------------------------------------------------- the run


def run_stage(request: StageRequest) -> RunRecord:
    """Run one stage to completion, or raise StageRunError after writing failure.json."""
    from kompaktor.stages.outputs import OutputPrefix, RunLog

    with tempfile.TemporaryDirectory(prefix="kompaktor-stage-") as tmp:
        work = Path(tmp)
        log = RunLog(work / LOG_FILE)
        out: OutputPrefix | None = None
        try:
            out = OutputPrefix(request.output)
            cached = out.cached()
            if cached is not None:
                log(f"{request.output} already has a finished run: reusing it")
                return cached
            record = _execute(request, work, out, log)
            out.put_log(log.path)
            return out.put_result(record)
        except _FinishedElsewhere as other:
            log(f"{request.output}: another run of this key finished first: reusing it")
            return other.record
        except Exception as error:
            failure, code = _classify(request.type, error)
            log(f"failed ({failure.reason}): {failure.message}")
            # Our own errors say what is wrong; only a crash needs its traceback in the log.
            if not isinstance(error, KompaktorError):
                log("".join(traceback.format_exception(error)).rstrip())
            _leave_failure(out, failure, log)
            raise StageRunError(failure, code, logged=True) from error
        finally:
            log.close()


def _execute(request: StageRequest, work: Path, out: OutputPrefix, log: RunLog) -> RunRecord:
    from kompaktor.timing_lock import paused_seconds, working

    paused_before = paused_seconds()
    # The whole run is work a sibling's timing waits for (kompaktor.timing_lock): importing the
    # stages' libraries (≈1.4 s of CPU: torch, ONNX Runtime, Optuna), loading, exporting and
    # saving have no step to pause at, so none of them may start during one.
    with working():
        return _execute_working(request, work, out, log, paused_before)


def _execute_working(
    request: StageRequest, work: Path, out: OutputPrefix, log: RunLog, paused_before: float
) -> RunRecord:
    from kompaktor.evaluate import model_size_bytes
    from kompaktor.metrics import EnergyMeter
    from kompaktor.stages.base import StageContext, registry
    from kompaktor.stages.sparse_layers import run_with_sparse_layers
    from kompaktor.stages.validate import parse_params
    from kompaktor.timing_lock import TIMING_LOCK_ENV, paused_seconds
    from kompaktor.training import seed_everything

    started = _now()
    with EnergyMeter() as meter:
        params = parse_params(request.type, request.params, where=f"stage ({request.type})")
        stage = registry()[request.type]()
        try:
            stage.preflight(params)
        except ValueError as error:
            raise JobSpecError(f"stage ({request.type}): {error}") from None
        curve = _curve(request, stage.reports_curve, log)
        seed_everything(request.seed)
        model, reference, dataset = _load_inputs(request, work, log)
        if model.format not in stage.accepts:
            accepted = ", ".join(sorted(stage.accepts))
            raise _InvalidInputError(
                f"stage ({request.type}) cannot take {model.format} models (needs {accepted})"
            )
        before = _input_metrics(request.metric, model, reference, dataset)
        log(f"input {request.metric}: {before['inputMetric']:.4f} "
            f"(reference {before['referenceMetric']:.4f})")  # fmt: skip
        (work / "scratch").mkdir()
        ctx: StageContext[Any] = StageContext(
            params=params,
            model=model,
            dataset=dataset,
            work_dir=work / "scratch",
            seed=request.seed,
            metric=request.metric,
            reference=reference,
            resolve=lambda uri: _fetch(uri, work / "resolved"),
            log=log,
            report=lambda step, value: log(f"report step {step}: {value:.6g}"),
            curve=curve,
            max_drop=request.max_drop,
        )
        log(f"running stage {request.type} with {json.dumps(request.params, sort_keys=True)}")
        result = run_with_sparse_layers(stage, ctx)
        path, model_format = write_model(result, dataset, work, request.type)
        metrics = output_metrics(request.metric, path, reference, dataset, result.metrics)
        metrics.update(
            before,
            sizeBytesInput=float(model_size_bytes(model)),
            sizeBytesReference=float(model_size_bytes(reference)),
        )
        if os.environ.get(TIMING_LOCK_ENV):
            metrics["pausedForTimingSeconds"] = round(paused_seconds() - paused_before, 3)
        if request.type in SHRINKING and metrics["sizeBytes"] > metrics["sizeBytesInput"]:
            grown = f"{metrics['sizeBytesInput']:.0f} -> {metrics['sizeBytes']:.0f} bytes"
            log(f"warning: {request.type} made the model larger ({grown}): on a small model "
                "the decoding or quantization ops can outweigh the weights they save")  # fmt: skip
        if (done := out.cached()) is not None:  # a run of this key raced ours and won: its
            raise _FinishedElsewhere(done)  # model stays, not overwritten by ours
        output = out.put_model(path, model_format)
        log(f"output {request.metric}: {metrics['metric']:.4f}, "
            f"{metrics['sizeBytes']:.0f} bytes → {output.uri}")  # fmt: skip
        if (broken := broken_output(request, metrics, dataset.num_classes)) is not None:
            log(broken)  # a warning only: with no bound given, the run itself succeeded
    reading = meter.reading
    assert reading is not None
    return RunRecord(
        type=request.type,
        params=params.model_dump(by_alias=True, mode="json"),
        output=output,
        format=model_format,
        metrics=metrics,
        details={**result.details, "energyParts": reading.parts},
        curve=curve.points,
        pruned=curve.pruned,
        start_time=started,
        completion_time=_now(),
        duration_seconds=reading.wall_seconds,
        cpu_seconds=reading.cpu_seconds,
        energy_joules=reading.joules,
        energy_method=reading.method,
        node=os.environ.get("KOMPAKTOR_NODE_NAME") or socket.gethostname(),
    )


def _curve(request: StageRequest, reports: bool, log: RunLog) -> Curve:
    """The run's validation curve; in an HPO trial with a pruner, wired to the rebuilt study."""
    from kompaktor.api.run import TrialContext
    from kompaktor.stages.curves import trial_curve

    if request.trial is None:
        return trial_curve(None, request.metric, log)
    try:
        context = TrialContext.model_validate(request.trial)
    except ValidationError as error:
        from kompaktor.api.messages import describe_errors

        lines = describe_errors(error, f"stage ({request.type}): --trial.")
        raise JobSpecError("\n".join(lines)) from None
    if not reports:
        log(f"trial {context.number}: {request.type} reports no validation curve; no pruning")
        return trial_curve(None, request.metric, log)
    curve = trial_curve(context, request.metric, log)
    log(
        f"trial {context.number}: {context.pruner.name} pruner over "
        f"{len(context.history)} finished trials, a point every {context.stride} epoch(s)"
    )
    return curve


def _fetch(uri: str, dest: Path) -> Path:
    from kompaktor.artifacts import fetch

    dest.mkdir(parents=True, exist_ok=True)
    return fetch(uri, dest)


def _fetch_digest(uri: str, dest: Path) -> tuple[Path, str]:
    """A model's local file and its digest, taken as it downloads: the digest check costs no
    second read of a multi-gigabyte model."""
    from kompaktor.artifacts import fetch_digest

    dest.mkdir(parents=True, exist_ok=True)
    return fetch_digest(uri, dest)


def _load_inputs(
    request: StageRequest, work: Path, log: RunLog
) -> tuple[LoadedModel, LoadedModel, Dataset]:
    """Input and reference load separately: a stage may change its input module in place."""
    from kompaktor.artifacts import ArtifactError
    from kompaktor.data import load_dataset
    from kompaktor.models import load_model

    # The reference is often the input: fetched (and hashed) once.
    fetched: dict[str, tuple[Path, str]] = {}

    def load(what: str, uri: str, expected: str | None) -> LoadedModel:
        if uri not in fetched:
            fetched[uri] = _fetch_digest(uri, work / what)
        path, found = fetched[uri]
        if expected is not None and found != expected:
            raise _InvalidInputError(
                f"the {what} model {uri} is not the one this run was planned with: its sha256 "
                f"is {found}, the plan's {expected}. It was replaced or corrupted after it was "
                "written: restore it, or delete the run that made it so that it is made again"
            )
        try:
            return load_model(path)
        except Exception as error:
            raise _InvalidInputError(f"cannot load the {what} model {uri}: {error}") from error

    model = load("input", request.input, request.input_digest)
    reference = load("reference", request.reference or request.input, request.reference_digest)
    try:
        dataset = load_dataset(request.dataset, task=request.task)
    except ArtifactError:
        raise
    except Exception as error:
        raise _InvalidInputError(f"cannot load the dataset {request.dataset}: {error}") from error
    log(f"loaded {model.format} model {request.input} and dataset {dataset.name}")
    return model, reference, dataset


def _input_metrics(
    name: str, model: LoadedModel, reference: LoadedModel, dataset: Dataset
) -> dict[str, float]:
    """Measured before the stage runs, since a stage may change its input module in place.
    A dataset the models cannot take (labels, shapes, dtypes) is invalid input: no retry helps."""
    from kompaktor.evaluate import has_rows, metric
    from kompaktor.models import predictor_for

    ref = predictor_for(reference)
    against = ref if name == "fidelity" else None
    try:
        figures = {
            "inputMetric": metric(name, predictor_for(model), dataset, "test", reference=against),
            "referenceMetric": metric(name, ref, dataset, "test", reference=against),
        }
        if has_rows(dataset, "val"):
            figures["referenceValMetric"] = metric(name, ref, dataset, "val", reference=against)
    except KompaktorError as error:
        raise _InvalidInputError(str(error)) from error
    return figures


def output_metrics(
    name: str,
    path: Path,
    reference: LoadedModel,
    dataset: Dataset,
    stage_metrics: dict[str, float],
) -> dict[str, float]:
    """The figures every run reports, measured on the saved file as it will ship.

    The stage's own metrics are kept, except that it cannot override these; a stage that
    measured latency itself (benchmark) keeps its more careful figure, and a stage that held
    validation rows out of a dataset without a val split (train) keeps its valMetric.
    """

    from kompaktor.evaluate import (
        has_rows,
        metric,
        model_size_bytes,
        parameter_count,
    )
    from kompaktor.models import load_model, predictor_for

    output = load_model(path)
    predictor = predictor_for(output)
    against = predictor_for(reference) if name == "fidelity" else None
    metrics = {k: float(v) for k, v in stage_metrics.items()}
    metrics.update(
        metric=metric(name, predictor, dataset, "test", reference=against),
        sizeBytes=float(model_size_bytes(output)),
        parameters=float(parameter_count(output)),
    )
    if has_rows(dataset, "val"):
        metrics["valMetric"] = metric(name, predictor, dataset, "val", reference=against)
    if "latencyMs" not in stage_metrics:
        metrics.update(batch1_latency(output, dataset).metrics())
    return metrics


def broken_output(
    request: StageRequest, metrics: dict[str, float], num_classes: int | None
) -> str | None:
    """The warning line for an output that looks broken, not merely worse (a diverged
    fine-tune: an lr too high), which with no bound (maxDrop) passed silently as a success."""
    problem = _not_finite(request.metric, metrics) or _near_chance(
        request.metric, metrics, num_classes
    )
    return None if problem is None else f"warning: stage ({request.type}): {problem}"


def _not_finite(name: str, metrics: dict[str, float]) -> str | None:
    """The output's metric or the training loss (train's finalLoss) is NaN or infinite."""
    figures = {f"output {name}": metrics["metric"], "training loss": metrics.get("finalLoss", 0)}
    bad = [f"{what} is {value}" for what, value in figures.items() if not math.isfinite(value)]
    return f"{', '.join(bad)}: training diverged; lower params.lr" if bad else None


def _near_chance(name: str, metrics: dict[str, float], num_classes: int | None) -> str | None:
    """A class metric (accuracy, fidelity) that kept less than half of the input's lead over
    chance (1/classes): 0.99 -> under 0.545 on 10 classes, 0.95 -> under 0.725 on 2. A pruned
    or quantized model that merely lost some accuracy stays well above that."""
    if name == "mse" or not num_classes or "inputMetric" not in metrics:
        return None
    chance, before, after = 1 / num_classes, metrics["inputMetric"], metrics["metric"]
    if before <= chance or after - chance >= (before - chance) / 2:
        return None
    return (
        f"output {name} {after:.4f} is near chance ({chance:.4f} for {num_classes} classes), "
        f"down from the input's {before:.4f}: the model no longer works. If the stage trains, "
        "lower params.lr (a rate too high makes training diverge)"
    )


@dataclass(frozen=True)
class Batch1Latency:
    """A batch-1 p50 and how it was taken (one row, one thread, under the timing lock or not)."""

    p50_ms: float
    #: Seconds spent waiting for the timing lock; None when no lock was named.
    lock_wait_seconds: float | None
    #: When the timing ran, lock held (seconds since the epoch: comparable across processes).
    started: float
    ended: float

    def metrics(self) -> dict[str, float]:
        """latencyMs and how it was measured: a record says whether sibling runs could time
        beside it (latencyLockWaitSeconds only where a lock kept them out)."""
        figures = {"latencyMs": self.p50_ms, "latencyBatch": 1.0, "latencyThreads": 1.0}
        if self.lock_wait_seconds is not None:
            figures["latencyLockWaitSeconds"] = self.lock_wait_seconds
        return figures


def batch1_latency_ms(model: LoadedModel, dataset: Dataset) -> float:
    """`batch1_latency`'s p50, for a stage that reports latency itself (quantize)."""
    return batch1_latency(model, dataset).p50_ms


def batch1_latency(model: LoadedModel, dataset: Dataset) -> Batch1Latency:
    """The p50 latency of one test row at a time on one thread, as the benchmark stage
    defaults to: stable on a shared node, and what an HPO latency objective should compare.
    The timing holds the timing lock exclusively (`kompaktor run`'s sibling runs neither time
    nor train meanwhile: `kompaktor.timing_lock`). The caller's thread count comes back after
    (an in-process HPO trial goes on training on all of them)."""
    import torch

    from kompaktor.evaluate import measure_latency
    from kompaktor.models import predictor_for
    from kompaktor.timing_lock import timing_lock

    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        predictor = predictor_for(model, threads=1)
        with timing_lock() as waited:
            started = time.time()
            latency = measure_latency(
                predictor,
                dataset.inputs("test"),
                1,
                warmup=LATENCY_WARMUP,
                iterations=LATENCY_ITERATIONS,
                min_seconds=LATENCY_SECONDS,
            )
            ended = time.time()
    finally:
        torch.set_num_threads(threads)
    return Batch1Latency(latency.p50_ms, waited, started, ended)


def write_model(
    result: StageResult, dataset: Dataset, work: Path, stage_type: str
) -> tuple[Path, ModelFormat]:
    """The stage's output as a file: a module is exported to .pt2 (a ScriptModule, which
    torch.export cannot take, saved as TorchScript), a path is taken as it is."""
    import torch

    from kompaktor.models import format_of, save_torch
    from kompaktor.training import set_training

    if result.module is not None:
        set_training(result.module, False)
        scripted = isinstance(result.module, torch.jit.ScriptModule)
        path = work / ("model.pt" if scripted else "model.pt2")
        return save_torch(result.module, example_inputs(dataset), path), format_of(path)
    if result.path is not None:
        return result.path, result.output_format or format_of(result.path)
    raise StageError(f"stage ({stage_type}) returned no model")


def example_inputs(dataset: Dataset, rows: int = 8) -> tuple[Any, ...]:
    """A few test rows to trace with (at least 2, so export keeps the batch dimension
    dynamic); `save_torch` stores zeros of their shape in the file, never the rows."""
    from kompaktor.training import as_tensors

    test = dataset.inputs("test")
    source = test if len(test[0]) >= 2 else dataset.inputs("train")
    return as_tensors([x[:rows] for x in source])


def _classify(stage_type: str, error: BaseException) -> tuple[RunFailure, int]:
    """reason, retryable, exit code: only failures a retry might fix are retryable."""
    from kompaktor.artifacts import ArtifactError
    from kompaktor.artifacts.base import DigestMismatchError
    from kompaktor.artifacts.s3_errors import S3ConfigError

    message = str(error)
    if isinstance(error, JobSpecError):
        reason, retryable, code = "InvalidParams", False, EXIT_INVALID
    elif isinstance(error, _InvalidInputError | DigestMismatchError):  # no retry mends these
        reason, retryable, code = "InvalidInput", False, EXIT_INVALID
    elif isinstance(error, S3ConfigError):  # a malformed endpoint, a missing profile: nor these
        reason, retryable, code = "ArtifactError", False, EXIT_INVALID
    elif isinstance(error, ArtifactError):
        reason, retryable, code = "ArtifactError", True, EXIT_FAILED
    elif isinstance(error, KompaktorError):
        reason, retryable, code = "StageError", False, EXIT_FAILED
    else:
        reason, retryable, code = "StageCrashed", True, EXIT_FAILED
        message = f"stage ({stage_type}): {type(error).__name__}: {error}"
    failure = RunFailure(
        type=stage_type,
        reason=reason,
        message=message[:FAILURE_MESSAGE_LIMIT],
        retryable=retryable,
    )
    return failure, code


def _leave_failure(out: OutputPrefix | None, failure: RunFailure, log: RunLog) -> None:
    """Best effort: the termination message still carries the failure if the store is down."""
    if out is None:
        return
    try:
        out.put_log(log.path)
        out.put_failure(failure)
    except Exception as error:  # the original failure matters more than this one
        print(f"could not write failure.json to {out.uri}: {error}", file=sys.stderr)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
