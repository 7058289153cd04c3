"""Start Ray (or join a cluster), deploy the application, serve until Ctrl-C / SIGTERM, and
shut Serve down again."""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from typing import Callable, Dict, Mapping, Optional

from .options import ServeOptions

APP_NAME = "clippy-rt"
# The one HTTP proxy would otherwise send every request to the replicas on its own node
# until they are full: spread requests over all replicas instead. The Serve controller and
# proxy inherit this job's environment.
PROXY_ENV = {"RAY_SERVE_PROXY_PREFER_LOCAL_NODE_ROUTING": "0"}


def serve_environment(environ: Mapping[str, str]) -> Dict[str, str]:
    """Environment for the Serve processes: PROXY_ENV, overridden by any ``RAY_SERVE_*``
    variable set for this command (Ray Serve's own tuning knobs reach the controller,
    proxy and replicas also on a cluster started elsewhere)."""
    env = dict(PROXY_ENV)
    env.update({name: value for name, value in environ.items() if name.startswith("RAY_SERVE_")})
    return env


def serve_until_stopped(options: ServeOptions, *, stop: Optional[threading.Event] = None,
                        log: Callable[[str], None] = None) -> int:
    """Deploy ``options`` and block until SIGINT / SIGTERM (or ``stop`` is set); then delete
    the application, stop Serve and disconnect from Ray (stopping a cluster started here).
    Returns 0."""
    import ray
    from ray import serve
    from ray.serve.schema import LoggingConfig

    from .deployment import build_deployment

    log = log or (lambda text: print(text, file=sys.stderr, flush=True))
    stop = stop or threading.Event()
    previous = {}

    def catch_signals() -> None:
        # Ray's core installs its own SIGTERM handler (which aborts) when it connects:
        # install ours before and again after, so a signal at any point stops cleanly.
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                handler = signal.signal(signum, lambda *_: stop.set())
                previous.setdefault(signum, handler)

    catch_signals()
    started_here = options.address is None
    try:
        where = "a local Ray cluster" if started_here else f"the Ray cluster at {options.address}"
        log(f"starting {where}")
        ray.init(address=options.address, include_dashboard=False, log_to_driver=False,
                 logging_level=logging.WARNING, configure_logging=True,
                 runtime_env={"env_vars": serve_environment(os.environ)})
        catch_signals()
        logging.getLogger("ray.serve").setLevel(logging.WARNING)
        quiet = LoggingConfig(log_level="WARNING", enable_access_log=False)
        if not stop.is_set():
            # One HTTP proxy, on the node running this command: several nodes on one
            # machine would otherwise all bind the same port.
            serve.start(http_options={"host": options.host, "port": options.port, "location": "HeadOnly"},
                        logging_config=quiet)
        if not stop.is_set():
            log(f"deploying {options.replicas} replica(s) of {options.model} "
                f"(max batch {options.max_batch}, wait {options.batch_wait_ms:g} ms)")
            serve.run(build_deployment(options), name=APP_NAME, route_prefix="/", logging_config=quiet)
        if not stop.is_set():
            log(f"serving on http://{options.host}:{options.port} (Ctrl-C to stop)")
        stop.wait()
        log("shutting down")
    finally:
        if ray.is_initialized():
            try:
                serve.shutdown()
            finally:
                ray.shutdown()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    log("stopped")
    return 0
