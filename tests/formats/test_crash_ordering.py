"""What reaches the disk, in what order, for atomic files and directories: a spy records
every fsync (with the path its descriptor names, read from /proc), rename and replace, and
the tests check the order a power cut needs (data before the rename, the rename's directory
after it), and what a crash at each step leaves behind."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from clippy_rt.formats import atomic
from clippy_rt.formats.atomic import atomic_directory, atomic_write_bytes

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads descriptors from /proc")


@pytest.fixture()
def events(monkeypatch):
    """[(kind, path, ...)] of fsync, rename and replace calls, in order."""
    seen = []
    real_fsync, real_rename, real_replace = os.fsync, os.rename, os.replace

    def fsync(fd):
        path = Path(os.readlink(f"/proc/self/fd/{fd}"))
        kind = "fsync-dir" if path.is_dir() else "fsync-file"
        real_fsync(fd)
        seen.append((kind, path))

    def rename(src, dst):
        real_rename(src, dst)
        seen.append(("rename", Path(src), Path(dst)))

    def replace(src, dst):
        real_replace(src, dst)
        seen.append(("replace", Path(src), Path(dst)))

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "rename", rename)
    monkeypatch.setattr(os, "replace", replace)
    return seen


def test_a_file_is_synced_then_renamed_then_its_directory_synced(tmp_path, events):
    target = tmp_path / "out" / "labels.png"
    atomic_write_bytes(target, b"x" * 1000)
    kinds = [e[0] for e in events]
    assert kinds == ["fsync-file", "replace", "fsync-dir"]
    temporary = events[1][1]
    assert events[0][1] == temporary and events[1][2] == target    # the temporary's data, then the rename
    assert events[2][1] == target.parent
    assert target.read_bytes() == b"x" * 1000


def _write_tree(tmp, payload):
    (tmp / "weights.bin").write_bytes(payload)
    (tmp / "sub" / "deeper").mkdir(parents=True)
    (tmp / "sub" / "config.json").write_text("{}")
    (tmp / "sub" / "deeper" / "graph.onnx").write_bytes(payload[:10])


def test_every_file_and_folder_is_synced_before_the_directory_is_renamed(tmp_path, events):
    out = tmp_path / "model"
    with atomic_directory(out) as tmp:
        _write_tree(tmp, b"a" * 100)
    (rename_index,) = [i for i, e in enumerate(events) if e[0] == "rename"]
    before, after = events[:rename_index], events[rename_index + 1:]
    staged = events[rename_index][1]
    files = {e[1].relative_to(staged) for e in before if e[0] == "fsync-file"}
    folders = [e[1] for e in before if e[0] == "fsync-dir"]
    assert files == {Path("weights.bin"), Path("sub/config.json"), Path("sub/deeper/graph.onnx")}
    # Folders bottom-up, the staging folder itself last: a folder's entries after its children's.
    assert folders == [staged / "sub" / "deeper", staged / "sub", staged]
    assert [e[0] for e in before[:len(files)]] == ["fsync-file"] * len(files)
    assert events[rename_index][2] == out
    assert after == [("fsync-dir", tmp_path)]


def test_replacing_moves_the_old_result_aside_until_the_new_one_is_in_place(tmp_path, events):
    out = tmp_path / "model"
    with atomic_directory(out) as tmp:
        _write_tree(tmp, b"old")
    events.clear()
    with atomic_directory(out, overwrite=True) as tmp:
        _write_tree(tmp, b"new")
    renames = [e for e in events if e[0] == "rename"]
    assert len(renames) == 2
    aside, into_place = renames
    assert aside[1] == out and aside[2].name.startswith(".model.") and aside[2].name.endswith(".partial")
    assert into_place[2] == out
    after = events[events.index(into_place) + 1:]
    assert after == [("fsync-dir", tmp_path)]
    assert not aside[2].exists()                   # removed once the new result is on disk
    assert (out / "weights.bin").read_bytes() == b"new"


def test_a_crash_between_the_two_renames_keeps_the_old_result_whole(tmp_path):
    """The process dies (no handler runs) right after the old result went aside: it is still
    complete under its staging name, and the next write of the same output removes it."""
    out = tmp_path / "model"
    with atomic_directory(out) as tmp:
        _write_tree(tmp, b"old")
    code = f"""
import os
from pathlib import Path
from clippy_rt.formats.atomic import atomic_directory
real_rename, calls = os.rename, []
def rename(src, dst):
    calls.append(dst)
    if len(calls) == 2:
        os._exit(7)
    real_rename(src, dst)
os.rename = rename
with atomic_directory(Path({str(out)!r}), overwrite=True) as tmp:
    (tmp / "weights.bin").write_bytes(b"new")
"""
    assert subprocess.run([sys.executable, "-c", code]).returncode == 7
    assert not out.exists()
    # Two staging-named folders: the new result, never renamed, and the old one, whole.
    partials = [p for p in tmp_path.iterdir() if p.name.startswith(".model.") and p.name.endswith(".partial")]
    assert sorted((p / "weights.bin").read_bytes() for p in partials) == [b"new", b"old"]
    (aside,) = [p for p in partials if (p / "weights.bin").read_bytes() == b"old"]
    assert (aside / "sub" / "deeper" / "graph.onnx").read_bytes() == b"old"
    with atomic_directory(out) as tmp:            # the next write cleans up
        _write_tree(tmp, b"next")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def _second_rename_raises(monkeypatch, error):
    """The rename that would move the new result into place raises ``error``."""
    real_rename = os.rename
    calls = []

    def rename(src, dst):
        calls.append(Path(dst))
        if len(calls) == 2:
            raise error
        real_rename(src, dst)

    monkeypatch.setattr(os, "rename", rename)


@pytest.mark.parametrize("error", [KeyboardInterrupt(), OSError(28, "No space left on device")],
                         ids=["interrupt", "disk-full"])
def test_a_failed_second_rename_puts_the_old_result_back(tmp_path, monkeypatch, error):
    out = tmp_path / "model"
    with atomic_directory(out) as tmp:
        _write_tree(tmp, b"old")
    _second_rename_raises(monkeypatch, error)
    with pytest.raises(type(error)):
        with atomic_directory(out, overwrite=True) as tmp:
            _write_tree(tmp, b"new")
    assert (out / "weights.bin").read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_the_text_cache_runs_sqlite_with_a_rollback_journal_and_full_sync(tmp_path):
    import sqlite3

    from clippy_rt.text_cache import DiskStore

    store = DiskStore(tmp_path / "cache.sqlite", scope="m")
    len(store)
    connection = store._connection
    assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    assert connection.execute("PRAGMA synchronous").fetchone()[0] == 2       # FULL
    store.close()
    assert isinstance(connection, sqlite3.Connection)


def test_fsync_tree_reaches_every_file(tmp_path, events):
    _write_tree(tmp_path, b"z")
    atomic.fsync_tree(tmp_path)
    assert {e[1] for e in events if e[0] == "fsync-file"} == {
        tmp_path / "weights.bin", tmp_path / "sub" / "config.json", tmp_path / "sub" / "deeper" / "graph.onnx"}
