"""``Client``: the HTTP client of ``clippy-rt serve``, returning the local Engine's types.

    from clippy_rt.serve.client import Client

    client = Client("http://127.0.0.1:8000")
    seg = client.segment("scene.png", ["circle", "square", "grass"])   # -> Segmentation
    top = client.classify("scene.png", ["circle", "square"], top_k=2)   # -> [(label, p), ...]

Each thread gets its own keep-alive connection, so one Client may be shared by threads.
Connection failures (refused, reset, timed out) and 503 answers are retried ``retries``
times with exponential back-off; a 4xx answer raises ``RequestError`` (an ``InputError``)
with the server's one-line message, a 5xx answer or an unreachable server ``ServerError``.
"""

from __future__ import annotations

import base64
import http.client
import json
import threading
import time
from typing import Any, Dict, List, Optional, Tuple, Union
from urllib.parse import urlsplit

from ..errors import InputError, ServerError
from ..prompts import PromptSet
from ..results import Segmentation
from .protocol import (RequestError, classification_from_json, encode_image_file,
                             segmentation_from_json)

__all__ = ["Client"]


class Client:
    """``url``: the server's base URL (http or https); ``timeout``: seconds per attempt;
    ``retries``: extra attempts after a connection failure or a 503; ``backoff_s``: the
    first pause between attempts (doubling each time)."""

    def __init__(self, url: str = "http://127.0.0.1:8000", *, timeout: float = 60.0, retries: int = 3,
                 backoff_s: float = 0.25) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise InputError(f"url must look like http://HOST:PORT, got {url!r}")
        if not timeout > 0:
            raise InputError(f"timeout must be positive, got {timeout!r}")
        if not isinstance(retries, int) or retries < 0:
            raise InputError(f"retries must be a non-negative integer, got {retries!r}")
        self.url = url.rstrip("/")
        self.timeout = float(timeout)
        self.retries = retries
        self.backoff_s = float(backoff_s)
        self._scheme = parts.scheme
        self._host = parts.hostname
        self._port = parts.port or (443 if parts.scheme == "https" else 80)
        self._prefix = parts.path.rstrip("/")
        self._local = threading.local()

    # -- API ---------------------------------------------------------------------------
    def segment(self, image, prompts, size=None, template: Optional[str] = None, resize: str = "squash",
                scores: bool = False) -> Union[Segmentation, List[Segmentation]]:
        """Like ``Engine.segment``: one image -> Segmentation, a list -> a list of them (sent
        one after another). ``image``: a path, PNG/JPEG bytes, a PIL image or a uint8 array.
        ``scores=False`` leaves ``Segmentation.scores`` empty (shape [0]), which keeps
        responses small; ``scores=True`` fetches them."""
        if isinstance(image, (list, tuple)):
            return [self.segment(item, prompts, size, template, resize, scores) for item in image]
        body: Dict[str, Any] = {"image": _b64(image), "prompts": _prompts_json(prompts), "resize": resize}
        if size is not None:
            body["size"] = list(size) if isinstance(size, (tuple, list)) else size
        if template is not None:
            body["template"] = template
        if scores:
            body["return_scores"] = True
        return segmentation_from_json(self._request("POST", "/v1/segment", body))

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
        return f"Client({self.url!r}, timeout={self.timeout:g}, retries={self.retries})"

    # -- transport ---------------------------------------------------------------------
    def _connection(self) -> http.client.HTTPConnection:
        connection = getattr(self._local, "connection", None)
        if connection is None:
            kind = http.client.HTTPSConnection if self._scheme == "https" else http.client.HTTPConnection
            connection = kind(self._host, self._port, timeout=self.timeout)
            self._local.connection = connection
        return connection

    def _request(self, method: str, path: str, body: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
        payload = json.dumps(body).encode("utf-8") if body is not None else None
        headers = {"Content-Type": "application/json"} if payload is not None else {}
        failure = ""
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.backoff_s * 2 ** (attempt - 1))
            try:
                connection = self._connection()
                connection.request(method, self._prefix + path, body=payload, headers=headers)
                response = connection.getresponse()
                status, data = response.status, response.read()
            except (OSError, http.client.HTTPException) as exc:
                # Refused, reset, timed out, or a keep-alive connection the server closed.
                self.close()
                failure = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
                continue
            if status == 503:
                failure = "503 " + _message(data)
                continue
            if status >= 400:
                if status < 500:
                    raise RequestError(f"server refused the request ({status}): {_message(data)}", status=status)
                raise ServerError(f"server error {status} on {method} {path}: {_message(data)}")
            try:
                return json.loads(data)
            except ValueError:
                raise ServerError(f"{method} {path}: the server's answer is not JSON") from None
        raise ServerError(f"{method} {self.url}{path} failed after {self.retries + 1} attempt(s): {failure}")


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
