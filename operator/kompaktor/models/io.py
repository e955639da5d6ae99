"""Load and save models in the three formats a job may name.

- `.pt2`: torch.export with a dynamic batch dimension, loaded only once `check_pt2_archive`
  finds nothing in it that torch would unpickle unsafely. The loaded `module` is
  `ExportedProgram.module()`, a GraphModule whose parameters train with any optimizer and which
  re-exports; it refuses `.train()`/`.eval()` (use `kompaktor.training.set_training`). A saved
  file holds zero example inputs, never the rows it was traced with, and saving a loaded model
  again gives a file of the same size.
- `.pt`: TorchScript through torch.jit (never pickle).
- `.onnx`: one self-contained file (no external-data side file), checked by onnx.checker; there is
  no torch module, ONNX stages and predictors work on the file.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import logging
import warnings
import zipfile
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn
from torch.utils import _pytree as pytree

from kompaktor.errors import KompaktorError
from kompaktor.models.formats import format_of
from kompaktor.models.pt2_archive import UnsafeArchiveError, check_pt2_archive
from kompaktor.models.types import LoadedModel


def _import_custom_ops() -> None:
    """Register kompaktor_kernels' torch.library ops, which saved programs may call, if present."""
    with contextlib.suppress(ImportError):
        importlib.import_module("kompaktor_kernels")


@contextlib.contextmanager
def quiet_torch() -> Iterator[None]:
    """Mute torch's own logging, warnings and exporter prints: our errors say what went wrong."""
    loggers = [logging.getLogger(name) for name in ("torch.export", "torch.onnx", "torch._export")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.CRITICAL)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def _load_pt2(path: Path) -> nn.Module:
    """torch.export.load would run pickled code from the file: check the archive first, and load
    the very bytes checked."""
    _import_custom_ops()
    data = path.read_bytes()
    try:
        check_pt2_archive(data)
    except UnsafeArchiveError as exc:
        raise KompaktorError(f"refusing pt2 model {path}: {exc}") from exc
    with quiet_torch():
        program = torch.export.load(io.BytesIO(data))
    _check_tensor_arguments(path, _pt2_arguments(program))
    return program.module()


#: What every model must take: the dataset's input arrays, one tensor each, in order.
TENSORS_ONLY = (
    "Kompaktor feeds a model one tensor per input array of the dataset (x_test, or x_test_0, "
    "x_test_1, …), in order: export a forward that takes tensors (a wrapper whose "
    "forward(a, b) builds what the model needs)"
)


def _check_tensor_arguments(path: Path, problems: list[str]) -> None:
    if problems:
        raise KompaktorError(f"model {path}: {'; '.join(problems)}. {TENSORS_ONLY}")


def _pt2_arguments(program: torch.export.ExportedProgram) -> list[str]:
    """What an exported forward takes besides positional tensors (a dict, a list, keywords)."""
    spec = program.call_spec.in_spec
    if spec is None or spec.num_children != 2:
        return []
    args, kwargs = spec.children()
    problems = []
    for number, child in enumerate(args.children(), 1):
        if not child.is_leaf():
            keys = f" with keys {', '.join(map(repr, child.context))}" if child.type is dict else ""
            problems.append(f"its argument {number} is a {child.type.__name__}{keys}")
    if kwargs.num_children:
        problems.append(f"it takes keyword arguments ({', '.join(map(repr, kwargs.context))})")
    return problems


def _load_torchscript(path: Path) -> nn.Module:
    if _is_pickled_checkpoint(path):
        raise KompaktorError(
            f"{path} is a torch.save pickle, not TorchScript, and Kompaktor never unpickles a "
            "model file: save the model with torch.export (.pt2) or torch.jit.save "
            "(torch.jit.script or trace)"
        )
    module: nn.Module = torch.jit.load(str(path), map_location="cpu")  # type: ignore[no-untyped-call]
    module.eval()
    arguments = module.forward.schema.arguments[1:]  # type: ignore[attr-defined]
    takes = ("Tensor", "Optional[Tensor]")
    _check_tensor_arguments(
        path,
        [f"its argument {a.name!r} is {a.type}" for a in arguments if str(a.type) not in takes],
    )
    return module


