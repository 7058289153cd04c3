"""Camera sessions over one WebSocket (``/v1/session``): prompts sent once, then frames with
an id, answered with the same id. Needs no Ray: ``serve_session`` takes a Starlette
WebSocket and a coroutine that runs one request (the deployment's batcher, so frames of all
sessions with the same prompts are batched together).

Messages::

    client -> server (text, first):  {"prompts": [...] | {class: [...]}, "template": ...,
                                      "size": ..., "resize": "squash", "labels": "raw" | "zlib"}
    server -> client (text):          {"classes": [...]}            (or {"error": ...}, then close)
    client -> server (binary):        <u32 little-endian N><N bytes of JSON header><frame bytes>
                                      header: {"id": any, "timestamp": number,
                                               "format": "jpeg" | "png" | "raw", "bytes": ...,
                                               "height": H, "width": W (raw)}
    server -> client (binary):        <u32 N><N bytes of JSON header><labels>
                                      header: {"id", "timestamp", "classes", "frames": [one frame,
                                               as in clippy_rt.serve.frames]}
    server -> client (text):          {"id": ..., "error": "<one line>"}   (that frame refused)

A frame the server cannot take is refused alone; the session goes on. The server keeps at
most ``max_in_flight`` frames of a session at once and refuses more.
"""

from __future__ import annotations

import asyncio
import json
import struct
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Dict, Optional, Tuple

from .batcher import BatcherClosed
from .frames import INLINE_PARSE_BYTES, LABEL_ENCODINGS, BinaryBody, FramesRequest, _decode_frame, _frame_bytes, segmentations_to_binary
from .protocol import RequestError, Size, _object, _prompt_set, _resize, _size, first_line
from ..prompts import PromptSet

PATH = "/v1/session"
# Frames of one session being worked on at once; a client keeps a few in flight.
MAX_IN_FLIGHT = 64
LENGTH = struct.Struct("<I")


@dataclass(frozen=True)
class SessionSetup:
    prompts: PromptSet
    size: Size
    resize: str
    labels: str


def parse_setup(text: Any, patch_size: int, model_template: Optional[str] = None) -> SessionSetup:
    """The first message of a session -> SessionSetup; prompts filled into its "template", or
    ``model_template`` without one (None: verbatim). Raises RequestError."""
    try:
        body = json.loads(text)
    except (TypeError, ValueError):
        raise RequestError("a session starts with a JSON text message: {\"prompts\": [...], ...}") from None
    body = _object(body, {"prompts", "template", "size", "resize", "labels"})
    labels = body.get("labels", "raw")
    if labels not in LABEL_ENCODINGS:
        raise RequestError(f"'labels' must be one of {', '.join(LABEL_ENCODINGS)}, got {labels!r}")
    return SessionSetup(prompts=_prompt_set(body, "prompts", model_template), size=_size(body.get("size"), patch_size),
                        resize=_resize(body.get("resize", "squash")), labels=labels)


def parse_frame_message(message: bytes, setup: SessionSetup, patch_size: int,
                        max_pixels: int) -> Tuple[Any, Any, FramesRequest]:
    """A frame message -> (id, timestamp, FramesRequest of one frame). Raises RequestError,
    with the frame's id as ``.frame_id`` when the header could be read."""
    if len(message) < LENGTH.size:
        raise RequestError("a frame message starts with its header's length (4 bytes)")
    (length,) = LENGTH.unpack_from(message)
    try:
        header = json.loads(message[LENGTH.size:LENGTH.size + length])
    except (ValueError, UnicodeDecodeError):
        raise RequestError("the frame's header is not valid JSON") from None
    if not isinstance(header, dict) or "id" not in header:
        raise RequestError("the frame's header needs an 'id'")
    frame_id, timestamp = header.pop("id"), header.pop("timestamp", None)
    try:
        count = _frame_bytes(header, 0)
        data = memoryview(message)[LENGTH.size + length:]
        if count != len(data):
            raise RequestError(f"the frame's header declares {count} bytes, the message carries {len(data)}")
        image = _decode_frame(header, data, 0, patch_size, max_pixels)
    except RequestError as exc:
        exc.frame_id = frame_id
        raise
    request = FramesRequest(images=(image,), prompts=setup.prompts, size=setup.size, resize=setup.resize,
                            labels=setup.labels)
    return frame_id, timestamp, request


