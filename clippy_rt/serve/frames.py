"""The binary frame protocol: several frames in one request, raw label maps back. Beside the
JSON messages of ``protocol`` (which stay for curl); needs no Ray.

Modelled on the binary-data extension of Triton Inference Server's HTTP protocol: a body is
a JSON header followed by the binary payload, and the HTTP header ``Clippy-Header-Length``
gives the JSON header's length in bytes. ``POST /v1/segment`` with ``Content-Type:
application/x-clippy-frames``::

    {"prompts": [...] | {class: [...]}, "template": ..., "size": ..., "resize": "squash",
     "labels": "raw" | "zlib",
     "frames": [{"format": "jpeg" | "png", "bytes": N}
                | {"format": "raw", "bytes": H*W*3, "height": H, "width": W}, ...]}
    <frame 0 bytes><frame 1 bytes>...        (raw: uint8 RGB, row-major H x W x 3)

answered ``200`` with ``Content-Type: application/x-clippy-labels``::

    {"classes": [...], "frames": [{"height": H, "width": W, "dtype": "uint8" | "uint16",
                                  "encoding": "raw" | "zlib", "bytes": N, "crop_box": [...] | null,
                                  "timings_ms": {...}}, ...]}
    <labels 0><labels 1>...                  (row-major H x W, little-endian; zlib level 1)

Labels are uint8 up to 255 classes (as ``Segmentation.labels``), uint16 beyond. Bad input
is answered as in the JSON protocol: a 4xx status and ``{"error": "<one line>"}``.
"""

from __future__ import annotations

import io
import json
import zlib
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image

from ..errors import InputError
from ..images import load_image
from ..prompts import PromptSet
from ..results import Segmentation, class_label_dtype
from .protocol import (DEFAULT_MAX_PIXELS, RequestError, Size, _check_image_size, _object, _prompt_set, _resize,
                       _size, answer_classes, answer_crop_box, answer_timings, check_answer_labels, decode_image_file,
                       first_line)

REQUEST_TYPE = "application/x-clippy-frames"
RESPONSE_TYPE = "application/x-clippy-labels"
HEADER_LENGTH = "Clippy-Header-Length"
# Frames in one request: enough for a batch from several cameras, bounded for memory.
MAX_FRAMES = 256
LABEL_ENCODINGS = ("raw", "zlib")
FRAME_FORMATS = ("jpeg", "png", "raw")


@dataclass(frozen=True)
class FramesRequest:
    """``images``: PIL images (decoded files) or uint8 [H, W, 3] arrays (raw frames)."""

    images: Tuple[Any, ...]
    prompts: PromptSet
    size: Size
    resize: str
    labels: str

    @property
    def batch_key(self) -> tuple:
        """Equal to a JSON ``SegmentRequest``'s key for the same prompts, size and resize:
        both kinds share one ``Engine.segment`` call."""
        return ("segment", self.prompts, self.size, self.resize)


@dataclass(frozen=True)
class BinaryBody:
    """A binary answer: ``data`` starts with a JSON header of ``header_length`` bytes."""

    header_length: int
    data: bytes


# ---------------------------------------------------------------------------------------
# Requests


def encode_frames(frames: Sequence[Tuple[str, bytes, Tuple[int, int]]], prompts, *, size: Size = None,
                  resize: str = "squash", template=None, labels: str = "raw") -> Tuple[int, bytes]:
    """``frames``: (format, bytes, (height, width)) triples (the size is used for "raw"
    only) -> (JSON header length, request body)."""
    header: Dict[str, Any] = {"prompts": prompts, "resize": resize, "labels": labels, "frames": []}
    if size is not None:
        header["size"] = list(size) if isinstance(size, (tuple, list)) else size
    if template is not None:
        header["template"] = template
    for kind, data, (height, width) in frames:
        entry: Dict[str, Any] = {"format": kind, "bytes": len(data)}
        if kind == "raw":
            entry.update(height=height, width=width)
        header["frames"].append(entry)
    head = json.dumps(header, separators=(",", ":")).encode("utf-8")
    return len(head), b"".join([head, *(data for _, data, _ in frames)])


