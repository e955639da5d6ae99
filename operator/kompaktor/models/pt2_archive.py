"""Refuse .pt2 archives that would make `torch.export.load` run code from the file.

torch 2.13's loader trusts the archive: it unpickles with `weights_only=False` (any code) the
sample inputs and legacy `data/weights|constants/<model>.pt` files when `weights_only=True`
fails on them, and every weight or tensor constant its config marks `use_pickle`; it unpickles
opaque-object constants with plain `pickle.loads`, TorchScript objects with TorchScript's
unpickler, and it loads AOTInductor entries as native libraries. If the archive cannot be read as
a PT2 package it falls back to the pre-2.8 zip layout, which unpickles the same way. And it
parses each shape expression (`expr_str`) in the program's JSON with `sympy.sympify`, which
evaluates it as Python.

`torch.export.save` writes none of that for a program whose weights and constants are plain
tensors (all a job makes), so `check_pt2_archive` allows only what it writes: it reads the bytes
through torch's own archive reader (the same entries, resolved the same way), admits only the
entry names below, requires `use_pickle: false` for every payload, loads each sample-inputs
pickle with `weights_only=True`, so that torch never retries it unsafely, and admits only shape
expressions in the form torch writes them (`sympy.srepr`: sympy's and torch's shape functions
called on numbers and names, and arithmetic). Check and load the same bytes, not the same path,
so that the file cannot change in between.
"""

from __future__ import annotations

import ast
import io
import json
import re
import zipfile
from collections.abc import Iterator
from typing import Any

import torch
from torch.export.pt2_archive import PT2ArchiveReader
from torch.export.pt2_archive.constants import (
    CONSTANTS_CONFIG_FILENAME_FORMAT,
    CONSTANTS_DIR,
    MODELS_DIR,
    MODELS_FILENAME_FORMAT,
    SAMPLE_INPUTS_DIR,
    TENSOR_CONSTANT_FILENAME_PREFIX,
    WEIGHTS_CONFIG_FILENAME_FORMAT,
    WEIGHTS_DIR,
)

#: Every entry `torch.export.save` writes for such a program: JSON, raw tensor bytes, the sample
#: inputs' pickle (checked) and extra files (read as text). Anything else torch might unpickle.
_ALLOWED = re.compile(
    r"archive_format|archive_version|byteorder|\.data/version|\.data/serialization_id"
    r"|models/[^/]+\.json|data/weights/[^/]+_weights_config\.json|data/weights/weight_\d+"
    r"|data/constants/[^/]+_constants_config\.json|data/constants/tensor_\d+"
    r"|data/sample_inputs/[^/]+\.pt|extra/.+"
)

#: What a shape expression may call or name: the sympy classes `srepr` writes for shapes, and
#: the functions torch's deserializer adds (`GraphModuleDeserializer.sympy_functions`).
_SYMPY_NAMES = frozenset({
    "Symbol", "Integer", "Rational", "Float", "Add", "Mul", "Pow", "Max", "Min", "Abs", "floor",
    "ceiling", "Eq", "Ne", "Lt", "Le", "Gt", "Ge", "StrictLessThan", "StrictGreaterThan",
    "LessThan", "GreaterThan", "Equality", "Unequality", "And", "Or", "Not", "Piecewise",
    "ExprCondPair", "oo", "zoo", "nan", "true", "false", "FloorDiv", "ModularIndexing", "Where",
    "PythonMod", "Mod", "CleanDiv", "CeilToInt", "FloorToInt", "CeilDiv", "LShift", "RShift",
    "PowByNatural", "FloatPow", "FloatTrueDiv", "IntTrueDiv", "IsNonOverlappingAndDenseIndicator",
    "TruncToFloat", "TruncToInt", "RoundToInt", "RoundDecimal", "ToFloat", "Identity",
})  # fmt: skip

#: Syntax a shape expression may use besides calls, names and constants (checked apart).
_SYMPY_SYNTAX = (
    ast.Expression, ast.Load, ast.BinOp, ast.UnaryOp, ast.Add, ast.Sub, ast.Mult, ast.Div,
    ast.Pow, ast.Mod, ast.USub, ast.UAdd,
)  # fmt: skip

#: A string in a shape expression: a symbol's name or a number (`Float('0.5', precision=53)`).
_SYMPY_STRING = re.compile(r"[A-Za-z_][A-Za-z0-9_]*|[0-9.eE+\-]+")

#: The entry of the pre-2.8 layout that makes torch.export.load read the rest with pickle.
_LEGACY_MARKER = "version"


class UnsafeArchiveError(ValueError):
    """A .pt2 entry that loading would unpickle unsafely or run; the message names the entry."""

    def __init__(self, entry: str, why: str) -> None:
        super().__init__(f"archive entry {entry!r} {why}")
        self.entry = entry


