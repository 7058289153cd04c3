"""Start Ray (or join a cluster), deploy the application, serve until Ctrl-C / SIGTERM, and
shut Serve down again.

Requests reach the replicas without a Python proxy in between: Ray Serve's direct ingress
gives each replica its own HTTP server on ``--host``, on a port from ``--port`` to
``--port + replicas - 1``. Serve still starts its Python HTTP proxy (it keeps the
application's routes), on a free port that nobody is sent to.

A server started right after another stopped on the same ports would find them held: the
connections the old replicas closed stay in TCP's TIME_WAIT for up to a minute, and Serve
binds a replica's port without ``SO_REUSEADDR``, so its replicas would fail to start.
``wait_for_ports`` waits for them (and fails at once on a port that another program listens on).
"""

from __future__ import annotations

import errno
import logging
import os
import signal
import socket
import sys
import threading
import time
from typing import Callable, Dict, List, Mapping, Optional

from ..errors import ServerError
from .options import ServeOptions

APP_NAME = "clippy-rt"


def serve_environment(options: ServeOptions, environ: Mapping[str, str]) -> Dict[str, str]:
    """Environment for the Serve controller and replicas (they read it when they start, also
    on a cluster started elsewhere): direct ingress on ``options``' ports and drain period,
    overridden by any ``RAY_SERVE_*`` variable set for this command."""
    env = {
        "RAY_SERVE_ENABLE_DIRECT_INGRESS": "1",
        # The replicas' HTTP ports: [port, port + replicas), the upper bound exclusive. Several
        # nodes on one machine share the range: a port taken on one node is skipped on the next.
        "RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT": str(options.port),
        "RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT": str(options.port + options.replicas),
        # A stopping replica answers what it has and stops accepting after this long (Ray's
        # default, 30 s, is for load balancers that must first deregister it).
        "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": f"{options.drain_s:g}",
        # A restarted replica takes its predecessor's port at once: no load balancer in front
        # holds a stale entry for it.
        "RAY_SERVE_PORT_QUARANTINE_S": "0",
        # Requests are handled on the event loop that reads them (Serve's default runs them on
        # a second loop in another thread: one more hand-over of the GIL per request). The
        # deployment never blocks its loop: engine calls and image decoding run on threads.
        "RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0",
    }
    env.update({name: value for name, value in environ.items() if name.startswith("RAY_SERVE_")})
    return env


def ray_system_config(environ: Mapping[str, str]) -> Dict[str, object]:
    """Settings of a Ray cluster started by ``serve``: its workers (the replicas) run at the
    command's own priority, not 15 lower (Ray's default, made to keep a driver responsive),
    which on a shared machine would hand their CPU to any other process. A
    ``RAY_worker_niceness`` set for this command is left to Ray."""
    return {} if "RAY_worker_niceness" in environ else {"worker_niceness": 0}


# Longer than Linux's TIME_WAIT (60 s): a port held only by closed connections comes free in time.
PORT_WAIT_S = 75.0
PORT_POLL_S = 0.25


def _bindable(host: str, port: int) -> bool:
    """Whether a listening socket could take ``host:port`` now, bound the way Serve binds
    a replica's (no ``SO_REUSEADDR``). Raises ServerError where it never could."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return False
            raise ServerError(f"cannot serve on {host}:{port}: {exc.strerror or exc}") from None
    return True


def _accepts_connections(host: str, port: int) -> bool:
    """Whether a program listens on ``port`` (an unspecified ``host`` is tried on loopback)."""
    target = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(host, host)
    try:
        with socket.create_connection((target, port), timeout=1.0):
            return True
    except OSError:
        return False


def wait_for_ports(options: ServeOptions, stop: threading.Event, log: Callable[[str], None], *,
                   wait_s: float = PORT_WAIT_S, clock: Callable[[], float] = time.monotonic) -> bool:
    """Wait until each replica port of ``options`` on this machine can be bound. A port that
    a program listens on raises ServerError at once; one held only by the closed connections
    of a server that stopped (TIME_WAIT) is waited for, up to ``wait_s`` seconds in all.
    Returns False if ``stop`` was set while waiting, True when every port is free."""
    host = options.host
    deadline = None
    for port in range(options.port, options.port + options.replicas):
        while not _bindable(host, port):
            if _accepts_connections(host, port):
                raise ServerError(f"port {port} on {host} is in use: another program accepts connections "
                                  f"there (another clippy-rt serve?); stop it or pass another --port")
            if deadline is None:
                deadline = clock() + wait_s
                log(f"port {port} on {host} is still held by the closed connections of a server that "
                    f"stopped (TCP TIME_WAIT, up to a minute); waiting for it")
            if clock() >= deadline:
                raise ServerError(f"port {port} on {host} did not come free in {wait_s:g} s (a program "
                                  f"listening on it on another address holds it too); pass another --port")
            if stop.wait(PORT_POLL_S):
                return False
    return True


def replica_urls(options: ServeOptions) -> List[str]:
    """The base URLs of the running replicas, as Serve's controller lists them; the
    configured port range where it cannot tell (an older or newer Serve)."""
    fallback = [f"http://{options.host}:{port}" for port in range(options.port, options.port + options.replicas)]
    try:
        import ray
        from ray.serve.context import _get_global_client

        controller = _get_global_client()._controller
        groups = ray.get(controller.get_target_groups.remote(APP_NAME), timeout=30)
        urls = sorted(f"http://{options.host if options.host not in ('0.0.0.0', '::') else target.ip}:{target.port}"
                      for group in groups if str(group.protocol.value) == "HTTP" for target in group.targets)
    except Exception:  # a private interface of Serve: the port range is the documented answer
        return fallback
    return urls or fallback


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
        # The replicas of a cluster started here bind this machine's ports: make sure they can.
        if started_here:
            wait_for_ports(options, stop, log)
        if not stop.is_set():
            where = "a local Ray cluster" if started_here else f"the Ray cluster at {options.address}"
            log(f"starting {where}")
            extra = {"_system_config": ray_system_config(os.environ)} if started_here else {}
            ray.init(address=options.address, include_dashboard=False, log_to_driver=False,
                     logging_level=logging.WARNING, configure_logging=True,
                     runtime_env={"env_vars": serve_environment(options, os.environ)}, **extra)
            catch_signals()
        logging.getLogger("ray.serve").setLevel(logging.WARNING)
        quiet = LoggingConfig(log_level="WARNING", enable_access_log=False)
        if not stop.is_set():
            # The replicas' HTTP servers take host from here. Serve's own proxy runs once, on
            # this node, on a free port (0): requests go to the replicas' ports instead.
            serve.start(http_options={"host": options.host, "port": 0, "location": "HeadOnly"},
                        logging_config=quiet)
        if not stop.is_set():
            log(f"deploying {options.replicas} replica(s) of {options.model} "
                f"(max batch {options.max_batch}, wait {options.batch_wait_ms:g} ms)")
            serve.run(build_deployment(options), name=APP_NAME, route_prefix="/", logging_config=quiet)
        if not stop.is_set():
            log(f"serving on {' '.join(replica_urls(options))} (Ctrl-C to stop)")
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