def frame_of(image) -> Tuple[str, bytes, Tuple[int, int]]:
    """What the client sends for ``image``: PNG/JPEG file bytes (or such a file, by path) as
    they are; a uint8 [H, W, 3] RGB array raw; anything else ``load_image`` reads as raw RGB."""
    from pathlib import Path

    data = None
    if isinstance(image, (bytes, bytearray)):
        data = bytes(image)
    elif isinstance(image, (str, Path)) and Path(image).is_file():
        data = Path(image).read_bytes()
    if data is not None:
        if data.startswith(b"\x89PNG\r\n\x1a\n"):
            return "png", data, (0, 0)
        if data.startswith(b"\xff\xd8\xff"):
            return "jpeg", data, (0, 0)
        image = Image.open(io.BytesIO(data)) if isinstance(image, (bytes, bytearray)) else image
    if isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3:
        array = np.ascontiguousarray(image)
    else:
        array = np.asarray(load_image(image), dtype=np.uint8)
    return "raw", array.tobytes(), (int(array.shape[0]), int(array.shape[1]))


def parse_frames(header_length: Any, body: bytes, patch_size: int,
                 max_pixels: int = DEFAULT_MAX_PIXELS, *, model_template: Optional[str] = None) -> FramesRequest:
    """A binary /v1/segment request (``header_length`` from its HTTP header) -> a
    FramesRequest, every frame decoded; prompts filled into the header's "template", or
    ``model_template`` without one (None: verbatim). Raises RequestError (413 for a frame
    over ``max_pixels``)."""
    try:
        length = int(header_length)
    except (TypeError, ValueError):
        raise RequestError(f"binary requests need the {HEADER_LENGTH} header (the JSON header's length "
                           f"in bytes), got {header_length!r}") from None
    if not 0 < length <= len(body):
        raise RequestError(f"{HEADER_LENGTH} is {length}, but the body has {len(body)} bytes")
    try:
        header = json.loads(body[:length])
    except (ValueError, UnicodeDecodeError) as exc:
        raise RequestError(f"the binary request's header is not valid JSON: {first_line(exc)}") from None
    header = _object(header, {"prompts", "template", "size", "resize", "labels", "frames"})
    prompts = _prompt_set(header, "prompts", model_template)
    size = _size(header.get("size"), patch_size)
    resize = _resize(header.get("resize", "squash"))
    labels = header.get("labels", "raw")
    if labels not in LABEL_ENCODINGS:
        raise RequestError(f"'labels' must be one of {', '.join(LABEL_ENCODINGS)}, got {labels!r}")
    entries = header.get("frames")
    if not isinstance(entries, list) or not entries:
        raise RequestError("'frames' must be a non-empty list of {\"format\", \"bytes\"} objects")
    if len(entries) > MAX_FRAMES:
        raise RequestError(f"{len(entries)} frames in one request, more than the limit of {MAX_FRAMES}", status=413)
    declared = sum(_frame_bytes(entry, index) for index, entry in enumerate(entries))
    payload = memoryview(body)[length:]
    if declared != len(payload):
        raise RequestError(f"the frames' header declares {declared} bytes, the body carries {len(payload)} "
                           f"after the header (truncated or padded)")
    images = []
    offset = 0
    for index, entry in enumerate(entries):
        data = payload[offset:offset + entry["bytes"]]
        offset += entry["bytes"]
        images.append(_decode_frame(entry, data, index, patch_size, max_pixels))
    return FramesRequest(images=tuple(images), prompts=prompts, size=size, resize=resize, labels=labels)


# A request (or session frame) of at most this many bytes is parsed on the event loop even
# when it holds a PNG or JPEG file: decoding an image that small costs less than handing it
# to a thread and back. Larger files are decoded on a thread, off the loop.
INLINE_PARSE_BYTES = 64 * 1024


def raw_frames_only(header_length: Any, body: bytes) -> bool:
    """Whether a binary request's header declares raw frames only (nothing to decode, so it
    can be parsed on the event loop). False for anything unreadable: ``parse_frames`` then
    says what is wrong."""
    try:
        length = int(header_length)
        entries = json.loads(body[:length])["frames"] if 0 < length <= len(body) else None
        return (isinstance(entries, list) and bool(entries)
                and all(isinstance(entry, dict) and entry.get("format") == "raw" for entry in entries))
    except (TypeError, ValueError, KeyError, UnicodeDecodeError):
        return False


