"""atomic_write's documented contract beyond crash ordering: missing parents are created, a
directory in the way is refused by name, files get 0666 less the umask (never executable),
the umask is read without being changed."""

from __future__ import annotations

import os
import stat

import pytest

from clippy_rt.errors import InputError
from clippy_rt.formats.atomic import atomic_write_bytes, current_umask


def test_missing_parents_are_created(tmp_path):
    path = tmp_path / "a" / "b" / "c" / "labels.bin"
    assert atomic_write_bytes(path, b"\x01\x02") == path
    assert path.read_bytes() == b"\x01\x02"
    assert sorted(p.name for p in path.parent.iterdir()) == ["labels.bin"]


def test_a_directory_in_the_way_is_refused_by_name(tmp_path):
    (tmp_path / "out").mkdir()
    with pytest.raises(InputError, match="cannot write .*out: it is a directory"):
        atomic_write_bytes(tmp_path / "out", b"x")


@pytest.mark.parametrize("mask", [0o022, 0o077, 0o002])
def test_files_get_0666_less_the_umask_and_the_umask_is_kept(tmp_path, mask):
    previous = os.umask(mask)
    try:
        assert current_umask() == mask
        path = atomic_write_bytes(tmp_path / f"file-{mask:o}", b"data")
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~mask
        assert current_umask() == mask
    finally:
        os.umask(previous)
