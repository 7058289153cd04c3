"""``Client``: the HTTP client of ``clippy-rt serve``, returning the local Engine's types.

    from clippy_rt.serve.client import Client

    client = Client("http://127.0.0.1:8000")
    seg = client.segment("scene.png", ["circle", "square", "grass"])   # -> Segmentation
    segs = client.segment([frame0, frame1], ["circle", "square"])      # one request, two frames
    top = client.classify("scene.png", ["circle", "square"], top_k=2)   # -> [(label, p), ...]

``segment`` speaks the binary frame protocol (``clippy_rt.serve.frames``: file bytes or raw
RGB frames in, raw uint8 label maps out) unless ``protocol="json"``, or unless scores are
asked for (the JSON protocol carries them). Each thread gets its own keep-alive connection,
so one Client may be shared by threads; given several URLs (one per replica), threads are
spread over them.
Connection failures (refused, reset, timed out) and 503 answers are retried ``retries``
times with exponential back-off; a 4xx answer raises ``RequestError`` (an ``InputError``)
with the server's one-line message, a 5xx answer or an unreachable server ``ServerError``.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import itertools
import json
import threading
import time
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union
from urllib.parse import urlsplit

from ..errors import InputError, ServerError
from ..prompts import PromptSet
from ..results import Segmentation
from .frames import (HEADER_LENGTH, LABEL_ENCODINGS, MAX_FRAMES, REQUEST_TYPE, RESPONSE_TYPE, encode_frames,
                     frame_of, segmentations_from_binary)
from .protocol import RequestError, classification_from_json, encode_image_file, segmentation_from_json
from .session import LENGTH

__all__ = ["Client", "Session", "SessionAnswer"]
PROTOCOLS = ("binary", "json")


class Client:
    """``url``: the server's base URL (http or https), or a list of them (one per replica:
    each thread sticks to one, and moves on to the next when its connection fails);
    ``timeout``: seconds per attempt; ``retries``: extra attempts after a connection failure
    or a 503; ``backoff_s``: the first pause between attempts (doubling each time);
    ``protocol``: "binary" or "json" for ``segment``; ``labels``: "raw" or "zlib" (level 1)
    label maps in binary answers."""

    def __init__(self, url: Union[str, Sequence[str]] = "http://127.0.0.1:8000", *, timeout: float = 60.0,
                 retries: int = 3, backoff_s: float = 0.25, protocol: str = "binary", labels: str = "raw") -> None:
        urls = [url] if isinstance(url, str) else list(url)
        if not urls:
            raise InputError("url: give at least one server URL")
        targets = []
        for item in urls:
            parts = urlsplit(item) if isinstance(item, str) else None
            if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
                raise InputError(f"url must look like http://HOST:PORT, got {item!r}")
            targets.append((parts.scheme, parts.hostname, parts.port or (443 if parts.scheme == "https" else 80),
                            parts.path.rstrip("/")))
        if not timeout > 0:
            raise InputError(f"timeout must be positive, got {timeout!r}")
        if not isinstance(retries, int) or retries < 0:
            raise InputError(f"retries must be a non-negative integer, got {retries!r}")
        if protocol not in PROTOCOLS:
            raise InputError(f"protocol must be one of {', '.join(PROTOCOLS)}, got {protocol!r}")
        if labels not in LABEL_ENCODINGS:
            raise InputError(f"labels must be one of {', '.join(LABEL_ENCODINGS)}, got {labels!r}")
        self.urls = [item.rstrip("/") for item in urls]
        self.url = self.urls[0]
        self.timeout = float(timeout)
        self.retries = retries
        self.backoff_s = float(backoff_s)
        self.protocol = protocol
        self.labels = labels
        self._targets = targets
        self._turn = itertools.count()
        self._local = threading.local()

    # -- API ---------------------------------------------------------------------------
    def segment(self, image, prompts, size=None, template: Optional[str] = None, resize: str = "squash",
                scores: bool = False) -> Union[Segmentation, List[Segmentation]]:
        """Like ``Engine.segment``: one image -> Segmentation, a list -> a list of them (in one
        binary request, up to 256 frames per request; one JSON request each with
        ``protocol="json"``). ``image``: a path, PNG/JPEG bytes, a PIL image or a uint8 RGB
        array (sent raw). ``template``: None fills the prompts into the served model's
        template, ``"{}"`` sends them verbatim. ``scores=False`` leaves
        ``Segmentation.scores`` empty (shape [0]);
        ``scores=True`` fetches them, over JSON."""
        several = isinstance(image, (list, tuple))
        images = list(image) if several else [image]
        if self.protocol == "binary" and not scores:
            results: List[Segmentation] = []
            for start in range(0, len(images), MAX_FRAMES):
                frames = [frame_of(item) for item in images[start:start + MAX_FRAMES]]
                header_length, payload = encode_frames(frames, _prompts_json(prompts), size=size, resize=resize,
                                                       template=template, labels=self.labels)
                headers = {"Content-Type": REQUEST_TYPE, HEADER_LENGTH: str(header_length)}
                answer_headers, data = self._exchange("POST", "/v1/segment", payload, headers)
                if answer_headers.get("content-type", "").split(";")[0] != RESPONSE_TYPE:
                    raise ServerError("POST /v1/segment: the server did not answer binary frames")
                results.extend(segmentations_from_binary(answer_headers.get(HEADER_LENGTH.lower()), data))
            return results if several else results[0]
        results = []
        for item in images:
            body: Dict[str, Any] = {"image": _b64(item), "prompts": _prompts_json(prompts), "resize": resize}
            if size is not None:
                body["size"] = list(size) if isinstance(size, (tuple, list)) else size
            if template is not None:
                body["template"] = template
            if scores:
                body["return_scores"] = True
            results.append(segmentation_from_json(self._request("POST", "/v1/segment", body)))
        return results if several else results[0]

    def classify(self, image, labels, top_k: int = 5, template: Optional[str] = None, size=None,
                 resize: str = "crop") -> Union[List[Tuple[str, float]], List[List[Tuple[str, float]]]]:
        """Like ``Engine.classify``: one image -> [(label, probability), ...], best first; a
        list -> one such list per image."""
        if isinstance(image, (list, tuple)):
            return [self.classify(item, labels, top_k, template, size, resize) for item in image]
        body: Dict[str, Any] = {"image": _b64(image), "labels": _prompts_json(labels), "top_k": top_k,
                                "resize": resize}
        if size is not None:
            body["size"] = list(size) if isinstance(size, (tuple, list)) else size
        if template is not None:
            body["template"] = template
        return classification_from_json(self._request("POST", "/v1/classify", body))

    def stream(self, prompts, size=None, template: Optional[str] = None, resize: str = "squash",
               in_flight: int = 2, max_pending: int = 1) -> "Session":
        """A ``Session`` for a camera loop over one WebSocket: the prompts are sent once, then
        frames, up to ``in_flight`` at a time; at most ``max_pending`` more wait, the oldest
        dropped first when more arrive."""
        return Session(self, prompts, size=size, template=template, resize=resize, in_flight=in_flight,
                       max_pending=max_pending)

    def health(self) -> Dict[str, Any]:
        """The server's /v1/health answer: status, model, backend, device, precision, random_weights."""
        return self._request("GET", "/v1/health")

    def stats(self) -> Dict[str, Any]:
        """/v1/stats of the replica that answers: request and batch-size counters."""
        return self._request("GET", "/v1/stats")

    def close(self) -> None:
        """Close this thread's connection (others close when their threads end)."""
        connection = getattr(self._local, "connection", None)
        if connection is not None:
            connection.close()
            self._local.connection = None

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        where = self.url if len(self.urls) == 1 else self.urls
        return f"Client({where!r}, timeout={self.timeout:g}, retries={self.retries}, protocol={self.protocol!r})"

    # -- transport ---------------------------------------------------------------------
    def _connection(self) -> Tuple[http.client.HTTPConnection, str]:
        """This thread's connection and its URL path prefix."""
        connection = getattr(self._local, "connection", None)
        if connection is None:
            if getattr(self._local, "target", None) is None:
                self._local.target = next(self._turn) % len(self._targets)
            scheme, host, port, _ = self._targets[self._local.target]
            kind = http.client.HTTPSConnection if scheme == "https" else http.client.HTTPConnection
            connection = kind(host, port, timeout=self.timeout)
            self._local.connection = connection
        return connection, self._targets[self._local.target][3]

    def _request(self, method: str, path: str, body: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
        payload = json.dumps(body).encode("utf-8") if body is not None else None
        headers = {"Content-Type": "application/json"} if payload is not None else {}
        _, data = self._exchange(method, path, payload, headers)
        try:
            return json.loads(data)
        except ValueError:
            raise ServerError(f"{method} {path}: the server's answer is not JSON") from None

    def _exchange(self, method: str, path: str, payload: Optional[bytes],
                  headers: Dict[str, str]) -> Tuple[Dict[str, str], bytes]:
        """(answer headers with lower-case names, answer body) of a 2xx answer."""
        failure = ""
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.backoff_s * 2 ** (attempt - 1))
            try:
                connection, prefix = self._connection()
                connection.request(method, prefix + path, body=payload, headers=headers)
                response = connection.getresponse()
                status, data = response.status, response.read()
                answer_headers = {name.lower(): value for name, value in response.getheaders()}
            except (OSError, http.client.HTTPException) as exc:
                # Refused, reset, timed out, or a keep-alive connection the server closed:
                # the next attempt goes to the next replica.
                self.close()
                self._local.target = next(self._turn) % len(self._targets)
                failure = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
                continue
            if status == 503:
                failure = "503 " + _message(data)
                continue
            if status >= 400:
                if status < 500:
                    raise RequestError(f"server refused the request ({status}): {_message(data)}", status=status)
                raise ServerError(f"server error {status} on {method} {path}: {_message(data)}")
            return answer_headers, data
        raise ServerError(f"{method} {self.url}{path} failed after {self.retries + 1} attempt(s): {failure}")


