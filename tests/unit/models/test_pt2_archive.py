""".pt2 files that would make torch.export.load run code from the file are refused; real ones load.

Each malicious archive is a real `save_torch` file with one entry changed to a pickle whose
unpickling (or an expression whose evaluation) creates a marker file: the stand-in for an
attacker's code."""

from __future__ import annotations

import contextlib
import io
import json
import pickle
import re
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from kompaktor.errors import KompaktorError
from kompaktor.models import load_model, predictor_for, pt2_archive, save_torch
from kompaktor.models.pt2_archive import UnsafeArchiveError, check_pt2_archive

EXAMPLE = (torch.zeros(2, 4),)


class _Touch:
    """Unpickles as `Path.touch(path)`: harmless, but any code could run in its place."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Callable[[Path], None], tuple[Path]]:
        return Path.touch, (self.path,)


class _WithConstants(nn.Module):
    """Parameters, a buffer and a tensor constant: the three kinds of payload a .pt2 holds."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)
        self.register_buffer("shift", torch.arange(3.0))
        self.scale = torch.tensor([2.0, 3.0, 4.0])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x) * self.scale + self.shift  # type: ignore[no-any-return]


@pytest.fixture
def model() -> nn.Module:
    torch.manual_seed(0)
    return _WithConstants().eval()


@pytest.fixture
def legit(model: nn.Module, tmp_path: Path) -> Path:
    return save_torch(model, EXAMPLE, tmp_path / "legit.pt2")


@pytest.fixture
def marker(tmp_path: Path) -> Path:
    return tmp_path / "PWNED"


def _torch_pickle(obj: object) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def _records(path: Path) -> tuple[str, dict[str, bytes]]:
    """The archive's root folder and its records by name below it, as torch names them."""
    with zipfile.ZipFile(path) as archive:
        root = archive.namelist()[0].split("/")[0]
        return root, {name.split("/", 1)[1]: archive.read(name) for name in archive.namelist()}


def _rewrite(src: Path, dst: Path, changes: dict[str, bytes]) -> Path:
    """`src` with the records in `changes` replaced or added, written the way torch reads it."""
    root, records = _records(src)
    records.update(changes)
    with zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as archive:
        for name, data in records.items():
            archive.writestr(f"{root}/{name}", data)
    return dst


def _with_config_entry(src: Path, config: str, fqn: str, meta: dict[str, object]) -> bytes:
    """The JSON of payload config `config` with `fqn`'s entry updated by `meta`."""
    payloads = json.loads(_records(src)[1][config])
    payloads["config"].setdefault(fqn, {}).update(meta)
    return json.dumps(payloads).encode()


WEIGHTS_CONFIG = "data/weights/model_weights_config.json"
CONSTANTS_CONFIG = "data/constants/model_constants_config.json"


def _sample_inputs(src: Path, dst: Path, marker: Path) -> tuple[Path, str]:
    entry = "data/sample_inputs/model.pt"
    return _rewrite(src, dst, {entry: _torch_pickle((_Touch(marker),))}), entry


def _pickled_weight(src: Path, dst: Path, marker: Path) -> tuple[Path, str]:
    config = json.loads(_records(src)[1][WEIGHTS_CONFIG])["config"]
    entry = f"data/weights/{config['fc.weight']['path_name']}"
    config_json = _with_config_entry(src, WEIGHTS_CONFIG, "fc.weight", {"use_pickle": True})
    changes = {WEIGHTS_CONFIG: config_json, entry: _torch_pickle(_Touch(marker))}
    return _rewrite(src, dst, changes), entry


def _pickled_constant(src: Path, dst: Path, marker: Path) -> tuple[Path, str]:
    config_json = _with_config_entry(src, CONSTANTS_CONFIG, "scale", {"use_pickle": True})
    entry = f"data/constants/{json.loads(config_json)['config']['scale']['path_name']}"
    changes = {CONSTANTS_CONFIG: config_json, entry: _torch_pickle(_Touch(marker))}
    return _rewrite(src, dst, changes), entry


def _opaque_constant(src: Path, dst: Path, marker: Path) -> tuple[Path, str]:
    """torch reads `opaque_obj_*` constants with plain pickle.loads."""
    entry = "data/constants/opaque_obj_0"
    meta = {"path_name": "opaque_obj_0", "is_param": False, "use_pickle": True, "tensor_meta": None}
    config_json = _with_config_entry(src, CONSTANTS_CONFIG, "evil", meta)
    changes = {CONSTANTS_CONFIG: config_json, entry: pickle.dumps(_Touch(marker))}
    return _rewrite(src, dst, changes), entry


def _legacy_weights(src: Path, dst: Path, marker: Path) -> tuple[Path, str]:
    """A `data/weights/<model>.pt` file replaces the weights config: torch unpickles it whole."""
    entry = "data/weights/model.pt"
    return _rewrite(src, dst, {entry: _torch_pickle({"w": _Touch(marker)})}), entry