def raw_frame_message(message: bytes) -> bool:
    """Whether a frame message carries a raw frame (nothing to decode). False for anything
    unreadable: ``parse_frame_message`` then says what is wrong."""
    try:
        (length,) = LENGTH.unpack_from(message)
        header = json.loads(message[LENGTH.size:LENGTH.size + length])
        return isinstance(header, dict) and header.get("format") == "raw"
    except (struct.error, ValueError, UnicodeDecodeError):
        return False


def encode_answer(body: BinaryBody, frame_id: Any, timestamp: Any) -> bytes:
    """A frame's binary answer with its id and timestamp added to the header."""
    header = json.loads(body.data[:body.header_length])
    header.update(id=frame_id, timestamp=timestamp)
    head = json.dumps(header, separators=(",", ":")).encode("utf-8")
    return LENGTH.pack(len(head)) + head + body.data[body.header_length:]


async def serve_session(websocket, patch_size: int, max_pixels: int, parse_pool,
                        run: Callable[[FramesRequest], Awaitable[Tuple[int, Any]]],
                        max_in_flight: int = MAX_IN_FLIGHT, model_template: Optional[str] = None,
                        inline_parse_bytes: int = INLINE_PARSE_BYTES) -> None:
    """Run one session on ``websocket`` (Starlette) until the client leaves. ``run`` takes a
    FramesRequest and returns (status, BinaryBody or JSON error body); frames are decoded on
    ``parse_pool`` (an executor, or None for the loop's default); prompts without a template
    are filled into ``model_template`` (None: verbatim). Raw frames, which need no decoding,
    and messages of at most ``inline_parse_bytes`` are parsed on the event loop."""
    from starlette.websockets import WebSocketDisconnect

    await websocket.accept()
    loop = asyncio.get_running_loop()
    send_lock = asyncio.Lock()
    tasks = set()

    async def send(kind: str, payload) -> None:
        async with send_lock:
            if kind == "text":
                await websocket.send_text(payload)
            else:
                await websocket.send_bytes(payload)

    async def answer(message: bytes) -> None:
        frame_id = None
        try:
            if len(message) <= inline_parse_bytes or raw_frame_message(message):  # cheaper here than on a thread
                frame_id, timestamp, request = parse_frame_message(message, setup, patch_size, max_pixels)
            else:
                frame_id, timestamp, request = await loop.run_in_executor(
                    parse_pool, parse_frame_message, message, setup, patch_size, max_pixels)
            status, reply = await run(request)
            if status == 200:
                await send("bytes", encode_answer(reply, frame_id, timestamp))
            else:
                await send("text", json.dumps({"id": frame_id, "error": reply.get("error", "error")}))
        except RequestError as exc:
            await send("text", json.dumps({"id": getattr(exc, "frame_id", frame_id), "error": str(exc)}))
        except BatcherClosed:  # the replica is stopping: this frame was not run
            try:
                await send("text", json.dumps({"id": frame_id, "error": "the replica is shutting down"}))
            except (WebSocketDisconnect, RuntimeError):
                pass
        except (WebSocketDisconnect, RuntimeError):  # the client left while its frame ran
            pass

    try:
        try:
            setup = parse_setup(await websocket.receive_text(), patch_size, model_template)
        except (RequestError, KeyError) as exc:
            await websocket.send_text(json.dumps({"error": first_line(exc)}))
            await websocket.close(code=1008)
            return
        await websocket.send_text(json.dumps({"classes": list(setup.prompts.classes)}))
        while True:
            message: Dict[str, Any] = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                break
            data = message.get("bytes")
            if data is None:
                await send("text", json.dumps({"id": None, "error": "frames are binary messages"}))
                continue
            if len(tasks) >= max_in_flight:
                await send("text", json.dumps({"id": None, "error": f"more than {max_in_flight} frames in flight"}))
                continue
            task = asyncio.ensure_future(answer(data))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
    except WebSocketDisconnect:
        pass
    finally:
        # Frames still running finish for the other sessions batched with them; their
        # answers have nowhere to go.
        for task in list(tasks):
            task.cancel()
