"""What one serving replica does, without Ray: parse requests, run a batch of them through
one Engine, encode the responses, and count what it saw.

``Replica.compute_batch`` groups the requests of a batch by ``batch_key`` (same kind,
prompt set, input size and resize mode) and makes one engine call per group, so
pre-processing, the image tower and the seg head run batched; JSON requests and binary ones
(several frames each) share a group. ``Replica.answer`` encodes each request's output
(labels PNG and JSON, or binary labels): in a served replica the engine thread computes
batches while the event loop encodes answers (``asgi.answering``); ``run_batch`` does both
in the calling thread. ``parse`` and ``parse_binary`` turn
decoded files into RGB arrays (the pixels ``Engine.segment`` would read), so segment groups
go through the engine's streaming path (``Engine.stream``: frames of one size per chunk,
CUDA graphs on a CUDA engine), one ``Stream`` kept per prompt set, size and resize mode; a
group holding a PIL image (a request not parsed here) goes through ``Engine.segment``. The
engine's text-embedding cache lives as long as the replica.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
import threading
import time
from collections import Counter, OrderedDict
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from ..errors import ClippyError
from ..images import load_image
from .frames import BinaryBody, FramesRequest, parse_frames, segmentations_to_binary
from .protocol import (DEFAULT_MAX_PIXELS, ClassifyRequest, RequestError, SegmentRequest,
                       classification_to_json, error_body, first_line, parse_classify, parse_segment,
                       segmentation_to_json)

Request = Union[SegmentRequest, ClassifyRequest, FramesRequest]
logger = logging.getLogger("clippy_rt.serve")
# Streams kept per replica (prompt set x size x resize); the least recently used goes first.
MAX_STREAMS = 8
# (HTTP status, JSON body or, for a binary request's success, a BinaryBody)
Reply = Tuple[int, Union[Dict[str, Any], BinaryBody]]
# Answers of at most this many label pixels are encoded on the event loop (PNG of 256 x 256
# labels: well under a millisecond); larger ones on a thread. Raw binary labels always inline.
INLINE_ANSWER_PIXELS = 256 * 256


class Computed:
    """The engine's output for one request (a Segmentation, a list of them for a
    FramesRequest, or a classification), before ``Replica.answer`` encodes it."""

    __slots__ = ("output",)

    def __init__(self, output: Any) -> None:
        self.output = output


# What ``Replica.compute_batch`` gives for one request: its output, or an error reply.
Outcome = Union[Computed, Reply]


def load_engine(options):
    """The replica's Engine for ``options`` (a ``ServeOptions``), its text cache backed by
    a file on disk unless ``options.text_cache_dir`` is False."""
    import clippy_rt
    from clippy_rt.text_cache import default_cache_dir

    cache_dir = None if options.text_cache_dir is False else (options.text_cache_dir or default_cache_dir())
    return clippy_rt.load(options.model, backend=options.backend, device=options.device,
                          precision=options.precision, text_cache_dir=cache_dir)


class Replica:
    """Wraps one Engine. Thread-safe for concurrent ``parse`` calls; ``run_batch`` is meant
    to run one batch at a time (``Batcher`` does)."""

    def __init__(self, engine, *, model: str = "", max_pixels: int = DEFAULT_MAX_PIXELS,
                 replica_id: str = "", node_id: str = "", stream_batch: int = 16) -> None:
        """``stream_batch``: the most frames one chunk of the streaming path runs at once."""
        self.engine = engine
        self.stream_batch = stream_batch
        self._streams: "OrderedDict[tuple, Any]" = OrderedDict()
        self.model = model
        self.max_pixels = max_pixels
        self.replica_id = replica_id
        self.node_id = node_id
        self.patch_size = engine.config.image.patch_size
        # Requests without a "template" get the model's, as Engine.segment does.
        self.template = engine.template
        self._lock = threading.Lock()
        self._batch_sizes: Counter = Counter()
        self._call_sizes: Counter = Counter()
        self._requests = 0
        self._failed = 0
        self._started = time.time()

    # -- requests ----------------------------------------------------------------------
    def parse(self, kind: str, body: Any) -> Request:
        """``kind`` is "segment" or "classify". Raises RequestError for a bad request. A
        segment request's image comes back as an RGB array, for the streaming path."""
        if kind == "segment":
            request = parse_segment(body, self.patch_size, self.max_pixels, model_template=self.template)
            return dataclasses.replace(request, image=_rgb_array(request.image))
        if kind == "classify":
            return parse_classify(body, self.patch_size, self.max_pixels, model_template=self.template)
        raise RequestError(f"unknown request kind {kind!r}", status=404)

    def parse_binary(self, header_length: Any, body: bytes) -> FramesRequest:
        """A binary /v1/segment request (``clippy_rt.serve.frames``), its frames as RGB arrays.
        Raises RequestError."""
        request = parse_frames(header_length, body, self.patch_size, self.max_pixels, model_template=self.template)
        if all(isinstance(image, np.ndarray) for image in request.images):
            return request
        return dataclasses.replace(request, images=tuple(_rgb_array(image) for image in request.images))

    def run_batch(self, requests: Sequence[Request]) -> List[Reply]:
        """One reply per request, in order: ``compute_batch`` then ``answer`` for each."""
        return [self.answer(request, outcome) for request, outcome in zip(requests, self.compute_batch(requests))]

    def compute_batch(self, requests: Sequence[Request]) -> List[Outcome]:
        """The engine's work for a batch, one outcome per request, in order: a ``Computed``
        (what ``answer`` encodes) or an error reply. A group whose engine call fails on bad
        input is rerun one request at a time, so one bad request fails alone. The encoding
        is left to ``answer``, so that a replica's engine thread only computes."""
        outcomes: List[Optional[Outcome]] = [None] * len(requests)
        groups: Dict[tuple, List[int]] = {}
        for index, request in enumerate(requests):
            groups.setdefault(request.batch_key, []).append(index)
        calls = []
        for indices in groups.values():
            members = [requests[i] for i in indices]
            try:
                outputs = self._split(members, self._call(members))
                calls.append(_frame_count(members))
            except (ClippyError, ValueError, TypeError) as exc:
                if len(members) == 1:
                    outcomes[indices[0]] = (400, error_body(first_line(exc)))
                    continue
                outputs = []
                for member in members:
                    try:
                        outputs.append(self._split([member], self._call([member]))[0])
                        calls.append(_frame_count([member]))
                    except (ClippyError, ValueError, TypeError) as single_exc:
                        outputs.append(RequestError(first_line(single_exc)))
            for index, output in zip(indices, outputs):
                outcomes[index] = (400, error_body(str(output))) if isinstance(output, Exception) else Computed(output)
        with self._lock:
            self._batch_sizes[len(requests)] += 1
            self._call_sizes.update(calls)
            self._requests += len(requests)
            self._failed += sum(1 for outcome in outcomes if not isinstance(outcome, Computed))
        return outcomes

    def answer(self, request: Request, outcome: Outcome) -> Reply:
        """The reply for ``request`` given its outcome from ``compute_batch`` (or a reply,
        returned as it is): a binary body for a FramesRequest, JSON otherwise. An answer
        that cannot be encoded is a 500, logged."""
        if not isinstance(outcome, Computed):
            return outcome
        try:
            if isinstance(request, FramesRequest):
                return 200, segmentations_to_binary(outcome.output, request.labels)
            if isinstance(request, SegmentRequest):
                return 200, segmentation_to_json(outcome.output, request.return_scores)
            return 200, classification_to_json(outcome.output)
        except Exception as exc:  # noqa: BLE001 - one request's answer, not the replica
            logger.exception("encoding an answer failed")
            with self._lock:
                self._failed += 1
            return 500, error_body(f"internal error: {first_line(exc)}")

    @staticmethod
    def answer_inline(request: Request, outcome: Outcome) -> bool:
        """Whether ``answer`` is cheap enough for the event loop: errors, classifications,
        raw binary labels, and other answers of at most ``INLINE_ANSWER_PIXELS`` label
        pixels in all (PNG or zlib encoding of more goes to a thread)."""
        if not isinstance(outcome, Computed):
            return True
        if isinstance(request, FramesRequest):
            if request.labels == "raw":
                return True
            return sum(int(result.labels.numel()) for result in outcome.output) <= INLINE_ANSWER_PIXELS
        if isinstance(request, SegmentRequest):
            return int(outcome.output.labels.numel()) <= INLINE_ANSWER_PIXELS
        return True

    def _call(self, members: Sequence[Request]) -> list:
        """One engine call for all the members' images; one output per image."""
        first = members[0]
        images = [image for member in members for image in _images(member)]
        if isinstance(first, (SegmentRequest, FramesRequest)):
            if all(isinstance(image, np.ndarray) for image in images):
                return self._stream(first)(images)
            return self.engine.segment(images, first.prompts, size=first.size, resize=first.resize)
        return self.engine.classify(images, first.labels, top_k=first.top_k, size=first.size,
                                    resize=first.resize)

    def _stream(self, request: FramesRequest):
        """The replica's Stream for ``request``'s prompts, size and resize mode."""
        key = request.batch_key
        stream = self._streams.pop(key, None)
        if stream is None:
            stream = self.engine.stream(request.prompts, size=request.size, resize=request.resize,
                                        batch=self.stream_batch)
        self._streams[key] = stream
        while len(self._streams) > MAX_STREAMS:
            self._streams.popitem(last=False)
        return stream

    @staticmethod
    def _split(members: Sequence[Request], outputs: list) -> list:
        """The engine's per-image outputs -> one output per member (a list for a FramesRequest)."""
        split, offset = [], 0
        for member in members:
            if isinstance(member, FramesRequest):
                split.append(outputs[offset:offset + len(member.images)])
                offset += len(member.images)
            else:
                split.append(outputs[offset])
                offset += 1
        return split

    # -- reports -----------------------------------------------------------------------
    def health(self) -> Dict[str, Any]:
        engine = self.engine
        return {"status": "ok", "model": self.model, "backend": engine.backend,
                "device": str(engine.device), "precision": engine.precision,
                "random_weights": bool(engine.random_weights)}

    def stats(self) -> Dict[str, Any]:
        """Counters since the replica started: ``batch_sizes`` maps a batch size to how many
        batches of that size arrived, ``engine_calls`` the number of frames (images) per engine call
        to how many such calls were made; ``niceness`` is the replica process's scheduling
        niceness and ``gil_switch_interval_ms`` Python's thread switch interval in it."""
        with self._lock:
            return {"replica": self.replica_id, "node_id": self.node_id,
                    "uptime_s": round(time.time() - self._started, 3),
                    "niceness": os.getpriority(os.PRIO_PROCESS, 0) if hasattr(os, "getpriority") else None,
                    "gil_switch_interval_ms": round(sys.getswitchinterval() * 1000.0, 6),
                    "requests": self._requests, "failed": self._failed,
                    "batch_sizes": {str(k): v for k, v in sorted(self._batch_sizes.items())},
                    "engine_calls": {str(k): v for k, v in sorted(self._call_sizes.items())}}



def _rgb_array(image) -> np.ndarray:
    """A decoded file (PIL image, any mode) -> uint8 RGB [H, W, 3], the pixels
    ``Engine.segment`` would read from it; arrays as they are. Files decoded by the
    protocol are RGB already: no second conversion."""
    if isinstance(image, np.ndarray):
        return image
    return np.asarray(image if image.mode == "RGB" else load_image(image))


def _images(request: Request) -> tuple:
    return request.images if isinstance(request, FramesRequest) else (request.image,)


def request_frames(request: Request) -> int:
    """Frames (images) in one parsed request: what ``--max-batch`` counts."""
    return len(_images(request))


def _frame_count(members: Sequence[Request]) -> int:
    return sum(request_frames(member) for member in members)