def _shape_expression(src: Path, dst: Path, marker: Path) -> tuple[Path, str]:
    """torch parses shape expressions (the dynamic batch size) with sympify, which evals them."""
    entry = "models/model.json"
    text = _records(src)[1][entry].decode()
    found = re.search(r'"expr_str": ("[^"]*")', text)
    assert found is not None  # save_torch exports a dynamic batch dimension
    payload = f"__import__('pathlib').Path({str(marker)!r}).touch() or {json.loads(found[1])}"
    program = text.replace(found[0], f'"expr_str": {json.dumps(payload)}')
    return _rewrite(src, dst, {entry: program.encode()}), entry


MALICIOUS = [
    _sample_inputs,
    _pickled_weight,
    _pickled_constant,
    _opaque_constant,
    _legacy_weights,
    _shape_expression,
]
Malicious = Callable[[Path, Path, Path], tuple[Path, str]]


def _legacy_layout(src: Path, dst: Path, marker: Path) -> Path:
    """The pre-2.8 zip layout, which torch.export.load falls back to when the PT2 load fails."""
    from torch._export.serde.schema import SCHEMA_VERSION

    files = {
        "version": ".".join(map(str, SCHEMA_VERSION)).encode(),
        "serialized_exported_program.json": _records(src)[1]["models/model.json"],
        "serialized_state_dict.pt": _torch_pickle({}),
        "serialized_constants.pt": _torch_pickle({"c": _Touch(marker)}),
        "serialized_example_inputs.pt": b"",
    }
    with zipfile.ZipFile(dst, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return dst


@pytest.mark.parametrize("make", MALICIOUS)
def test_the_malicious_archives_run_their_payload_in_plain_torch_export_load(
    legit: Path, tmp_path: Path, marker: Path, make: Malicious
) -> None:
    """Guards the tests below: each archive is a real attack on this torch version."""
    path, _ = make(legit, tmp_path / "evil.pt2", marker)
    with contextlib.suppress(Exception):
        torch.export.load(path)
    assert marker.exists()


def test_the_legacy_layout_runs_its_payload_in_plain_torch_export_load(
    legit: Path, tmp_path: Path, marker: Path
) -> None:
    with contextlib.suppress(Exception):
        torch.export.load(_legacy_layout(legit, tmp_path / "evil.pt2", marker))
    assert marker.exists()


@pytest.mark.parametrize("make", MALICIOUS)
def test_an_archive_torch_would_unpickle_unsafely_is_refused_naming_file_and_entry(
    legit: Path, tmp_path: Path, marker: Path, make: Malicious
) -> None:
    path, entry = make(legit, tmp_path / "evil.pt2", marker)
    with pytest.raises(KompaktorError) as info:
        load_model(path)
    message = str(info.value)
    assert str(path) in message
    assert repr(entry) in message
    assert "\n" not in message
    assert isinstance(info.value.__cause__, UnsafeArchiveError)
    assert not marker.exists()


def test_the_legacy_layout_is_refused_without_unpickling(
    legit: Path, tmp_path: Path, marker: Path
) -> None:
    path = _legacy_layout(legit, tmp_path / "evil.pt2", marker)
    with pytest.raises(KompaktorError, match="pt2"):
        load_model(path)
    assert not marker.exists()


def test_a_legacy_marker_that_only_zipfile_sees_is_refused(
    legit: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The fallback reads the zip with zipfile: a zip that torch's reader reads differently (a
    parser differential, simulated here by a reader that sees the legit archive) is refused."""
    path = tmp_path / "both.pt2"
    path.write_bytes(legit.read_bytes())
    with zipfile.ZipFile(path, "a") as archive:
        archive.writestr("version", b"8.0")
    legit_reader = pt2_archive.PT2ArchiveReader(io.BytesIO(legit.read_bytes()))
    monkeypatch.setattr(pt2_archive, "PT2ArchiveReader", lambda _: legit_reader)
    with pytest.raises(UnsafeArchiveError, match="'version'"):
        check_pt2_archive(path.read_bytes())


def test_an_aotinductor_entry_is_refused(legit: Path, tmp_path: Path) -> None:
    """torch loads AOTInductor entries as native libraries: code, not data."""
    entry = "data/aotinductor/model/model.so"
    path = _rewrite(legit, tmp_path / "aoti.pt2", {entry: b"\x7fELF"})
    with pytest.raises(KompaktorError, match=re.escape(repr(entry))):
        load_model(path)


@pytest.mark.parametrize("sample_inputs", [True, False])
def test_a_saved_program_with_constants_still_loads_and_predicts(
    model: nn.Module, tmp_path: Path, sample_inputs: bool
) -> None:
    path = tmp_path / "m.pt2"
    if sample_inputs:
        save_torch(model, EXAMPLE, path)
    else:
        program = torch.export.export(model, EXAMPLE)
        program.example_inputs = None  # type: ignore[assignment]
        torch.export.save(program, path)
        assert _records(path)[1]["data/sample_inputs/model.pt"] == b""
    x = np.random.default_rng(0).standard_normal((2, 4)).astype(np.float32)
    with torch.no_grad():
        want = model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(predictor_for(load_model(path))(x), want, atol=1e-6)


def test_a_sample_inputs_pickle_that_loads_weights_only_passes_the_check(legit: Path) -> None:
    _, records = _records(legit)
    assert records["data/sample_inputs/model.pt"]  # save_torch keeps the example inputs
    check_pt2_archive(legit.read_bytes())
