"""The Ray Serve deployment: one ``Replica``, its ``Batcher`` (one engine thread running
``Replica.compute_batch``; answers are encoded on the event loop, ``asgi.answering``) and the
ASGI application of ``clippy_rt.serve.asgi`` as the replica's HTTP ingress. Importing this
module imports Ray; use ``clippy_rt.serve.serve_until_stopped``.
"""

import gc
import logging
import sys

from ray import serve

from .asgi import answering, build_app
from .batcher import Batcher
from .options import ServeOptions
from .protocol import error_body, first_line
from .replica import Replica, load_engine, request_frames

logger = logging.getLogger("clippy_rt.serve")


def _batch_failed(requests, exc: Exception):
    logger.error("batch of %d failed", len(requests), exc_info=exc)
    return [(500, error_body(f"internal error: {first_line(exc)}"))] * len(requests)


# The ASGI application is built in each replica, after the engine loaded
# (``__serve_build_asgi_app__``).
@serve.deployment(name="clippy-rt")
@serve.ingress()
class ClippyDeployment:
    """One Engine per replica; concurrent requests and session frames are batched by one
    ``Batcher`` whose thread runs the engine."""

    def __init__(self, options: ServeOptions) -> None:
        import ray
        import torch

        # The engine thread needs the GIL before and after each batch's call (the stream's
        # trace, CUDA graph or runtime), and request handling on the event loop and decoding
        # threads holds it in between: with Python's 5 ms switch interval the engine would
        # wait up to that long each time (0.1 ms, the default: benchmarks/RESULTS.md).
        sys.setswitchinterval(options.gil_switch_ms / 1000.0)
        if options.threads:
            torch.set_num_threads(options.threads)
        self.options = options
        engine = load_engine(options)
        context = ray.get_runtime_context()
        try:
            replica_id = serve.get_replica_context().replica_id.unique_id
        except Exception:  # outside a running Serve application (never in service)
            replica_id = ""
        self.replica = Replica(engine, model=str(options.model), max_pixels=options.max_pixels,
                               replica_id=replica_id, node_id=context.get_node_id(),
                               stream_batch=options.max_batch)
        self.batcher = Batcher(self.replica.compute_batch, max_frames=options.max_batch,
                               wait_s=options.batch_wait_ms / 1000.0, frames=request_frames,
                               on_error=_batch_failed, name="clippy-rt-engine")
        # The model, Ray and torch leave a large heap of long-lived objects: move them out
        # of the collector's reach so each request's garbage collections stay cheap.
        gc.collect()
        gc.freeze()

    def __serve_build_asgi_app__(self):
        return build_app(self.replica, answering(self.replica, self.batcher),
                         max_body_bytes=self.options.max_body_bytes, max_pixels=self.options.max_pixels)

    def __del__(self) -> None:
        batcher = getattr(self, "batcher", None)
        if batcher is not None:
            batcher.close(timeout=1.0)


def build_deployment(options: ServeOptions):
    """The bound Serve application for ``options``."""
    deployment = ClippyDeployment.options(
        num_replicas=options.replicas,
        ray_actor_options=options.replica_resources,
        # Enough requests in flight per replica to fill two batches: one running, one forming.
        max_ongoing_requests=max(2 * options.max_batch, 8),
        # Stop in seconds: drain for options.drain_s (see server.serve_environment), checking
        # for requests still running every 0.2 s, and give up on them 5 s later.
        graceful_shutdown_wait_loop_s=0.2,
        graceful_shutdown_timeout_s=options.drain_s + 5.0,
    )
    return deployment.bind(options)
