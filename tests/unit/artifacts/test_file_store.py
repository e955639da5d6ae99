"""FileStore: atomic writes, recorded digests, overwrite protection, listing."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from kompaktor.artifacts import ArtifactError, FileStore
from kompaktor.artifacts import file as file_mod
from kompaktor.artifacts.file import sidecar_path


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@pytest.fixture
def store(tmp_path: Path) -> FileStore:
    return FileStore(tmp_path / "store")


def visible_files(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def test_root_is_an_absolute_file_uri(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    store = FileStore(Path("rel dir"))
    assert store.root == (tmp_path / "rel dir").resolve().as_uri()
    assert store.root.startswith("file:///")
    assert store.uri("a/b.pt") == store.root + "/a/b.pt"


def test_bytes_round_trip_with_digest(store: FileStore) -> None:
    ref = store.put_bytes("a/result.json", b"{}")

    assert ref.digest == sha(b"{}")
    assert ref.size == 2
    assert ref.uri == store.uri("a/result.json")
    assert store.get_bytes("a/result.json") == b"{}"
    assert store.digest("a/result.json") == ref.digest
    assert store.exists("a/result.json")
    assert not store.exists("a/other")


def test_file_round_trip(store: FileStore, tmp_path: Path) -> None:
    data = os.urandom(3 * 1024 * 1024 + 7)  # several copy chunks
    (tmp_path / "m.pt2").write_bytes(data)

    ref = store.put_file("models/m.pt2", tmp_path / "m.pt2")
    out = store.get_file("models/m.pt2", tmp_path / "out" / "m.pt2")

    assert ref.digest == sha(data)
    assert out.read_bytes() == data
    assert visible_files(tmp_path / "out") == ["m.pt2"]


def test_sidecars_and_temp_files_are_hidden_from_list(store: FileStore) -> None:
    store.put_bytes("a/x", b"1")
    store.put_bytes("b", b"2")
    stale_tmp = store.directory / "a" / ".kompaktor-x.deadbeef.tmp"  # left by a killed writer
    stale_tmp.write_bytes(b"half")

    assert store.list() == ["a/x", "b"]
    assert sidecar_path(store.directory / "a" / "x").is_file()


def test_list_is_folder_bounded(store: FileStore) -> None:
    for key in ["run1/a", "run1/b/c", "run10/a", "other"]:
        store.put_bytes(key, b".")

    assert store.list("run1") == ["run1/a", "run1/b/c"]
    assert store.list("run1/b/c") == ["run1/b/c"]
    assert store.list("missing") == []


def test_list_of_missing_root_is_empty(tmp_path: Path) -> None:
    assert FileStore(tmp_path / "never-written").list() == []


def test_delete_prefix_removes_files_sidecars_and_empty_folders(store: FileStore) -> None:
    for key in ["run1/a", "run1/b/c", "run10/a"]:
        store.put_bytes(key, b".")

    assert store.delete_prefix("run1") == 2
    assert store.list() == ["run10/a"]
    assert not (store.directory / "run1").exists()
    assert store.delete_prefix("run1") == 0


def test_delete_prefix_keeps_foreign_files_outside_its_keys(store: FileStore) -> None:
    store.put_bytes("run1/a", b".")
    writer_tmp = store.directory / "run1" / ".kompaktor-b.1234.tmp"  # a writer still at work
    writer_tmp.write_bytes(b"partial")

    assert store.delete_prefix("run1") == 1
    assert writer_tmp.exists()


# -- atomicity --------------------------------------------------------------------------------


class CrashError(Exception):
    pass


def test_crash_mid_write_leaves_no_final_file(
    store: FileStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What a killed process leaves behind is the state at the moment of the crash."""
    (tmp_path / "src").write_bytes(os.urandom(3 * 1024 * 1024))
    store.put_bytes("old.bin", b"old")
    at_crash: dict[str, object] = {}

    def copy_then_crash(src, dst):  # type: ignore[no-untyped-def]
        dst.write(src.read(1024 * 1024))  # a third of the data is on disk...
        dst.flush()
        at_crash["new"] = (store.directory / "m.bin").exists()
        at_crash["old"] = (store.directory / "old.bin").read_bytes()
        at_crash["list"] = store.list()
        raise CrashError  # ...when the process "dies"

    monkeypatch.setattr(file_mod, "copy_hashing", copy_then_crash)
    with pytest.raises(CrashError):
        store.put_file("m.bin", tmp_path / "src")
    with pytest.raises(CrashError):
        store.put_file("old.bin", tmp_path / "src")
    monkeypatch.undo()

    assert at_crash == {"new": False, "old": b"old", "list": ["old.bin"]}
    assert not (store.directory / "m.bin").exists()
    assert store.get_bytes("old.bin") == b"old"
    assert visible_files(store.directory) == [".kompaktor-old.bin.sha256", "old.bin"]


