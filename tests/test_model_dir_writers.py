"""Two writers of one output directory: one complete result stays, the other is told."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from clippy_rt.errors import ModelDirError
from clippy_rt.formats.atomic import atomic_directory

OTHER = "the other writer's complete result"


def _other_writer_finishes(out):
    out.mkdir()
    (out / "result.txt").write_text(OTHER)


def test_the_later_writer_loses_and_says_so(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(ModelDirError, match="written by another process while this one ran"):
        with atomic_directory(out) as staging:
            (staging / "result.txt").write_text("this writer's result")
            _other_writer_finishes(out)  # both passed the check at the start; the other ends first
    assert (out / "result.txt").read_text() == OTHER
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no staging directory left


def test_the_later_overwriter_loses_and_says_so(tmp_path, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("old")
    real_rename = os.rename

    def other_lands_after_the_old_result_moved_aside(src, dst):
        real_rename(src, dst)
        if Path(src) == out:
            _other_writer_finishes(out)

    monkeypatch.setattr(os, "rename", other_lands_after_the_old_result_moved_aside)
    with pytest.raises(ModelDirError, match="written by another process while this one ran"):
        with atomic_directory(out, overwrite=True) as staging:
            (staging / "result.txt").write_text("this writer's result")
    assert sorted(p.name for p in out.iterdir()) == ["result.txt"]
    assert (out / "result.txt").read_text() == OTHER
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_an_empty_directory_is_replaced(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    with atomic_directory(out) as staging:
        (staging / "result.txt").write_text("done")
    assert (out / "result.txt").read_text() == "done"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_abandoned_staging_is_removed_by_the_next_run(tmp_path):
    import os
    import subprocess
    import sys

    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()  # its process id now names no process: a writer killed with SIGKILL
    out = tmp_path / "out"
    abandoned = tmp_path / f".out.{child.pid}.x1.partial"
    abandoned.mkdir()
    (abandoned / "weights.safetensors").write_bytes(b"half")
    live = tmp_path / f".out.{os.getpid()}.x2.partial"  # a writer still running: kept
    live.mkdir()
    other = tmp_path / f".other.{child.pid}.x3.partial"  # another output's: not this run's to judge
    other.mkdir()
    dotted = tmp_path / f".out.7.{child.pid}.x4.partial"  # the staging of an output named "out.7"
    dotted.mkdir()
    with atomic_directory(out) as staging:
        (staging / "result.txt").write_text("done")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["out", live.name, other.name, dotted.name])
