"""Atomic file writes: a reader never sees a half-written output."""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Any, BinaryIO, Callable, Union

from .errors import InputError

PathLike = Union[str, "os.PathLike[str]"]


def atomic_write(path: PathLike, write: Callable[[BinaryIO], Any]) -> Path:
    """Call ``write(handle)`` on a temporary file next to ``path``, then rename it to ``path``.

    The parent directory is created if needed. The temporary file is created with the
    usual permissions (0666 less the umask) and removed if ``write`` raises. Returns ``path``.
    """
    path = Path(path)
    if path.is_dir():
        raise InputError(f"cannot write {path}: it is a directory")
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        temporary = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
        try:
            descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            break
        except FileExistsError:
            continue
    try:
        with os.fdopen(descriptor, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        try:
            os.unlink(temporary)
        except FileNotFoundError:
            pass
        raise
    return path


def current_umask() -> int:
    """The process's umask, read without changing it where the OS allows."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    # Elsewhere the only way to read it is to set it; restore it at once.
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def directory_mode_from_umask(path: PathLike) -> None:
    """Give a directory made by ``tempfile.mkdtemp`` (mode 0700) the mode a plain
    ``mkdir`` would have: 0777 less the umask."""
    os.chmod(path, 0o777 & ~current_umask())
