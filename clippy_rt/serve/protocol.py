"""The HTTP API's JSON messages: request parsing and validation, response encoding and
decoding. Shared by the server (``clippy_rt.serve``) and the client (``clippy_rt.serve.client``);
needs no Ray.

``POST /v1/segment``::

    {"image": "<base64 PNG/JPEG file>", "prompts": ["cat", "dog"] | {"class": ["prompt", ...]},
     "size": 224 | [H, W], "resize": "squash" | "crop" | "letterbox", "template": "a photo of {}",
     "return_scores": false}
    -> {"classes": [...], "height": H, "width": W, "labels_png": "<base64 PNG, pixel = class index>",
        "fractions": {class: fraction}, "timings_ms": {...}, "crop_box": [top, left, h, w] | null,
        "scores": "<base64 little-endian float32 [H*W]>" (with return_scores)}

``POST /v1/classify``::

    {"image": ..., "labels": [...] | {...}, "top_k": 5, "template": ..., "size": ..., "resize": "crop"}
    -> {"labels": [[name, probability], ...]}

Prompts and labels are filled into "template" (``"{}"``: verbatim); without one, into the
served model's template, as ``Engine.segment`` does.

Errors are ``{"error": "<one line>"}`` with a 4xx status (5xx for a server fault).
"""

from __future__ import annotations

import base64
import binascii
import functools
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

import numpy as np
import torch
from PIL import Image

from ..errors import InputError
from ..images import RESIZE_MODES, load_image, upright
from ..prompts import PromptSet, build_prompt_set, resolve_template
from ..results import Segmentation, class_label_dtype
from ..visualize import label_image
from ..validate import check_positive_int

# Default limit on a request body; a 1080p PNG is about 3 MB, 4 MB of base64.
DEFAULT_MAX_BODY_BYTES = 16 * 1024 * 1024
# Decoded images larger than this are refused before their pixels are decoded.
DEFAULT_MAX_PIXELS = 40_000_000
# Largest accepted model input side: far above any CLIPpy input, small enough to bound memory.
MAX_INPUT_SIDE = 4096
FORMATS = ("PNG", "JPEG")

Size = Union[None, int, Tuple[int, int]]


class RequestError(InputError):
    """A request the server refuses; ``status`` is its HTTP status code (4xx)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class SegmentRequest:
    image: Image.Image
    prompts: PromptSet
    size: Size
    resize: str
    return_scores: bool

    @property
    def batch_key(self) -> tuple:
        """Requests with equal keys can share one ``Engine.segment`` call."""
        return ("segment", self.prompts, self.size, self.resize)


@dataclass(frozen=True)
class ClassifyRequest:
    image: Image.Image
    labels: PromptSet
    top_k: int
    size: Size
    resize: str

    @property
    def batch_key(self) -> tuple:
        return ("classify", self.labels, self.top_k, self.size, self.resize)


# ---------------------------------------------------------------------------------------
# Requests


def decode_image(text: Any, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Base64 text of a PNG or JPEG file -> an RGB PIL image. Raises RequestError (400,
    or 413 for an image of more than ``max_pixels`` pixels)."""
    if not isinstance(text, str):
        raise RequestError(f"'image' must be a base64 string, got {_json_type(text)}")
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise RequestError("'image' is not valid base64") from None
    if not data:
        raise RequestError("'image' is empty")
    return decode_image_file(data, "'image'", max_pixels)


def decode_image_file(data, name: str, max_pixels: int = DEFAULT_MAX_PIXELS,
                      expected_format: Optional[str] = None) -> Image.Image:
    """PNG or JPEG file bytes -> an RGB PIL image; ``name`` says which input it is in error
    messages. Raises RequestError (400, or 413 for more than ``max_pixels`` pixels, checked
    before the pixels are decoded)."""
    try:
        opened = Image.open(io.BytesIO(data), formats=FORMATS)
    except Exception:
        raise RequestError(f"{name} is not a PNG or JPEG file") from None
    if expected_format is not None and opened.format.lower() != expected_format:
        raise RequestError(f"{name} is declared {expected_format}, its bytes are {opened.format}")
    width, height = opened.size
    if width * height > max_pixels:
        raise RequestError(f"{name} is {width}x{height} pixels, more than the limit of {max_pixels}", status=413)
    try:
        opened.load()
        # Turned as its EXIF orientation says, and palette, grayscale and alpha images read as
        # RGB, as load_image does for files.
        return load_image(upright(opened))
    except Exception as exc:
        raise RequestError(f"{name} cannot be decoded: {first_line(exc)}") from None


def encode_image_file(image: Any) -> bytes:
    """What the client sends as 'image': PNG/JPEG file bytes pass through as they are (as do
    such files, given by path); anything else ``load_image`` reads (other files, PIL
    images, uint8 arrays) is encoded as PNG."""
    if isinstance(image, (bytes, bytearray)):
        return bytes(image)
    if isinstance(image, (str, Path)):
        data = Path(image).read_bytes() if Path(image).is_file() else b""
        if data.startswith(b"\x89PNG\r\n\x1a\n") or data.startswith(b"\xff\xd8\xff"):
            return data
    buffer = io.BytesIO()
    load_image(image).save(buffer, format="PNG")
    return buffer.getvalue()


