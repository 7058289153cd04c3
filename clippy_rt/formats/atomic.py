"""Atomic writes of files and directories: a reader never sees a half-written output, and
after a crash or a power cut a path holds either its previous content or its new content.

The order, for a file: the data is written to a temporary beside the target, flushed and
fsynced; the temporary is renamed over the target; the parent directory is fsynced, so the
rename itself is on disk. For a directory: every file of the staging directory is fsynced,
then every directory in it bottom-up; the staging directory is renamed to the target; the
parent is fsynced. Replacing an existing directory moves it aside first (named as a staging
directory of the target) and removes it only after the new one is in place and the parent
fsynced. What a crash leaves at each point is listed in docs/operations.md.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import os
import secrets
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterator, List, Union

from ..errors import InputError, ModelDirError

PathLike = Union[str, "os.PathLike[str]"]


def atomic_write(path: PathLike, write: Callable[[BinaryIO], Any]) -> Path:
    """Call ``write(handle)`` on a temporary file next to ``path``, then rename it to ``path``.

    The parent directory is created if needed. The temporary file is created with the
    usual permissions (0666 less the umask) and removed if ``write`` raises; temporaries of
    ``path`` left by a writer that was killed with SIGKILL are removed first. Returns ``path``.
    """
    path = Path(path)
    if path.is_dir():
        raise InputError(f"cannot write {path}: it is a directory")
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_abandoned_temporaries(path)
    temporary = None
    try:
        while True:
            # The writer's process id is in the name, so that a later write can tell a temporary
            # abandoned by a killed writer from one still being written; no other process makes
            # such a name, so it is named before it is created and the cleanup below never
            # misses one (an interrupt right after os.open).
            temporary = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(6)}.tmp")
            try:
                descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
                break
            except FileExistsError:
                continue
            except OSError as exc:
                # Name the file the caller asked for, not the temporary beside it.
                temporary = None
                raise type(exc)(f"cannot write {path}: {exc.strerror or exc}") from None
        with os.fdopen(descriptor, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
        temporary = None
        fsync_directory(path.parent)
    except BaseException:
        if temporary is not None:
            try:
                os.unlink(temporary)
            except FileNotFoundError:
                pass
        raise
    return path


def atomic_write_bytes(path: PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (``atomic_write``). Returns ``path``."""
    return atomic_write(path, lambda handle: handle.write(data))


