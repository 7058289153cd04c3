"""Atomic file writes; the code lives in ``clippy_rt.formats.atomic`` (names kept here)."""

from .formats.atomic import PathLike, atomic_write  # noqa: F401
