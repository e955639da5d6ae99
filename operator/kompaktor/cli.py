"""The `kompaktor` command: run a job locally, run one stage, scaffold a demo, run the operator."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kompaktor import __version__
from kompaktor.errors import JobSpecError, KompaktorError

if TYPE_CHECKING:
    from rich.console import Console

    from kompaktor.api.spec import OptimizationJob
    from kompaktor.api.status import OptimizationJobStatus

EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 1, 2, 130


DEBUG_HELP = "show tracebacks"


def command_line_uri(value: str | None) -> str | None:
    """A path on the command line is relative to where the command runs, as `--logs` is (a
    path in a job file, to the file's folder); URIs pass as they are."""
    if value is None or "://" in value:
        return value
    return str(Path(value).expanduser().resolve())


def _cmd_run(args: argparse.Namespace) -> int:
    from contextlib import nullcontext

    from rich.live import Live

    from kompaktor.api.jobfile import load_job_file
    from kompaktor.display import ProgressLines, stage_table, summary
    from kompaktor.executors.local import LocalExecutor
    from kompaktor.interrupts import termination_interrupts
    from kompaktor.local import LocalRun, localize
    from kompaktor.stages import validate_job

    job_path = Path(args.job).resolve()
    job = load_job_file(job_path)
    validate_job(job.spec, job_path.parent)
    ctx = localize(job, job_path.parent, command_line_uri(args.artifacts))
    logs = Path(args.logs) if args.logs else job_path.parent / ".kompaktor" / job.metadata.name
    console = _console(stderr=True)  # progress and warnings; the outcome goes to stdout
    try:
        executor = LocalExecutor(logs)
    except OSError as error:  # a job in a read-only folder: its default logs folder is there
        raise KompaktorError(
            f"cannot write stage logs to {logs}: {error.strerror}; choose a folder with --logs"
        ) from None
    name, metric = job.metadata.name, job.spec.objective.metric
    # A terminal gets a live table; a file or a pipe, which a table redrawn in place would
    # leave empty until the end, gets one line per event as it happens.
    live = (
        Live(console=console, transient=True, auto_refresh=False, redirect_stdout=False)
        if console.is_terminal
        else None
    )
    events = ProgressLines(metric)
    with live or nullcontext():

        def show(status: Any, running: list[Any]) -> None:
            if live is not None:
                live.update(stage_table(name, status, metric), refresh=True)
                return
            for line in events(status):
                print(line, file=sys.stderr, flush=True)

        try:
            with termination_interrupts():
                status = LocalRun(ctx, executor, show).run()
        except KeyboardInterrupt:
            console.print("interrupted: running stages stopped; run the same command to resume")
            return EXIT_INTERRUPTED
    if args.json:
        searches = _search_details(status, ctx.artifacts_uri, _console(stderr=True))
        print(json.dumps(summary(name, status, ctx.artifacts_uri, searches), indent=2))
    else:
        logs_here = executor.logs_for(ctx.artifacts_uri)
        _print_outcome(job, status, ctx.artifacts_uri, logs_here, console)
    return 0 if status.phase == "Succeeded" else EXIT_FAILED


def _console(*, stderr: bool) -> Console:
    """A rich console on stderr or stdout; 120 columns wide where it is not a terminal (a file,
    a pipe), whose width rich cannot know."""
    from rich.console import Console

    console = Console(stderr=stderr)
    return console if console.is_terminal else Console(stderr=stderr, width=120)


def _print_outcome(
    job: OptimizationJob, status: OptimizationJobStatus, artifacts: str, logs: Path, warn: Console
) -> None:
    """The run's outcome on stdout, as any command's result (`> result.txt`, `| less` get it):
    the stage table, what the run gave, where its files are. Warnings go to `warn` (stderr)."""
    from kompaktor.display import result_lines, stage_table

    out = _console(stderr=False)
    objective = job.spec.objective
    out.print(stage_table(job.metadata.name, status, objective.metric))
    searches = _search_details(status, artifacts, warn)
    lines = result_lines(status, searches, metric=objective.metric, max_drop=objective.max_drop)
    # markup off: params and messages may hold [brackets]; soft_wrap: a fact, a path, stays
    # whole on its line, to be read or copied
    for line in [*lines, f"artifacts: {artifacts}   logs: {logs}"]:
        out.print(line, markup=False, soft_wrap=True)


def _search_details(
    status: OptimizationJobStatus, artifacts_uri: str, console: Console
) -> dict[str, dict[str, Any]]:
    """Each finished hpo stage's result details (its Pareto set, its winner), from the record
    in the store: the status keeps a stage's figures, not its search's; the record is there
    for a cached stage too. One that cannot be read is a warning: the run's outcome stands."""
    from pydantic import ValidationError

    from kompaktor.artifacts import ArtifactError
    from kompaktor.plan.keys import output_uri
    from kompaktor.stages.outputs import OutputPrefix

    found: dict[str, dict[str, Any]] = {}
    for stage in status.stages:
        if stage.type != "hpo" or stage.phase != "Succeeded" or stage.key is None:
            continue
        prefix = output_uri(artifacts_uri, stage.type, stage.key)
        try:
            record = OutputPrefix(prefix).cached()
        except (ArtifactError, ValidationError) as error:
            console.print(
                f"warning: stage {stage.name}: its Pareto set is not shown, {prefix}/result.json "
                f"cannot be read: {error}",
                markup=False,
            )
            continue
        if record is not None:
            found[stage.name] = record.details
    return found


def invoked_as(argv0: str) -> list[str]:
    """The words that start this command, for hints such as init's `next:` line: a fresh
    clone's `.venv/bin/kompaktor` is not on PATH, so a bare `kompaktor` would not run."""
    import shutil

    path = Path(argv0)
    if path.suffix == ".py":  # `python -m kompaktor.cli`
        return [sys.executable, "-m", "kompaktor.cli"]
    found = shutil.which(path.name)
    if argv0 == path.name or (found is not None and Path(found).resolve() == path.resolve()):
        return [path.name]
    return [argv0]


def _cmd_init(args: argparse.Namespace) -> int:
    import shlex

    from kompaktor.quickstart import init_digits

    def progress(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    directory = Path(args.directory)
    job = init_digits(directory, full=not args.simple, force=args.force, progress=progress)
    print(f"wrote {job}\nnext: {shlex.join([*invoked_as(sys.argv[0]), 'run', str(job)])}")
    return 0


def _cmd_validate(args: argparse.Namespace) -> int:
    from kompaktor.api.jobfile import load_job_file
    from kompaktor.stages import validate_job

    path = Path(args.job)
    job = load_job_file(path)
    validate_job(job.spec, path.resolve().parent)
    print(
        f"{args.job}: OptimizationJob {job.metadata.name} is valid ({len(job.spec.stages)} stages)"
    )
    return 0


def _cmd_crd(args: argparse.Namespace) -> int:
    from kompaktor.api.crd import render_crd_yaml

    _write_output(render_crd_yaml(), args.output)
    return 0


def _cmd_params(args: argparse.Namespace) -> int:
    from kompaktor.stages.reference import render_markdown, render_text, stage_types

    chosen = [args.type] if args.type else stage_types()
    _write_output(render_markdown(chosen) if args.markdown else render_text(chosen), args.output)
    return 0


def _write_output(text: str, output: str | None) -> None:
    """`text` into the file `-o` names, or on stdout."""
    if output:
        Path(output).write_text(text)
    else:
        sys.stdout.write(text)


def _cmd_operator(args: argparse.Namespace) -> int:
    from kompaktor.controller.main import run_operator

    return run_operator(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kompaktor", description=__doc__)
    parser.add_argument("--version", action="version", version=f"kompaktor {__version__}")
    parser.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run a job file locally (no cluster)")
    run.add_argument("job", help="OptimizationJob YAML file")
    run.add_argument("--artifacts", help="artifact root URI (default: artifacts/ beside the job)")
    run.add_argument("--json", action="store_true", help="print one JSON summary on stdout")
    run.add_argument("--logs", help="folder for stage logs (default: .kompaktor/<job>/)")
    run.set_defaults(handler=_cmd_run)

    init = sub.add_parser("init", help="write a ready-to-run demo job")
    init.add_argument("example", choices=["digits"], help="which demo: digits (an 8x8 CNN)")
    init.add_argument("directory", help="folder to write it to (made if missing)")
    init.add_argument(
        "--simple",
        action="store_true",
        help="fine-tune and benchmark only (default: hpo, prune, distill, quantize, benchmark)",
    )
    init.add_argument(
        "--force",
        action="store_true",
        help="overwrite job.yaml, model.pt2 and digits.npz if the folder already has them",
    )
    init.set_defaults(handler=_cmd_init)

    validate = sub.add_parser("validate", help="check a job file without running it")
    validate.add_argument("job", help="OptimizationJob YAML file (its paths: beside it)")
    validate.set_defaults(handler=_cmd_validate)

    crd = sub.add_parser("crd", help="print the generated CustomResourceDefinition")
    crd.add_argument("--output", "-o", help="write it to this file instead of stdout")
    crd.set_defaults(handler=_cmd_crd)

    from kompaktor.stages.reference import stage_types

    params = sub.add_parser("params", help="list each stage type's params (the job file's names)")
    params.add_argument("type", nargs="?", choices=stage_types(), help="one type (default: all)")
    params.add_argument("--markdown", action="store_true", help="as Markdown tables")
    params.add_argument("--output", "-o", help="write it to this file instead of stdout")
    params.set_defaults(handler=_cmd_params)

    from kompaktor.config import add_operator_arguments

    operator = sub.add_parser("operator", help="run the Kubernetes operator (kopf)")
    add_operator_arguments(operator)
    operator.set_defaults(handler=_cmd_operator)

    from kompaktor.stages.runner import build_parser as stage_parser

    stage_parser(sub)
    _debug_everywhere(parser)
    _commands_named(parser)
    return parser


def _commands_named(parser: argparse.ArgumentParser) -> None:
    """A missing subcommand is named by its choices (`required: {run,init,…}`), not by the
    attribute that holds it (`command`, `stage_command`), which users never typed."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            action.metavar = "{" + ",".join(action.choices) + "}"
            for child in action.choices.values():
                _commands_named(child)


def _debug_everywhere(parser: argparse.ArgumentParser) -> None:
    """`--debug` after the subcommand too (`kompaktor run job.yaml --debug`), where users put
    it; SUPPRESS keeps a subcommand's absent flag from resetting the top level's."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                child.add_argument(
                    "--debug", action="store_true", default=argparse.SUPPRESS, help=DEBUG_HELP
                )
                _debug_everywhere(child)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code: int = args.handler(args)
        return code
    except KompaktorError as error:
        if args.debug:
            raise
        print(f"error: {error}", file=sys.stderr)
        _json_failure(args, str(error))
        return EXIT_USAGE if _refused(error) else EXIT_FAILED
    except Exception as error:
        if args.debug:
            raise
        print(
            f"error: {type(error).__name__}: {error} (run with --debug for the traceback)",
            file=sys.stderr,
        )
        _json_failure(args, f"{type(error).__name__}: {error}")
        return EXIT_FAILED


def _refused(error: KompaktorError) -> bool:
    """Refused before it began, with nothing run: a job that does not validate, or a run of a
    job already running to the same artifact root (the usage code, so a script can tell)."""
    from kompaktor.executors.run_lock import RunInProgressError

    return isinstance(error, JobSpecError | RunInProgressError)


def _json_failure(args: argparse.Namespace, message: str) -> None:
    """`--json` promises one summary on stdout: a run that fails before it starts (a bad job
    file, an unreadable store) still prints one, so `kompaktor run --json | jq` never reads
    nothing; it names the job whenever the file gives metadata.name, valid or not."""
    if getattr(args, "json", False):
        from kompaktor.api.jobfile import job_name

        job = job_name(Path(args.job)) if getattr(args, "job", None) else None
        print(json.dumps({"job": job, "phase": "Failed", "message": message}, indent=2))


if __name__ == "__main__":
    sys.exit(main())