def parse_segment(body: Any, patch_size: int, max_pixels: int = DEFAULT_MAX_PIXELS, *,
                  model_template: Optional[str] = None) -> SegmentRequest:
    """The JSON object of a /v1/segment request -> a SegmentRequest; prompts are filled into
    the request's "template", or ``model_template`` without one (None: verbatim). Raises
    RequestError."""
    body = _object(body, {"image", "prompts", "size", "resize", "template", "return_scores"})
    prompts = _prompt_set(body, "prompts", model_template)
    size = _size(body.get("size"), patch_size)
    resize = _resize(body.get("resize", "squash"))
    return_scores = body.get("return_scores", False)
    if not isinstance(return_scores, bool):
        raise RequestError(f"'return_scores' must be true or false, got {_json_type(return_scores)}")
    image = decode_image(_required(body, "image"), max_pixels)
    _check_image_size(image, patch_size)
    return SegmentRequest(image=image, prompts=prompts, size=size, resize=resize, return_scores=return_scores)


def parse_classify(body: Any, patch_size: int, max_pixels: int = DEFAULT_MAX_PIXELS, *,
                   model_template: Optional[str] = None) -> ClassifyRequest:
    """The JSON object of a /v1/classify request -> a ClassifyRequest (labels filled into the
    template as in ``parse_segment``). Raises RequestError."""
    body = _object(body, {"image", "labels", "top_k", "size", "resize", "template"})
    labels = _prompt_set(body, "labels", model_template)
    top_k = body.get("top_k", 5)
    check_positive_int("'top_k'", top_k, error=RequestError)
    size = _size(body.get("size"), patch_size)
    resize = _resize(body.get("resize", "crop"))
    image = decode_image(_required(body, "image"), max_pixels)
    _check_image_size(image, patch_size)
    return ClassifyRequest(image=image, labels=labels, top_k=top_k, size=size, resize=resize)


def _object(body: Any, known: set) -> Dict[str, Any]:
    if not isinstance(body, dict):
        raise RequestError(f"the request body must be a JSON object, got {_json_type(body)}")
    unknown = sorted(set(body) - known)
    if unknown:
        raise RequestError(f"unknown field {unknown[0]!r}; expected some of {', '.join(sorted(known))}")
    return body


def _required(body: Dict[str, Any], name: str) -> Any:
    if name not in body:
        raise RequestError(f"missing field {name!r}")
    return body[name]


def _prompt_set(body: Dict[str, Any], name: str, model_template: Optional[str] = None) -> PromptSet:
    """``body[name]`` filled into ``body["template"]`` (``"{}"``: verbatim), or into
    ``model_template`` when the request names none."""
    value = _required(body, name)
    template = body.get("template")
    if template is not None and not isinstance(template, str):
        raise RequestError(f"'template' must be a string, got {_json_type(template)}")
    if isinstance(value, dict):
        for key, synonyms in value.items():
            if not isinstance(synonyms, (list, str)):
                raise RequestError(f"'{name}' class {key!r} must map to a list of strings, "
                                   f"got {_json_type(synonyms)}")
    elif not isinstance(value, list):
        raise RequestError(f"'{name}' must be a list of strings or an object of lists, got {_json_type(value)}")
    try:
        # A camera sends the same prompts with every frame: build each set once (the JSON
        # text of the value is its key; dictionaries keep their order in it).
        return _built_prompt_set(json.dumps(value), template, model_template)
    except (InputError, ValueError, KeyError, IndexError) as exc:
        raise RequestError(f"'{name}': {first_line(exc)}") from None


@functools.lru_cache(maxsize=256)
def _built_prompt_set(value_json: str, template: Optional[str], model_template: Optional[str]) -> PromptSet:
    """``build_prompt_set`` of the JSON value, kept for the next request with the same one
    (a PromptSet is immutable; a value that fails raises each time)."""
    return build_prompt_set(json.loads(value_json), resolve_template(template, model_template))


def _size(value: Any, patch_size: int) -> Size:
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        sides = (value, value)
    elif (isinstance(value, list) and len(value) == 2
          and all(isinstance(v, int) and not isinstance(v, bool) for v in value)):
        sides = tuple(value)
    else:
        raise RequestError(f"'size' must be an integer or [height, width], got {value!r}")
    if any(side <= 0 or side > MAX_INPUT_SIDE or side % patch_size for side in sides):
        raise RequestError(f"'size' sides must be multiples of the patch size {patch_size} "
                           f"in [{patch_size}, {MAX_INPUT_SIDE}], got {value!r}")
    return value if isinstance(value, int) else sides


