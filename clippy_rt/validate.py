"""Argument checks shared by every public entry point, defined once."""

from __future__ import annotations

from typing import Optional, Type

from .errors import InputError


def check_positive_int(name: str, value, upper: Optional[int] = None,
                       error: Type[Exception] = InputError) -> int:
    """``value`` if it is an int (not a bool) >= 1 (and <= ``upper``); else raises ``error``
    (``InputError`` unless the caller's layer has its own, e.g. ``ConfigError``) with the name,
    the bound and the value received."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 1 or (upper is not None and value > upper):
        bound = f" and at most {upper}" if upper is not None else ""
        raise error(f"{name} must be a positive integer{bound}, got {value!r}")
    return value