def _is_pickled_checkpoint(path: Path) -> bool:
    """A torch.save file: a zip of data.pkl and tensors without the code a TorchScript archive
    holds, or the legacy format, a bare pickle (protocol 2+ starts with 0x80)."""
    if not zipfile.is_zipfile(path):
        with path.open("rb") as file:
            return file.read(1) == b"\x80"
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
    return any(n.endswith("/data.pkl") for n in names) and not any("/code/" in n for n in names)


def _check_onnx(path: Path) -> None:
    import onnx

    onnx.checker.check_model(onnx.load(str(path)), full_check=False)


def load_model(path: Path) -> LoadedModel:
    """Load a model file safely; raises KompaktorError naming the file if it is corrupt."""
    fmt = format_of(path)
    if not path.is_file():
        raise KompaktorError(f"model file {path} does not exist")
    try:
        if fmt == "pt2":
            return LoadedModel(fmt, path, _load_pt2(path))
        if fmt == "torchscript":
            return LoadedModel(fmt, path, _load_torchscript(path))
        _check_onnx(path)
        return LoadedModel(fmt, path, None)
    except KompaktorError:
        raise
    except Exception as exc:  # every loader has its own error types; the user needs one message
        text = str(exc).strip()
        reason = text.splitlines()[0].split(". ")[0] if text else type(exc).__name__
        raise KompaktorError(
            f"cannot load {fmt} model {path} (corrupt, truncated or not {fmt}): {reason[:200]}"
        ) from exc


def set_eval(module: nn.Module) -> nn.Module:
    """`module.eval()`, also for exported GraphModules that refuse it (they are already eval)."""
    try:
        module.eval()
    except NotImplementedError:
        for sub in module.modules():
            sub.training = False
    return module


