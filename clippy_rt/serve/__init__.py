"""Serving over HTTP on Ray Serve: ``clippy-rt serve`` and ``clippy_rt.serve.client.Client``.

``protocol`` (the JSON messages), ``options`` and ``replica`` (what one replica does) need
no Ray; ``deployment`` and ``server`` import it, through ``require_ray``.
"""

from __future__ import annotations

from ..errors import BackendUnavailableError
from .options import ServeOptions

__all__ = ["ServeOptions", "require_ray", "serve_until_stopped"]

INSTALL_HINT = "install it with: pip install 'clippy-rt[serve]'"


def require_ray():
    """Import and return ``ray.serve``; BackendUnavailableError with the install hint if Ray
    Serve is missing."""
    try:
        from ray import serve  # noqa: F401
        import starlette  # noqa: F401
    except ImportError as exc:
        raise BackendUnavailableError(f"serving needs Ray Serve ({exc}); {INSTALL_HINT}") from None
    return serve


def serve_until_stopped(options: ServeOptions, **kwargs):
    """See ``clippy_rt.serve.server.serve_until_stopped``."""
    require_ray()
    from .server import serve_until_stopped as run
    return run(options, **kwargs)