@contextlib.contextmanager
def atomic_directory(out: Path, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling of ``out``; rename it to ``out`` only if the block succeeds.

    Two writers of one ``out`` leave one complete result: the second to finish is refused
    (``ModelDirError``) and its staging directory removed. Files and directories get the
    modes a plain ``open`` / ``mkdir`` would (the umask is honoured). Staging directories
    left by a killed writer are removed by the next write to the same ``out``.
    """
    out = Path(out)
    check_output_dir(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_abandoned_staging(out)
    # The writer's process id is in the name, so that a later run can tell an abandoned
    # staging directory (its writer was killed) from one still being written.
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.{os.getpid()}.", suffix=".partial", dir=out.parent))
    try:
        directory_mode_from_umask(tmp)
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    try:
        # Some writers (safetensors) create their files 0600; give every file the mode a
        # plain open() would: 0666 less the umask.
        for written in tmp.rglob("*"):
            if written.is_file():
                os.chmod(written, 0o666 & ~current_umask())
        fsync_tree(tmp)
        _wait_at_publish_barrier()
        previous = None
        if overwrite and out.is_dir():
            # Aside under a staging name: a crash before the next rename leaves the old
            # result there (complete), and the next write of ``out`` removes it.
            previous = out.with_name(f".{out.name}.{os.getpid()}.{secrets.token_hex(6)}.partial")
            os.rename(out, previous)
        # rename() replaces an empty directory only: if another process finished writing
        # ``out`` meanwhile, its complete result stays and this one is discarded.
        try:
            os.rename(tmp, out)
        except BaseException:
            if previous is not None:
                try:
                    os.rename(previous, out)      # the old result back in place
                except OSError:                   # another writer's result took its place
                    shutil.rmtree(previous, ignore_errors=True)
            raise
        fsync_directory(out.parent)
        if previous is not None:
            shutil.rmtree(previous, ignore_errors=True)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if exc.errno in (errno.ENOTEMPTY, errno.EEXIST):
            raise ModelDirError(f"{out} was written by another process while this one ran; its result "
                                f"was kept and this one discarded") from None
        raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def fsync_file(path: PathLike) -> None:
    """Flush a written file's data to disk."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def fsync_directory(path: PathLike) -> None:
    """Flush a directory's entries (names created, renamed or removed in it) to disk. A
    no-op where directories cannot be opened (Windows)."""
    if not hasattr(os, "O_DIRECTORY"):
        return
    descriptor = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def fsync_tree(root: PathLike) -> None:
    """fsync every file under ``root``, then every directory bottom-up, ``root`` last."""
    directories = []
    for folder, subfolders, files in os.walk(root):
        for name in files:
            fsync_file(os.path.join(folder, name))
        directories.append(folder)
    for folder in reversed(directories):
        fsync_directory(folder)


PUBLISH_BARRIER_ENV = "CLIPPY_RT_PUBLISH_BARRIER"


def _wait_at_publish_barrier(timeout: float = 600.0) -> None:
    """A hook for tests that make writers overlap on purpose: when the environment variable
    ``CLIPPY_RT_PUBLISH_BARRIER`` names a folder, a writer whose staging directory is complete
    creates ``<folder>/<pid>.ready`` and waits for ``<folder>/<pid>.go`` before moving its
    result into place. Unset (always, outside tests), it does nothing."""
    folder = os.environ.get(PUBLISH_BARRIER_ENV)
    if not folder:
        return
    folder = Path(folder)
    (folder / f"{os.getpid()}.ready").touch()
    go = folder / f"{os.getpid()}.go"
    deadline = time.monotonic() + timeout
    while not go.exists():
        if time.monotonic() > deadline:
            raise ModelDirError(f"{PUBLISH_BARRIER_ENV}: no {go.name} in {folder} after {timeout:.0f} s")
        time.sleep(0.01)


def remove_abandoned_staging(out: Path) -> List[Path]:
    """Remove staging directories of ``out`` whose writing process no longer exists (it was
    killed with SIGKILL, or the machine went down); returns what was removed."""
    removed = []
    prefix = f".{out.name}."
    for candidate in Path(out).parent.glob(f"{glob.escape(prefix)}*.partial"):
        # Exactly "<pid>.<random>.partial" after the prefix: ".out.v2.<pid>..." belongs to "out.v2".
        parts = candidate.name[len(prefix):].split(".")
        if len(parts) != 3 or not parts[0].isdigit():
            continue
        if candidate.is_dir() and not _process_exists(int(parts[0])):
            shutil.rmtree(candidate, ignore_errors=True)
            removed.append(candidate)
    return removed


def remove_abandoned_temporaries(path: PathLike) -> List[Path]:
    """Remove the temporary files of ``atomic_write(path)`` whose writing process no longer
    exists (it was killed with SIGKILL, or the machine went down); returns what was removed."""
    path = Path(path)
    removed = []
    prefix = f".{path.name}."
    for candidate in path.parent.glob(f"{glob.escape(prefix)}*.tmp"):
        # Exactly "<pid>.<hex>.tmp" after the prefix: ".a.5.<pid>.<hex>.tmp" belongs to "a.5".
        parts = candidate.name[len(prefix):].split(".")
        if len(parts) != 3 or not parts[0].isdigit():
            continue
        if candidate.is_file() and not _process_exists(int(parts[0])):
            try:
                os.unlink(candidate)
            except FileNotFoundError:  # another writer removed it first
                continue
            removed.append(candidate)
    return removed


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


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


def check_output_dir(out: Path, overwrite: bool = False) -> None:
    """Fail before any work if ``out`` cannot be written (``atomic_directory`` checks again)."""
    if out.exists() and not out.is_dir():
        raise ModelDirError(f"{out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise ModelDirError(f"{out} exists and is not empty (pass --overwrite to replace it)")
