"""The Ray Serve deployment: HTTP routing (JSON or binary frames by ``Content-Type``), the
body-size limit and dynamic batching around a ``Replica``. Importing this module imports
Ray; use ``clippy_rt.serve.serve_until_stopped``.

No ``from __future__ import annotations`` here: FastAPI reads the route methods'
annotations (``Request``, ``WebSocket``) at run time to know what to pass them.
"""

import asyncio
import gc
import json
import logging
import sys
from typing import Any, List

from fastapi import FastAPI, WebSocket
from ray import serve
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from .frames import HEADER_LENGTH, REQUEST_TYPE, RESPONSE_TYPE, BinaryBody, raw_frames_only
from .options import ServeOptions
from .protocol import RequestError, error_body, first_line
from .replica import Replica, load_engine
from .session import PATH as SESSION_PATH
from .session import serve_session

logger = logging.getLogger("clippy_rt.serve")
# How long a replica thread holding the GIL keeps it from another that asks for it.
GIL_SWITCH_INTERVAL_S = 0.0005

ROUTES = {
    ("GET", "/v1/health"): "health",
    ("GET", "/v1/stats"): "stats",
    ("POST", "/v1/segment"): "segment",
    ("POST", "/v1/classify"): "classify",
}


# Defined before the class: in the route methods Serve's ingress builds from the class,
# names defined after the class were not found.
async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            declared_bytes = int(declared)
        except ValueError:
            raise RequestError(f"invalid Content-Length {declared!r}") from None
        if declared_bytes > limit:
            raise RequestError(f"request body of {declared_bytes} bytes exceeds the limit of {limit} bytes",
                               status=413)
    chunks = []
    received = 0
    async for chunk in request.stream():
        received += len(chunk)
        if received > limit:
            raise RequestError(f"request body exceeds the limit of {limit} bytes", status=413)
        chunks.append(chunk)
    if not received:
        raise RequestError("empty request body: send a JSON object or binary frames")
    return b"".join(chunks)


def _parse_json(replica: Replica, route: str, data: bytes):
    try:
        body = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise RequestError(f"request body is not valid JSON: {first_line(exc)}") from None
    return replica.parse(route, body)


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse(error_body(message), status_code=status)


# The routes are matched by ``ClippyDeployment.http`` itself (one-line JSON errors for
# unknown routes and methods); the ASGI app adds the WebSocket of camera sessions.
app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)


@serve.deployment(name="clippy-rt")
@serve.ingress(app)
class ClippyDeployment:
    """One Engine per replica; concurrent requests and session frames are batched by
    ``handle_batch``."""

    def __init__(self, options: ServeOptions) -> None:
        import ray
        import torch

        # The engine thread gives up the GIL around every torch call; while the event loop
        # holds it, Python's 5 ms switch interval would keep the engine waiting that long.
        sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
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
        # The model, Ray and torch leave a large heap of long-lived objects: move them out
        # of the collector's reach so each request's garbage collections stay cheap.
        gc.collect()
        gc.freeze()
        self.handle_batch.set_max_batch_size(options.max_batch)
        self.handle_batch.set_batch_wait_timeout_s(options.batch_wait_ms / 1000.0)

    @app.websocket(SESSION_PATH)
    async def session(self, websocket: WebSocket) -> None:
        await serve_session(websocket, self.replica.patch_size, self.options.max_pixels, None, self.handle_batch,
                            model_template=self.replica.template)

    @app.api_route("/{path:path}", methods=["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"])
    async def http(self, request: Request) -> Response:
        route = ROUTES.get((request.method, request.url.path))
        if route is None:
            if any(path == request.url.path for _, path in ROUTES):
                return _error(405, f"method {request.method} not allowed on {request.url.path}")
            return _error(404, f"no route {request.url.path}; see /v1/health, /v1/segment, /v1/classify")
        if route == "health":
            return JSONResponse(self.replica.health())
        if route == "stats":
            return JSONResponse(self.replica.stats())
        binary = request.headers.get("content-type", "").split(";")[0].strip() == REQUEST_TYPE
        try:
            data = await _read_body(request, self.options.max_body_bytes)
            loop = asyncio.get_running_loop()
            # Decoding images is real work: keep it off the event loop that forms batches.
            # Raw frames need none: a hop to a thread would cost more than parsing them here.
            if binary:
                if route != "segment":
                    raise RequestError(f"binary frames are accepted on /v1/segment only, not {request.url.path}",
                                       status=415)
                header_length = request.headers.get(HEADER_LENGTH)
                if raw_frames_only(header_length, data):
                    parsed = self.replica.parse_binary(header_length, data)
                else:
                    parsed = await loop.run_in_executor(None, self.replica.parse_binary, header_length, data)
            else:
                parsed = await loop.run_in_executor(None, _parse_json, self.replica, route, data)
        except RequestError as exc:
            return _error(exc.status, str(exc))
        except Exception as exc:  # a server fault: still one line of JSON
            logger.exception("parsing a %s request failed", route)
            return _error(500, f"internal error: {first_line(exc)}")
        status, reply = await self.handle_batch(parsed)
        if isinstance(reply, BinaryBody):
            return Response(reply.data, status_code=status, media_type=RESPONSE_TYPE,
                            headers={HEADER_LENGTH: str(reply.header_length)})
        return JSONResponse(reply, status_code=status)

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.005)
    async def handle_batch(self, requests: List[Any]) -> List[tuple]:
        loop = asyncio.get_running_loop()
        try:
            # The engine call blocks: run it in a thread so requests keep arriving meanwhile.
            return await loop.run_in_executor(None, self.replica.run_batch, requests)
        except Exception as exc:  # a server fault: answer every request of the batch
            logger.exception("batch of %d failed", len(requests))
            return [(500, error_body(f"internal error: {first_line(exc)}"))] * len(requests)


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
