"""Atomic file writes; the code lives in ``clippy_rt.formats.atomic`` (names kept here)."""

from .formats.atomic import (PathLike, atomic_write, current_umask,  # noqa: F401
                             directory_mode_from_umask)