def test_failed_overwrite_keeps_old_content(
    store: FileStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.put_bytes("k", b"old")

    def no_space(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(file_mod.os, "fsync", no_space)
    with pytest.raises(ArtifactError, match=r"cannot write file:///.*/k: No space left"):
        store.put_bytes("k", b"new")
    monkeypatch.undo()

    assert store.get_bytes("k") == b"old"
    assert store.digest("k") == sha(b"old")
    assert store.list() == ["k"]


def test_get_file_is_atomic_at_destination(store: FileStore, tmp_path: Path) -> None:
    store.put_bytes("k", b"good")
    dest = tmp_path / "dest"
    dest.write_bytes(b"previous")
    (store.directory / "k").write_bytes(b"evil")  # tampered after recording...
    side = sidecar_path(store.directory / "k")
    rec = json.loads(side.read_text())
    st = (store.directory / "k").stat()
    rec.update(  # ...and the sidecar forged to match
        size=st.st_size, mtime_ns=st.st_mtime_ns, ctime_ns=st.st_ctime_ns, ino=st.st_ino
    )
    side.write_text(json.dumps(rec))

    with pytest.raises(ArtifactError, match="digest mismatch"):
        store.get_file("k", dest)
    assert dest.read_bytes() == b"previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dest", "store"]  # no temp left
    with pytest.raises(ArtifactError, match="digest mismatch"):
        store.get_bytes("k")


# -- digests ----------------------------------------------------------------------------------


def test_digest_of_file_written_by_others_is_computed_and_cached(store: FileStore) -> None:
    (store.directory / "d").mkdir(parents=True)
    (store.directory / "d" / "foreign.bin").write_bytes(b"abc")

    assert store.list() == ["d/foreign.bin"]
    assert store.digest("d/foreign.bin") == sha(b"abc")
    assert sidecar_path(store.directory / "d" / "foreign.bin").is_file()
    assert store.get_bytes("d/foreign.bin") == b"abc"


def test_stale_sidecar_is_not_trusted(store: FileStore) -> None:
    store.put_bytes("k", b"one")
    path = store.directory / "k"
    path.write_bytes(b"two, replaced by someone else")

    assert store.digest("k") == sha(b"two, replaced by someone else")
    assert store.get_bytes("k") == b"two, replaced by someone else"


@pytest.mark.parametrize("how", ["in place", "renamed over"])
def test_a_same_size_replacement_with_its_mtime_kept_is_seen(
    store: FileStore, tmp_path: Path, how: str
) -> None:
    """`cp -p` of another model of the same size, or `mv` of such a copy: size and mtime alone
    matched, and the cache served the old file's results."""
    store.put_bytes("model.pt2", b"one")
    path = store.directory / "model.pt2"
    assert store.digest("model.pt2") == sha(b"one")
    before = path.stat()
    if how == "in place":
        path.write_bytes(b"two")
    else:
        (tmp_path / "copy").write_bytes(b"two")
        (tmp_path / "copy").replace(path)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert path.stat().st_mtime_ns == before.st_mtime_ns

    assert store.digest("model.pt2") == sha(b"two")


def test_digest_of_missing_key(store: FileStore) -> None:
    with pytest.raises(ArtifactError, match=r"no artifact at file:///.*/nope"):
        store.digest("nope")
    with pytest.raises(ArtifactError, match="no artifact at"):
        store.get_bytes("nope")


# -- overwrite protection ---------------------------------------------------------------------


def test_overwrite_false_refuses_existing_key(store: FileStore, tmp_path: Path) -> None:
    store.put_bytes("k", b"first")
    (tmp_path / "f").write_bytes(b"second")

    with pytest.raises(ArtifactError, match=r"refusing to overwrite existing artifact file://"):
        store.put_bytes("k", b"second", overwrite=False)
    with pytest.raises(ArtifactError, match="refusing to overwrite"):
        store.put_file("k", tmp_path / "f", overwrite=False)
    assert store.get_bytes("k") == b"first"
    assert store.put_bytes("new", b"x", overwrite=False).size == 1
    assert store.list() == ["k", "new"]


def test_overwrite_false_loses_race_without_clobbering(
    store: FileStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another writer creates the key after our existence check: the link refuses."""
    real_copy = file_mod.copy_hashing

    def copy_while_other_writer_lands(src, dst):  # type: ignore[no-untyped-def]
        result = real_copy(src, dst)
        (store.directory / "k").write_bytes(b"theirs")
        return result

    monkeypatch.setattr(file_mod, "copy_hashing", copy_while_other_writer_lands)
    with pytest.raises(ArtifactError, match="refusing to overwrite"):
        store.put_bytes("k", b"ours", overwrite=False)
    assert (store.directory / "k").read_bytes() == b"theirs"
    assert visible_files(store.directory) == ["k"]


# -- directories and keys ---------------------------------------------------------------------


def test_dir_round_trip(store: FileStore, tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "a.bin").write_bytes(b"a")
    (src / "sub" / "b.json").write_bytes(b"b")

    refs = store.put_dir("out", src)
    dest = store.get_dir("out", tmp_path / "dest")

    assert sorted(refs) == ["a.bin", "sub/b.json"]
    assert refs["sub/b.json"].uri == store.uri("out/sub/b.json")
    assert visible_files(dest) == ["a.bin", "sub/b.json"]
    assert (dest / "sub" / "b.json").read_bytes() == b"b"


def test_get_dir_of_empty_prefix_fails(store: FileStore, tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="no artifacts under"):
        store.get_dir("nothing", tmp_path / "d")


@pytest.mark.parametrize(
    "key", ["", "/abs", "a//b", "../up", "a/./b", "a/..", "a\\b", ".kompaktor-x", "d/.kompaktor-y"]
)
def test_bad_keys_are_rejected(store: FileStore, key: str) -> None:
    with pytest.raises(ArtifactError, match="invalid artifact key"):
        store.put_bytes(key, b"x")
    assert store.list() == []


def test_missing_source_file(store: FileStore, tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match=r"cannot upload .*/absent"):
        store.put_file("k", tmp_path / "absent")
