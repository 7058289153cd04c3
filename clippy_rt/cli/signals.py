"""SIGTERM as an exception, so an interrupted command unwinds like Ctrl-C does.

By default SIGTERM ends the process on the spot: ``finally`` blocks do not run, and the
temporary files and directories that atomic writes stage beside their outputs stay
behind. Inside ``terminate_unwinds()`` SIGTERM raises ``Terminated`` instead; every
atomic writer removes its temporary on the way out, and the command exits with 143.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Iterator


class Terminated(BaseException):
    """Raised in the main thread when the process receives SIGTERM."""


def _raise_terminated(signum, frame) -> None:
    raise Terminated(f"received signal {signum}")


@contextlib.contextmanager
def terminate_unwinds() -> Iterator[None]:
    """Within the block, SIGTERM raises ``Terminated`` (main thread only; elsewhere a no-op)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