def check_pt2_archive(data: bytes) -> None:
    """Raise UnsafeArchiveError unless `torch.export.load(io.BytesIO(data))` unpickles nothing
    with `weights_only=False` and runs no code from the archive; other errors mean a bad file."""
    reader = PT2ArchiveReader(io.BytesIO(data))
    names = reader.get_file_names()
    for name in names:
        if not _ALLOWED.fullmatch(name):
            raise UnsafeArchiveError(
                name, "is not one torch.export.save writes for plain tensors, and may be code"
            )
    for model in _model_names(names):
        program_name = MODELS_FILENAME_FORMAT.format(model)
        for expr in _expr_strs(json.loads(reader.read_string(program_name))):
            if not _is_shape_expression(expr):
                raise UnsafeArchiveError(
                    program_name, f"has a shape expression sympy would run: {str(expr)[:80]!r}"
                )
        _check_payloads(reader, WEIGHTS_CONFIG_FILENAME_FORMAT.format(model), WEIGHTS_DIR, "")
        _check_payloads(
            reader,
            CONSTANTS_CONFIG_FILENAME_FORMAT.format(model),
            CONSTANTS_DIR,
            TENSOR_CONSTANT_FILENAME_PREFIX,
        )
    for name in names:
        if name.startswith(SAMPLE_INPUTS_DIR):
            _check_weights_only(name, reader.read_bytes(name))
    _check_no_legacy_layout(data)


def _model_names(names: list[str]) -> list[str]:
    """The programs torch deserializes: every `models/<name>.json`, named as torch names them."""
    prefix, suffix = MODELS_FILENAME_FORMAT.split("{}")
    return [name[len(prefix) : -len(suffix)] for name in names if name.startswith(MODELS_DIR)]


def _expr_strs(program: Any) -> Iterator[Any]:
    """Every `expr_str` value in a program's JSON, wherever it is nested."""
    stack = [program]
    while stack:
        value = stack.pop()
        if isinstance(value, dict):
            if "expr_str" in value:
                yield value["expr_str"]
            stack.extend(value.values())
        elif isinstance(value, list):
            stack.extend(value)


def _is_shape_expression(expr: Any) -> bool:
    """Whether sympify (which evals) would only call known sympy classes on literals: no
    attributes, subscripts, lambdas or other names, which are how an expression runs code."""
    if not isinstance(expr, str):
        return False
    try:
        tree = ast.parse(expr, mode="eval")
    except (SyntaxError, ValueError):
        return False
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            ok = node.id in _SYMPY_NAMES
        elif isinstance(node, ast.Call):
            ok = isinstance(node.func, ast.Name)
        elif isinstance(node, ast.keyword):
            ok = node.arg is not None and not node.arg.startswith("_")
        elif isinstance(node, ast.Constant):
            value = node.value
            ok = isinstance(value, bool | int | float) or (
                isinstance(value, str) and _SYMPY_STRING.fullmatch(value) is not None
            )
        else:
            ok = isinstance(node, _SYMPY_SYNTAX)
        if not ok:
            return False
    return True


def _check_payloads(
    reader: PT2ArchiveReader, config_name: str, directory: str, tensor_prefix: str
) -> None:
    """Require raw tensor bytes for every payload: torch unpickles `use_pickle` ones with
    weights_only=False, and a constant not named `tensor_*` with pickle or TorchScript, whatever
    its `use_pickle` says."""
    if config_name not in reader.get_file_names():
        return  # torch fails on its own, before reading any payload
    config: Any = json.loads(reader.read_string(config_name))
    payloads = config.get("config") if isinstance(config, dict) else None
    if not isinstance(payloads, dict):
        raise UnsafeArchiveError(config_name, "is not a payload config")
    for fqn, meta in payloads.items():
        path_name = meta.get("path_name") if isinstance(meta, dict) else None
        if not isinstance(path_name, str):
            raise UnsafeArchiveError(config_name, f"has no path_name for {fqn!r}")
        if not path_name.startswith(tensor_prefix) or meta.get("use_pickle") is not False:
            raise UnsafeArchiveError(
                directory + path_name,
                f"({fqn!r}) is a pickled object, which torch loads with weights_only=False",
            )


def _check_weights_only(name: str, payload: bytes) -> None:
    """torch tries weights_only=True first and retries with False: make sure it never retries."""
    if not payload:
        return  # torch reads no pickle from an empty entry
    try:
        torch.load(io.BytesIO(payload), weights_only=True)
    except Exception as exc:
        raise UnsafeArchiveError(
            name, "is a pickle that fails weights_only=True, so torch would unpickle it unsafely"
        ) from exc


def _check_no_legacy_layout(data: bytes) -> None:
    """torch.export.load reads the pre-2.8 layout through zipfile whenever the PT2 load raises
    RuntimeError; torch's reader rejects such entries, but a crafted zip may read differently."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            legacy = _LEGACY_MARKER in archive.namelist()
    except zipfile.BadZipFile:
        return  # then the fallback fails too, before unpickling anything
    if legacy:
        raise UnsafeArchiveError(_LEGACY_MARKER, "marks the pre-2.8 layout, which torch unpickles")