def _frame_bytes(entry: Any, index: int) -> int:
    if not isinstance(entry, dict) or entry.get("format") not in FRAME_FORMATS:
        raise RequestError(f"frame {index}: 'format' must be one of {', '.join(FRAME_FORMATS)}")
    count = entry.get("bytes")
    if not isinstance(count, int) or isinstance(count, bool) or count <= 0:
        raise RequestError(f"frame {index}: 'bytes' must be a positive integer, got {count!r}")
    unknown = sorted(set(entry) - {"format", "bytes", "height", "width"})
    if unknown:
        raise RequestError(f"frame {index}: unknown field {unknown[0]!r}")
    return count


def _decode_frame(entry: Dict[str, Any], data: memoryview, index: int, patch_size: int, max_pixels: int):
    if entry["format"] == "raw":
        height, width = entry.get("height"), entry.get("width")
        if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in (height, width)):
            raise RequestError(f"frame {index}: a raw frame needs positive integer 'height' and 'width'")
        if height * width > max_pixels:
            raise RequestError(f"frame {index} is {width}x{height} pixels, more than the limit of {max_pixels}",
                               status=413)
        if height * width * 3 != len(data):
            raise RequestError(f"frame {index}: a raw {height}x{width} RGB frame is {height * width * 3} bytes, "
                               f"got {len(data)}")
        if min(height, width) < patch_size:
            raise RequestError(f"frame {index} is {width}x{height} pixels (width x height), smaller than one "
                               f"{patch_size}x{patch_size} patch")
        return np.frombuffer(data, dtype=np.uint8).reshape(height, width, 3)
    image = decode_image_file(data, f"frame {index}", max_pixels, expected_format=entry["format"])
    try:
        _check_image_size(image, patch_size)
    except RequestError as exc:
        raise RequestError(f"frame {index}: {exc}") from None
    return image


# ---------------------------------------------------------------------------------------
# Responses


def segmentations_to_binary(results: Sequence[Segmentation], encoding: str = "raw") -> BinaryBody:
    """Segmentations of one request -> its binary answer."""
    header: Dict[str, Any] = {"classes": list(results[0].prompts) if results else [], "frames": []}
    chunks: List[bytes] = []
    for result in results:
        height, width = (int(v) for v in result.labels.shape)
        wide = len(result.prompts) > 255
        labels = result.labels.detach().cpu().numpy().astype("<u2" if wide else np.uint8, copy=False)
        data = np.ascontiguousarray(labels).tobytes()
        if encoding == "zlib":
            data = zlib.compress(data, 1)
        header["frames"].append({
            "height": height, "width": width, "dtype": "uint16" if wide else "uint8", "encoding": encoding,
            "bytes": len(data), "crop_box": list(result.crop_box) if result.crop_box is not None else None,
            "timings_ms": {name: round(float(value), 3) for name, value in result.timings_ms.items()},
        })
        chunks.append(data)
    head = json.dumps(header, separators=(",", ":")).encode("utf-8")
    return BinaryBody(header_length=len(head), data=b"".join([head, *chunks]))


def segmentations_from_binary(header_length: Any, body: bytes) -> List[Segmentation]:
    """A binary answer -> one Segmentation per frame; labels in ``Segmentation.labels``'s
    dtype (``class_label_dtype``), scores empty (shape [0])."""
    try:
        length = int(header_length)
        header = json.loads(body[:length])
        classes = answer_classes(header["classes"])
        results = []
        offset = length
        for frame in header["frames"]:
            data = body[offset:offset + int(frame["bytes"])]
            offset += int(frame["bytes"])
            if len(data) != int(frame["bytes"]):
                raise ValueError("the answer is shorter than its header says")
            if frame["encoding"] == "zlib":
                data = zlib.decompress(data)
            dtype = {"uint8": np.uint8, "uint16": np.dtype("<u2")}[frame["dtype"]]
            labels = np.frombuffer(data, dtype=dtype).reshape(int(frame["height"]), int(frame["width"]))
            check_answer_labels(labels, classes)
            tensor = torch.from_numpy(labels.astype(np.int64) if dtype != np.uint8 else labels.copy())
            results.append(Segmentation(labels=tensor.to(class_label_dtype(len(classes))),
                                        scores=torch.empty(0, dtype=torch.float32), prompts=classes,
                                        crop_box=answer_crop_box(frame.get("crop_box")),
                                        timings_ms=answer_timings(frame.get("timings_ms", {}))))
        if offset != len(body):
            raise ValueError(f"{len(body) - offset} bytes after the last frame")
    except (KeyError, TypeError, ValueError, AttributeError, zlib.error) as exc:
        raise InputError(f"malformed binary segment answer: {first_line(exc)}") from None
    return results