class Session:
    """One camera's frames over one WebSocket (``/v1/session``, see
    ``clippy_rt.serve.session``), answered in the order they were sent.

        with client.stream(["person", "car", "road"], in_flight=2) as session:
            for frame_id, frame in enumerate(camera):
                session.submit(frame, frame_id)
                for answer in session.answers():        # what is ready, without waiting
                    show(answer.frame_id, answer.segmentation)

    The prompts travel once, when the session opens; the replica batches frames of all
    sessions with the same prompts together. ``submit`` never blocks on the server: a frame
    goes out at once while fewer than ``in_flight`` are out, otherwise it waits, and when
    more than ``max_pending`` frames wait the oldest is dropped (counted in ``dropped``), so
    a slow link or server skips stale frames instead of falling behind. Each answer carries
    the frame's id and timestamp; a frame the server refused carries the error. Needs the
    ``websockets`` package (installed with the ``serve`` extra).
    """

    def __init__(self, client: "Client", prompts, *, size=None, template=None, resize: str = "squash",
                 in_flight: int = 2, max_pending: int = 1) -> None:
        if not isinstance(in_flight, int) or isinstance(in_flight, bool) or in_flight < 1:
            raise InputError(f"in_flight must be a positive integer, got {in_flight!r}")
        if not isinstance(max_pending, int) or isinstance(max_pending, bool) or max_pending < 0:
            raise InputError(f"max_pending must be a non-negative integer, got {max_pending!r}")
        try:
            from websockets.sync.client import connect
        except ImportError as exc:
            raise InputError(f"sessions need the websockets package ({exc}); "
                             "install it with: pip install 'clippy-rt[serve]'") from None
        from .session import PATH

        scheme, host, port, prefix = client._targets[next(client._turn) % len(client._targets)]
        url = f"{'wss' if scheme == 'https' else 'ws'}://{host}:{port}{prefix}{PATH}"
        setup: Dict[str, Any] = {"prompts": _prompts_json(prompts), "resize": resize, "labels": client.labels}
        if size is not None:
            setup["size"] = list(size) if isinstance(size, (tuple, list)) else size
        if template is not None:
            setup["template"] = template
        self._connection = contextlib.ExitStack()
        try:
            self._socket = self._connection.enter_context(
                connect(url, open_timeout=client.timeout, close_timeout=client.timeout, max_size=None,
                        # No per-message deflate: the replica would compress every answer and
                        # inflate every frame (labels="zlib" compresses answers where the link
                        # is slow). No proxy, as the HTTP requests use none.
                        compression=None, proxy=None))
            self._socket.send(json.dumps(setup))
            ready = json.loads(self._socket.recv(timeout=client.timeout))
        except Exception as exc:  # refused, timed out, or a failed WebSocket handshake
            self._connection.close()
            raise ServerError(f"cannot open a session at {url}: {type(exc).__name__}: {exc}") from None
        if "error" in ready:
            self._connection.close()
            raise RequestError(f"server refused the session: {ready['error']}", status=400)
        self.classes = tuple(ready["classes"])
        self._in_flight = in_flight
        self._max_pending = max_pending
        self._condition = threading.Condition()
        self._send_lock = threading.Lock()
        self._pending: List[Tuple[int, Any, Any, float]] = []
        self._out: Dict[int, Tuple[Any, float]] = {}
        self._done: Dict[int, SessionAnswer] = {}
        self._next_sequence = 0
        self._next_answer = 0
        self._closed = False
        self.sent = 0
        self.dropped = 0
        self._receiver = threading.Thread(target=self._receive, daemon=True)
        self._receiver.start()

    def submit(self, frame, frame_id: Any = None, timestamp: Optional[float] = None) -> None:
        """Send ``frame`` (as ``Client.segment`` takes it) or queue it; ``frame_id`` and
        ``timestamp`` (default: now) come back with its answer."""
        encoded = frame_of(frame)
        with self._condition:
            if self._closed:
                raise InputError("the session is closed")
            self._pending.append((self._next_sequence, encoded, frame_id,
                                  time.time() if timestamp is None else timestamp))
            self._next_sequence += 1
        self._pump()
        with self._condition:
            while len(self._pending) > self._max_pending:
                sequence, _, dropped_id, dropped_at = self._pending.pop(0)
                self._done[sequence] = SessionAnswer(dropped_id, dropped_at, None, dropped=True)
                self.dropped += 1
            self._condition.notify_all()

    def answers(self, wait: bool = False) -> List["SessionAnswer"]:
        """The answers ready now, in the order their frames were submitted (dropped frames
        left out); with ``wait=True``, first wait until every submitted frame is answered."""
        ready = []
        with self._condition:
            if wait:
                self._condition.wait_for(lambda: all(sequence in self._done for sequence in
                                                     range(self._next_answer, self._next_sequence)))
            while self._next_answer in self._done:
                answer = self._done.pop(self._next_answer)
                self._next_answer += 1
                if not answer.dropped:
                    ready.append(answer)
        return ready

    def close(self) -> List["SessionAnswer"]:
        """Wait for the frames already sent or queued, close the connection, and return
        their answers."""
        remaining = [] if self._closed else self.answers(wait=True)
        with self._condition:
            self._closed = True
        self._connection.close()
        self._receiver.join()
        return remaining

    def __enter__(self) -> "Session":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _pump(self) -> None:
        """Send waiting frames while fewer than ``in_flight`` are out."""
        while True:
            with self._condition:
                if not self._pending or len(self._out) >= self._in_flight:
                    return
                sequence, (kind, data, (height, width)), frame_id, timestamp = self._pending.pop(0)
                self._out[sequence] = (frame_id, timestamp)
                self.sent += 1
            header: Dict[str, Any] = {"id": sequence, "format": kind, "bytes": len(data)}
            if kind == "raw":
                header.update(height=height, width=width)
            head = json.dumps(header).encode("utf-8")
            try:
                with self._send_lock:
                    self._socket.send(LENGTH.pack(len(head)) + head + data)
            except OSError:
                self._fail_out("the connection closed")
                return
            except Exception as exc:  # the websockets library's ConnectionClosed
                self._fail_out(f"the connection closed: {exc}")
                return

    def _receive(self) -> None:
        while True:
            try:
                message = self._socket.recv()
            except Exception as exc:  # closed by us (close) or by the server
                self._fail_out(f"the connection closed: {exc}")
                return
            if isinstance(message, str):
                body = json.loads(message)
                sequence, error = body.get("id"), RequestError(f"server refused the frame: {body.get('error')}")
                segmentation = None
            else:
                (length,) = LENGTH.unpack_from(message)
                sequence = json.loads(message[LENGTH.size:LENGTH.size + length])["id"]
                segmentation, error = segmentations_from_binary(length, message[LENGTH.size:])[0], None
            with self._condition:
                if sequence not in self._out:
                    continue
                frame_id, timestamp = self._out.pop(sequence)
                self._done[sequence] = SessionAnswer(frame_id, timestamp, segmentation, error=error)
                self._condition.notify_all()
            self._pump()

    def _fail_out(self, reason: str) -> None:
        """Answer every frame out or waiting with ServerError(reason)."""
        with self._condition:
            for sequence, (frame_id, timestamp) in list(self._out.items()):
                self._done[sequence] = SessionAnswer(frame_id, timestamp, None, error=ServerError(reason))
            self._out.clear()
            for sequence, _, frame_id, timestamp in self._pending:
                self._done[sequence] = SessionAnswer(frame_id, timestamp, None, error=ServerError(reason))
            self._pending.clear()
            self._condition.notify_all()