def _resize(value: Any) -> str:
    if value not in RESIZE_MODES:
        raise RequestError(f"'resize' must be one of {', '.join(RESIZE_MODES)}, got {value!r}")
    return value


def _check_image_size(image: Image.Image, patch_size: int) -> None:
    if min(image.size) < patch_size:
        raise RequestError(f"'image' is {image.size[0]}x{image.size[1]} pixels (width x height), "
                           f"smaller than one {patch_size}x{patch_size} patch")


def _json_type(value: Any) -> str:
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean",
             int: "a number", float: "a number", type(None): "null"}
    return names.get(type(value), type(value).__name__)


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def error_body(message: str) -> Dict[str, str]:
    return {"error": " ".join(str(message).split()) or "error"}


# ---------------------------------------------------------------------------------------
# Responses


def segmentation_to_json(result: Segmentation, return_scores: bool = False) -> Dict[str, Any]:
    """A Segmentation -> the JSON object of a /v1/segment response."""
    height, width = (int(v) for v in result.labels.shape)
    buffer = io.BytesIO()
    label_image(result.labels, len(result.prompts)).save(buffer, format="PNG")
    body = {
        "classes": list(result.prompts),
        "height": height,
        "width": width,
        "labels_png": base64.b64encode(buffer.getvalue()).decode("ascii"),
        "fractions": result.fractions(),
        "timings_ms": {name: round(float(value), 3) for name, value in result.timings_ms.items()},
        "crop_box": list(result.crop_box) if result.crop_box is not None else None,
    }
    if return_scores:
        scores = result.scores.detach().cpu().float().numpy().astype("<f4")
        body["scores"] = base64.b64encode(scores.tobytes()).decode("ascii")
    return body


def answer_classes(value: Any) -> Tuple[str, ...]:
    """An answer's "classes": a list of strings; ValueError otherwise."""
    if not isinstance(value, list) or not all(isinstance(c, str) for c in value):
        raise ValueError(f"'classes' is not a list of strings: {value!r:.60}")
    return tuple(value)


def check_answer_labels(labels: np.ndarray, classes: Tuple[str, ...]) -> None:
    """ValueError for a label naming a class past ``classes``."""
    if labels.size and int(labels.max()) >= len(classes):
        raise ValueError(f"label {int(labels.max())} is past the {len(classes)} classes")


def answer_crop_box(value: Any) -> Optional[Tuple[int, int, int, int]]:
    """An answer's "crop_box": null or four integers (top, left, height, width)."""
    if value is None:
        return None
    box = tuple(int(v) for v in value)
    if len(box) != 4:
        raise ValueError(f"crop_box has {len(box)} values, not 4 (top, left, height, width)")
    return box


def answer_timings(value: Any) -> Dict[str, float]:
    """An answer's "timings_ms": an object of numbers (AttributeError / ValueError otherwise)."""
    return {str(k): float(v) for k, v in value.items()}


def segmentation_from_json(body: Dict[str, Any]) -> Segmentation:
    """A /v1/segment response -> Segmentation, labels in the engine's dtype
    (``class_label_dtype``). ``scores`` is float32 [H, W] when the response carries them,
    otherwise an empty tensor (shape [0]). InputError for an answer that is not one: missing
    or mistyped fields, labels of another size than the header's or naming a class past the
    class list, scores of another size, a crop box that is not four integers."""
    try:
        classes = answer_classes(body["classes"])
        height, width = int(body["height"]), int(body["width"])
        with Image.open(io.BytesIO(base64.b64decode(body["labels_png"]))) as picture:
            labels = np.asarray(picture)
        if labels.shape != (height, width):
            raise ValueError(f"labels are {labels.shape}, header says {(height, width)}")
        check_answer_labels(labels, classes)
        if "scores" in body:
            scores = np.frombuffer(base64.b64decode(body["scores"]), dtype="<f4").reshape(height, width)
            scores_tensor = torch.from_numpy(scores.astype(np.float32))
        else:
            scores_tensor = torch.empty(0, dtype=torch.float32)
        crop_box = answer_crop_box(body.get("crop_box"))
        timings = answer_timings(body.get("timings_ms", {}))
    except (KeyError, TypeError, ValueError, AttributeError, OSError) as exc:
        raise InputError(f"malformed segment response: {first_line(exc)}") from None
    labels_tensor = torch.from_numpy(labels.astype(np.int64)).to(class_label_dtype(len(classes)))
    return Segmentation(labels=labels_tensor, scores=scores_tensor, prompts=classes,
                        crop_box=crop_box, timings_ms=timings)


def classification_to_json(result: List[Tuple[str, float]]) -> Dict[str, Any]:
    return {"labels": [[name, float(probability)] for name, probability in result]}


def classification_from_json(body: Dict[str, Any]) -> List[Tuple[str, float]]:
    try:
        return [(str(name), float(probability)) for name, probability in body["labels"]]
    except (KeyError, TypeError, ValueError) as exc:
        raise InputError(f"malformed classify response: {first_line(exc)}") from None
