"""The replica's ASGI application: HTTP routes (JSON or binary frames by ``Content-Type``),
the body-size limit, and the WebSocket of camera sessions. Needs no Ray: ``build_app`` takes
a ``Replica`` and the coroutine that runs one parsed request (the replica's batcher).

A plain ASGI callable rather than a web framework: every request is matched against four
routes and answered with one line of JSON on error, so a framework's middleware, routing
and dependency injection would only add work on the event loop that also forms batches.

Routes::

    GET  /v1/health    GET /v1/stats
    POST /v1/segment   (application/json, or application/x-clippy-frames: clippy_rt.serve.frames)
    POST /v1/classify  (application/json)
    WebSocket /v1/session (clippy_rt.serve.session)
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any, Awaitable, Callable, Dict, List, Tuple

from .batcher import BatcherClosed
from .frames import HEADER_LENGTH, INLINE_PARSE_BYTES, REQUEST_TYPE, RESPONSE_TYPE, BinaryBody, raw_frames_only
from .protocol import RequestError, error_body, first_line
from .session import PATH as SESSION_PATH
from .session import serve_session

logger = logging.getLogger("clippy_rt.serve")

ROUTES = {
    ("GET", "/v1/health"): "health",
    ("GET", "/v1/stats"): "stats",
    ("POST", "/v1/segment"): "segment",
    ("POST", "/v1/classify"): "classify",
}
JSON_TYPE = b"application/json"


class ClientGone(Exception):
    """The client disconnected before its request body arrived."""


def render_json(body: Any) -> bytes:
    """A JSON answer's bytes: compact, UTF-8, no NaN (as Starlette's JSONResponse renders)."""
    return json.dumps(body, ensure_ascii=False, allow_nan=False, indent=None, separators=(",", ":")).encode("utf-8")


def _headers(scope: Dict[str, Any]) -> Dict[str, str]:
    """Request headers by lower-case name (the last of repeated ones)."""
    return {name.decode("latin-1").lower(): value.decode("latin-1") for name, value in scope.get("headers", ())}


async def read_body(receive: Callable[[], Awaitable[Dict[str, Any]]], headers: Dict[str, str], limit: int) -> bytes:
    """The whole request body, at most ``limit`` bytes (RequestError 413 past it, checked
    against Content-Length before anything is read); RequestError 400 for an empty body,
    ClientGone if the client left first."""
    declared = headers.get("content-length")
    if declared is not None:
        try:
            declared_bytes = int(declared)
        except ValueError:
            raise RequestError(f"invalid Content-Length {declared!r}") from None
        if declared_bytes > limit:
            raise RequestError(f"request body of {declared_bytes} bytes exceeds the limit of {limit} bytes",
                               status=413)
    chunks: List[bytes] = []
    received = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone()
        chunk = message.get("body", b"")
        if chunk:
            received += len(chunk)
            if received > limit:
                raise RequestError(f"request body exceeds the limit of {limit} bytes", status=413)
            chunks.append(chunk)
        if not message.get("more_body", False):
            break
    if not received:
        raise RequestError("empty request body: send a JSON object or binary frames")
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def _send(send, status: int, body: bytes, content_type: bytes,
                extra: Tuple[Tuple[bytes, bytes], ...] = ()) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", content_type), (b"content-length", str(len(body)).encode("ascii")),
                            *extra]})
    await send({"type": "http.response.body", "body": body})


async def send_json(send, status: int, body: Any) -> None:
    await _send(send, status, render_json(body), JSON_TYPE)


def _parse_json(replica, route: str, data: bytes):
    try:
        body = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise RequestError(f"request body is not valid JSON: {first_line(exc)}") from None
    return replica.parse(route, body)


def answering(replica, batcher) -> Callable[[Any], Awaitable[Tuple[int, Any]]]:
    """The ``run`` coroutine of ``build_app`` for a ``batcher`` running
    ``replica.compute_batch``: the engine thread computes, and each answer is encoded here,
    on the event loop while the engine runs the next batch, or on the loop's default
    executor when ``replica.answer_inline`` says it is too large for the loop."""

    async def run(request) -> Tuple[int, Any]:
        outcome = await batcher(request)
        if replica.answer_inline(request, outcome):
            return replica.answer(request, outcome)
        return await asyncio.get_running_loop().run_in_executor(None, replica.answer, request, outcome)

    return run


def build_app(replica, run: Callable[[Any], Awaitable[Tuple[int, Any]]], *, max_body_bytes: int,
              max_pixels: int, inline_parse_bytes: int = INLINE_PARSE_BYTES):
    """The ASGI application serving ``replica``: ``run(parsed request)`` returns (HTTP
    status, JSON body or BinaryBody). Bodies of at most ``inline_parse_bytes`` and raw
    frames are parsed on the event loop (a hop to a thread would cost more than the work);
    larger image files are decoded on the loop's default executor."""

    async def http(scope, receive, send) -> None:
        method, path = scope["method"], scope["path"]
        route = ROUTES.get((method, path))
        if route is None:
            if any(known == path for _, known in ROUTES):
                return await send_json(send, 405, error_body(f"method {method} not allowed on {path}"))
            return await send_json(send, 404, error_body(f"no route {path}; see /v1/health, /v1/segment, /v1/classify"))
        if route == "health":
            return await send_json(send, 200, replica.health())
        if route == "stats":
            return await send_json(send, 200, replica.stats())
        headers = _headers(scope)
        binary = headers.get("content-type", "").split(";")[0].strip() == REQUEST_TYPE
        try:
            data = await read_body(receive, headers, max_body_bytes)
            loop = asyncio.get_running_loop()
            small = len(data) <= inline_parse_bytes
            if binary:
                if route != "segment":
                    raise RequestError(f"binary frames are accepted on /v1/segment only, not {path}", status=415)
                header_length = headers.get(HEADER_LENGTH.lower())
                if small or raw_frames_only(header_length, data):
                    parsed = replica.parse_binary(header_length, data)
                else:
                    parsed = await loop.run_in_executor(None, replica.parse_binary, header_length, data)
            elif small:
                parsed = _parse_json(replica, route, data)
            else:
                parsed = await loop.run_in_executor(None, _parse_json, replica, route, data)
        except ClientGone:
            return
        except RequestError as exc:
            return await send_json(send, exc.status, error_body(str(exc)))
        except Exception as exc:  # a server fault: still one line of JSON
            logger.exception("parsing a %s request failed", route)
            return await send_json(send, 500, error_body(f"internal error: {first_line(exc)}"))
        try:
            status, reply = await run(parsed)
        except BatcherClosed:
            return await send_json(send, 503, error_body("the replica is shutting down: send the request again"))
        if isinstance(reply, BinaryBody):
            return await _send(send, status, reply.data, RESPONSE_TYPE.encode("ascii"),
                               ((HEADER_LENGTH.lower().encode("ascii"), str(reply.header_length).encode("ascii")),))
        try:
            body = render_json(reply)
        except ValueError as exc:  # a NaN in the answer
            logger.exception("encoding a %s answer failed", route)
            return await send_json(send, 500, error_body(f"internal error: {first_line(exc)}"))
        await _send(send, status, body, JSON_TYPE)

    async def websocket(scope, receive, send) -> None:
        from starlette.websockets import WebSocket

        if scope["path"] != SESSION_PATH:
            await receive()  # websocket.connect
            await send({"type": "websocket.close", "code": 1008, "reason": f"no session at {scope['path']}"})
            return
        await serve_session(WebSocket(scope, receive, send), replica.patch_size, max_pixels, None, run,
                            model_template=replica.template, inline_parse_bytes=inline_parse_bytes)

    async def lifespan(scope, receive, send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def app(scope, receive, send) -> None:
        kind = scope["type"]
        if kind == "http":
            await http(scope, receive, send)
        elif kind == "websocket":
            await websocket(scope, receive, send)
        elif kind == "lifespan":
            await lifespan(scope, receive, send)
        else:
            raise ValueError(f"unsupported ASGI scope type {kind!r}")

    return app