@dataclass
class SessionAnswer:
    """One frame's answer: its id and timestamp as submitted, the Segmentation (None when
    ``error`` holds the server's refusal or ``dropped`` is true)."""

    frame_id: Any
    timestamp: float
    segmentation: Optional[Segmentation]
    error: Optional[Exception] = None
    dropped: bool = False


def _b64(image) -> str:
    return base64.b64encode(encode_image_file(image)).decode("ascii")


def _prompts_json(prompts) -> Union[List[str], Dict[str, List[str]]]:
    if isinstance(prompts, PromptSet):
        return {name: [text for text, owner in zip(prompts.prompts, prompts.prompt_class) if owner == index]
                for index, name in enumerate(prompts.classes)}
    if isinstance(prompts, dict):
        return {name: [value] if isinstance(value, str) else list(value) for name, value in prompts.items()}
    if isinstance(prompts, str):
        raise InputError("prompts must be a list of strings or a {class: [prompts]} mapping, got one string; "
                         "wrap it in a list")
    return list(prompts)


def _message(data: bytes) -> str:
    try:
        return str(json.loads(data)["error"])
    except (ValueError, KeyError, TypeError):
        text = data.decode("utf-8", "replace").strip()
        return text.splitlines()[0][:200] if text else "(empty answer)"