def _batchable(example_inputs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    """Examples with batch ≥ 2: torch.export specializes a dimension whose example size is 1."""
    return tuple(
        t if t.shape[0] >= 2 else t.expand(2, *t.shape[1:]).contiguous() for t in example_inputs
    )


def _dynamic_batch(
    example_inputs: tuple[torch.Tensor, ...],
) -> tuple[dict[int, torch.export.Dim], ...]:
    batch = torch.export.Dim("batch", min=1)
    return tuple({0: batch} for _ in example_inputs)


def export_program(
    module: nn.Module, example_inputs: tuple[torch.Tensor, ...]
) -> torch.export.ExportedProgram:
    """torch.export in eval mode with a dynamic batch dimension shared by all inputs."""
    examples = _batchable(example_inputs)
    set_eval(module)
    with torch.no_grad():
        return torch.export.export(module, examples, dynamic_shapes=_dynamic_batch(examples))


#: Node metadata torch.export records for debugging only: where each node was traced, and the
#: nodes of earlier graphs it came from, which nests one level deeper each time a loaded model
#: is exported again. Kept, they grow the file with every stage that saves the model again
#: (a small weight-shared model's .pt2 by a quarter after one re-export).
_DEBUG_METADATA = ("stack_trace", "from_node")
#: The prefix torch.export gives each `nn_module_stack` key. Exporting a loaded model again
#: prefixes the keys its nodes carry once more ("L__self__L__self__0"): without collapsing
#: them, each load→save round trip grew the file by a few bytes per node.
_ROOT_KEY = "L__self__"


def _without_debug_metadata(program: torch.export.ExportedProgram) -> None:
    """Drop `_DEBUG_METADATA` from `program`'s nodes. In place."""
    for node in program.graph.nodes:
        for key in _DEBUG_METADATA:
            node.meta.pop(key, None)


def _collapsed_module_keys(program: torch.export.ExportedProgram) -> None:
    """Give each `nn_module_stack` key one root prefix, as a first export does. In place.
    A node whose keys would collide once collapsed keeps them as they are."""
    for node in program.graph.nodes:
        stack = node.meta.get("nn_module_stack")
        if not stack:
            continue
        collapsed = {_ROOT_KEY + _strip_root_keys(key): value for key, value in stack.items()}
        if len(collapsed) == len(stack):
            node.meta["nn_module_stack"] = collapsed


def _strip_root_keys(key: str) -> str:
    """`key` without its root prefixes, however many re-exports added."""
    while key.startswith(_ROOT_KEY):
        key = key.removeprefix(_ROOT_KEY)
    return key


#: Rows of each stored example input: the fewest that show the batch dimension is dynamic.
STORED_EXAMPLE_ROWS = 2


def _without_example_data(program: torch.export.ExportedProgram) -> None:
    """Store zero examples instead of the ones exported with. In place.

    torch.export.save keeps a program's example inputs in the file, and callers export with
    rows of the user's dataset (tracing needs real shapes and dtypes; a stage may need real
    values): a shipped model must not carry training or test data. Zeros keep integer inputs
    in range (token ids indexing an embedding), so the stored examples still run; a fixed
    row count keeps the file's size independent of how many rows the caller traced with."""
    if program.example_inputs is not None:
        program.example_inputs = pytree.tree_map_only(
            torch.Tensor, _zero_example, program.example_inputs
        )


def _zero_example(tensor: torch.Tensor) -> torch.Tensor:
    """Zeros of `tensor`'s dtype and row shape, `STORED_EXAMPLE_ROWS` rows."""
    if tensor.dim() == 0:
        return torch.zeros_like(tensor)
    return torch.zeros((STORED_EXAMPLE_ROWS, *tensor.shape[1:]), dtype=tensor.dtype)


def _for_saving(program: torch.export.ExportedProgram) -> torch.export.ExportedProgram:
    """`program` as it should be stored: no dataset values, and no metadata that grows the
    file each time a loaded model is saved again. In place."""
    _without_debug_metadata(program)
    _collapsed_module_keys(program)
    _without_example_data(program)
    return program


def _write_pt2(program: torch.export.ExportedProgram, path: Path) -> None:
    """torch.export.save through an open file: given a path, torch names the archive's root
    folder after the file, so the same model's size and digest changed with its file name
    (a stage's unchanged model.pt2 grew past an input named m.pt2)."""
    with path.open("wb") as file:
        torch.export.save(program, file)


def save_torch(module: nn.Module, example_inputs: tuple[torch.Tensor, ...], path: Path) -> Path:
    """Export as .pt2 (torch.export) or TorchScript, by `path`'s extension; returns the path.

    TorchScript tries torch.jit.script (keeps control flow) and falls back to tracing.
    """
    fmt = format_of(path)
    if fmt == "onnx":
        return save_onnx(module, example_inputs, path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "pt2":
        _write_pt2(_for_saving(export_program(module, example_inputs)), path)
        return path
    set_eval(module)
    with quiet_torch():
        try:
            scripted = torch.jit.script(module)
        except Exception:
            with torch.no_grad():
                examples = _batchable(example_inputs)
                scripted = torch.jit.trace(module, examples, check_trace=False)  # type: ignore[no-untyped-call]
    torch.jit.save(scripted, str(path))
    return path


def _input_names(count: int) -> list[str]:
    return ["input"] if count == 1 else [f"input_{i}" for i in range(count)]


def save_onnx(module: nn.Module, example_inputs: tuple[torch.Tensor, ...], path: Path) -> Path:
    """Export to one self-contained ONNX file with a dynamic batch dimension; returns the path.

    The dynamo exporter handles exported GraphModules (the TorchScript exporter calls `.train()`,
    which they refuse); the TorchScript exporter is the fallback for what dynamo cannot trace.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    examples = _batchable(example_inputs)
    names = _input_names(len(examples))
    set_eval(module)
    try:
        with quiet_torch():
            torch.onnx.export(
                module,
                examples,
                str(path),
                input_names=names,
                output_names=["output"],
                dynamic_shapes=_dynamic_batch(examples),
                dynamo=True,
                external_data=False,
                verbose=False,
                report=False,
            )
    except Exception as dynamo_error:
        try:
            with quiet_torch(), torch.no_grad():
                axes = {name: {0: "batch"} for name in [*names, "output"]}
                torch.onnx.export(
                    module,
                    examples,
                    str(path),
                    input_names=names,
                    output_names=["output"],
                    dynamic_axes=axes,
                    dynamo=False,
                )
        except Exception:
            raise KompaktorError(
                f"cannot export the model to ONNX ({path.name}): {str(dynamo_error)[:300]}"
            ) from dynamo_error
    return path
