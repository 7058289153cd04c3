"""Frames in, segmentations out: the processing shared by the bag tool and the ROS 2 node.

``FrameProcessor`` turns RGB frames into ``Segmentation``s with a vocabulary that may be
changed between frames. It runs the engine's stream path when the engine has one
(``engine.stream``) and ``engine.segment`` on the batch otherwise; nothing here
re-implements pre- or post-processing.

``SegmentationLoop`` is the node's loop without ROS: ``submit`` (called by the subscription
callback) keeps only the latest frame, a worker takes it, converts it, segments it and
hands the output messages to ``publish``. A frame that cannot be converted or segmented
is skipped with one log line; the loop carries on. The clock is injectable, so the loop
is tested without ROS and without sleeping.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from ..errors import InputError
from ..images import WHOLE_FRAME_MODES
from ..prompts import PromptSet, PromptsLike, build_prompt_set, parse_cli_prompts, resolve_template
from . import messages
from ..validate import check_positive_int


_log = logging.getLogger("clippy_rt.robotics")


def parse_prompts(prompts: Union[str, PromptsLike], template: Optional[str] = None) -> PromptSet:
    """A CLI / ROS parameter string (``"background|sky,cat,dog"``), a list, a mapping or a
    PromptSet -> PromptSet, with ``template`` applied to every prompt."""
    if isinstance(prompts, str):
        parsed = parse_cli_prompts(prompts)
        if template is None:
            return parsed
        prompts = {name: [p for p, owner in zip(parsed.prompts, parsed.prompt_class) if owner == index]
                   for index, name in enumerate(parsed.classes)}
    return build_prompt_set(prompts, template)


class FrameProcessor:
    """RGB uint8 frames [H, W, 3] -> one ``Segmentation`` per frame, labels at the frame's size.

    Prompts are filled into ``template``, or the model's template when it is None
    (``"{}"``: verbatim), as ``Engine.segment`` does.

    Thread-safe: ``set_prompts`` may be called while another thread is in ``process``;
    a frame is segmented with the vocabulary current when its call started.
    """

    def __init__(self, engine, prompts: Union[str, PromptsLike], *, size=None, resize: str = "squash",
                 template: Optional[str] = None, batch: int = 1) -> None:
        if resize not in WHOLE_FRAME_MODES:
            raise InputError(f"resize must be one of {', '.join(WHOLE_FRAME_MODES)} (labels must cover the whole "
                             f"frame), got {resize!r}")
        check_positive_int("batch", batch)
        self.engine = engine
        self.size = size
        self.resize = resize
        # None: the model's own template (as Engine.segment); "{}": the prompts verbatim.
        self.template = resolve_template(template, engine.template)
        self.batch = batch
        self._lock = threading.Lock()
        self._stream = None
        self._identity: Optional[str] = None
        self.prompt_set: PromptSet = parse_prompts(prompts, self.template)
        self.engine.encode_text(list(self.prompt_set.prompts))  # fail early; warms the text cache
        self._stream = self._open_stream(self.prompt_set)

    def _open_stream(self, prompt_set: PromptSet):
        """The engine's stream path, where the engine has one."""
        opener = getattr(self.engine, "stream", None)
        if opener is None:
            return None
        return opener(prompt_set, size=self.size, resize=self.resize, batch=self.batch, bgr=False)

    def provenance(self) -> Dict[str, Any]:
        """What produces the labels: model identity (sha256), backend, precision, prompts per
        class (template applied), template, size and resize."""
        if self._identity is None:
            self._identity = self.engine.identity()
        prompt_set = self.prompt_set
        prompts = {name: [p for p, owner in zip(prompt_set.prompts, prompt_set.prompt_class) if owner == index]
                   for index, name in enumerate(prompt_set.classes)}
        size = self.size
        return {"model": self._identity, "backend": str(self.engine.backend),
                "precision": str(self.engine.precision), "prompts": prompts, "template": self.template,
                "size": list(size) if isinstance(size, tuple) else size, "resize": self.resize}

    @property
    def classes(self) -> Tuple[str, ...]:
        return self.prompt_set.classes

    def set_prompts(self, prompts: Union[str, PromptsLike]) -> PromptSet:
        """Change the vocabulary for the following frames; a bad one raises ``InputError``
        and leaves the current vocabulary in place."""
        return self.use_prompts(self.prepare_prompts(prompts))

    def prepare_prompts(self, prompts: Union[str, PromptsLike]) -> PromptSet:
        """Parse and encode a vocabulary (slow: the text tower runs) without using it yet."""
        prompt_set = parse_prompts(prompts, self.template)
        self.engine.encode_text(list(prompt_set.prompts))
        return prompt_set

    def use_prompts(self, prompt_set: PromptSet) -> PromptSet:
        """Segment the following frames with ``prompt_set`` (from ``prepare_prompts``)."""
        with self._lock:
            self.prompt_set = prompt_set
            if self._stream is not None:
                self._stream.set_prompts(prompt_set)
        return prompt_set

    def process(self, frames: Sequence[np.ndarray]):
        """A list of frames -> a list of ``Segmentation`` (same order)."""
        frames = list(frames)
        with self._lock:
            prompt_set, stream = self.prompt_set, self._stream
        if stream is not None:
            return list(stream(frames))
        return self.engine.segment(frames, prompt_set, size=self.size, resize=self.resize)


@dataclass
class FrameOutput:
    """What the node publishes for one frame: message fields per output topic."""

    labels: Dict[str, Any]
    classes: Dict[str, Any]
    overlay: Optional[Dict[str, Any]]
    stamp_ns: int
    latency_ms: float                 # from the frame's arrival to its outputs being ready
    processing_ms: float              # conversion + segmentation
    dropped: int                      # frames replaced by newer ones since the previous output
    timings_ms: Dict[str, float] = field(default_factory=dict)


def outputs_for(frame: np.ndarray, segmentation, header: Any, overlay: bool,
                provenance: Optional[Dict[str, Any]] = None) -> Tuple[dict, dict, Optional[dict]]:
    """(labels, classes, overlay or None) message fields for one segmented frame; the classes
    message carries ``provenance``."""
    classes = segmentation.prompts
    labels = messages.labels_message(segmentation.labels, header, len(classes))
    tinted = messages.overlay_message(frame, segmentation.labels, classes, header) if overlay else None
    return labels, messages.classes_message(classes, provenance), tinted


class LatestSlot:
    """A mailbox of one: ``put`` replaces what is there (counting it as dropped), ``take``
    waits for an item. Never a growing queue."""

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self._item = None
        self._full = False
        self._dropped = 0
        self._closed = False

    def put(self, item) -> None:
        with self._condition:
            if self._full:
                self._dropped += 1
            self._item, self._full = item, True
            self._condition.notify()

    def take(self, timeout: Optional[float] = None):
        """(item, dropped since the last take), or None after ``timeout`` or ``close``."""
        with self._condition:
            if not self._full and not self._closed:
                self._condition.wait(timeout)
            if not self._full:
                return None
            item, dropped = self._item, self._dropped
            self._item, self._full, self._dropped = None, False, 0
            return item, dropped

    def close(self) -> None:
        with self._condition:
            self._closed = True
            self._condition.notify_all()


class SegmentationLoop:
    """Latest-frame processing: ``submit(message)`` from any thread, ``step()`` or ``start()``
    to process, ``publish(FrameOutput)`` with the results.

    ``clock`` returns seconds (``time.monotonic`` by default); ``log`` takes one line per
    skipped frame (``logging`` by default).
    """

    def __init__(self, processor: FrameProcessor, publish: Callable[[FrameOutput], None], *,
                 overlay: bool = False, clock: Callable[[], float] = time.monotonic,
                 log: Optional[Callable[[str], None]] = None) -> None:
        self.processor = processor
        self.publish = publish
        self.overlay = overlay
        self.clock = clock
        self.log = log or _log.warning
        self.slot = LatestSlot()
        self.processed = 0
        self.skipped = 0
        self.dropped = 0
        self._thread: Optional[threading.Thread] = None
        self._stop = threading.Event()
        self._publishing = threading.Lock()
        self._closed = False
        self.last_output: Optional[FrameOutput] = None
        # () -> what the classes message records beside the class names (None: nothing)
        self.provenance: Optional[Callable[[], Dict[str, Any]]] = None

    def submit(self, message: Any) -> None:
        """Offer a new frame (an Image or CompressedImage message); replaces an unprocessed one."""
        self.slot.put((message, self.clock()))

    def set_prompts(self, prompts) -> PromptSet:
        return self.processor.set_prompts(prompts)

    def step(self, timeout: Optional[float] = None) -> Optional[FrameOutput]:
        """Process the latest frame, if one arrives within ``timeout``; returns what was
        published, or None (no frame, or the frame was skipped)."""
        taken = self.slot.take(timeout)
        if taken is None:
            return None
        (message, arrived), dropped = taken
        self.dropped += dropped
        start = self.clock()
        try:
            header = message.header
            frame = messages.message_to_frame(message)
            segmentation = self.processor.process([frame])[0]
            origin = self.provenance() if self.provenance is not None else None
            labels, classes, tinted = outputs_for(frame, segmentation, header, self.overlay, origin)
        except Exception as exc:  # noqa: BLE001 - a bad frame must not stop the node
            self.skipped += 1
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            self.log(f"skipped frame {_describe(message)}: {reason}")
            return None
        done = self.clock()
        output = FrameOutput(labels=labels, classes=classes, overlay=tinted, stamp_ns=messages.stamp_ns(header),
                             latency_ms=(done - arrived) * 1000.0, processing_ms=(done - start) * 1000.0,
                             dropped=dropped, timings_ms=dict(segmentation.timings_ms))
        with self._publishing:
            if self._closed:
                return None
            self.processed += 1
            self.last_output = output
            self.publish(output)
        return output

    def start(self) -> threading.Thread:
        """Run ``step`` on a daemon thread until ``stop()``."""
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="clippy-rt-loop", daemon=True)
        self._thread.start()
        return self._thread

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.step(timeout=0.1)
            except Exception as exc:  # noqa: BLE001 - publishing failed; keep serving
                self.log(f"publishing failed: {exc}")

    def stop(self, timeout: float = 5.0) -> bool:
        """Stop the worker. Once this returns nothing more is published, even if a frame is
        still being segmented (its result is dropped); True if the worker has ended."""
        self._stop.set()
        self.slot.close()
        with self._publishing:
            self._closed = True
        if self._thread is not None:
            self._thread.join(timeout)
            return not self._thread.is_alive()
        return True


def _describe(message: Any) -> str:
    try:
        return f"stamp {messages.stamp_ns(message.header)} ns"
    except Exception:  # noqa: BLE001
        return "(no header)"


def diagnostics_values(output: FrameOutput, loop: SegmentationLoop) -> List[Tuple[str, str]]:
    """Key-value pairs for a ``diagnostic_msgs/msg/DiagnosticStatus``."""
    values = [("latency_ms", f"{output.latency_ms:.3f}"), ("processing_ms", f"{output.processing_ms:.3f}"),
              ("dropped_frames", str(loop.dropped)), ("skipped_frames", str(loop.skipped)),
              ("processed_frames", str(loop.processed))]
    values += [(f"{name}_ms", f"{value:.3f}") for name, value in output.timings_ms.items()]
    return values
