"""ROS 2 image messages <-> frames and results, as plain functions.

Inputs are read by attribute, so the same functions take rclpy messages, messages decoded
from a bag by ``rosbags`` or ``mcap-ros2-support``, or any object with the fields of
``sensor_msgs/msg/Image`` (header, height, width, encoding, is_bigendian, step, data) or
``sensor_msgs/msg/CompressedImage`` (header, format, data). Outputs are dicts with the
message's field names: ``mcap_ros2`` writes them as they are and the ROS 2 node copies
them into rclpy messages.

Frames are RGB uint8 arrays [H, W, 3]. Labels go out as ``mono8`` (pixel = class index;
``mono16``, little-endian, when there are more than 256 classes), overlays as ``rgb8``,
and each output carries the input's header (stamp and frame_id).
"""

from __future__ import annotations

import io
import json
import numbers
from typing import Any, Dict, Optional, Sequence

import numpy as np

from ..errors import InputError

IMAGE_TYPE = "sensor_msgs/msg/Image"
COMPRESSED_TYPE = "sensor_msgs/msg/CompressedImage"
STRING_TYPE = "std_msgs/msg/String"
RAW_ENCODINGS = {"rgb8": 3, "bgr8": 3, "rgba8": 4, "bgra8": 4, "mono8": 1}
# Camera encodings converted here with numpy: 4:2:2 YUV (ROS's "yuv422" is UYVY byte order,
# "yuv422_yuy2" YUYV; BT.601 full range, as OpenCV converts them) and 8-bit Bayer mosaics
# (each 2x2 cell gives one RGB colour, its greens averaged, repeated over the cell).
# Byte positions of (Y0, U, Y1, V) in each 4-byte pair of pixels.
YUV_ENCODINGS = {"yuv422": (1, 0, 3, 2), "uyvy": (1, 0, 3, 2), "yuv422_yuy2": (0, 1, 2, 3), "yuyv": (0, 1, 2, 3)}
BAYER_ENCODINGS = ("bayer_rggb8", "bayer_bggr8", "bayer_gbrg8", "bayer_grbg8")
COMPRESSED_FORMATS = ("jpeg", "jpg", "png")
SUPPORTED = (f"Image encodings {', '.join(list(RAW_ENCODINGS) + ['yuv422', 'yuv422_yuy2'] + list(BAYER_ENCODINGS))}; "
             f"CompressedImage jpeg, png")


def header_fields(header: Any) -> Dict[str, Any]:
    """A message header (stamp, frame_id) as a dict, ready to copy into an output."""
    try:
        stamp = header.stamp
        return {"stamp": {"sec": _whole(stamp.sec, "stamp.sec"), "nanosec": _whole(stamp.nanosec, "stamp.nanosec")},
                "frame_id": str(header.frame_id)}
    except AttributeError as exc:
        raise InputError(f"the message header lacks a field ({exc})") from None


def stamp_ns(header: Any) -> int:
    """The header's stamp in nanoseconds (exact: integers throughout)."""
    return _whole(header.stamp.sec, "stamp.sec") * 1_000_000_000 + _whole(header.stamp.nanosec, "stamp.nanosec")


def _whole(value: Any, name: str) -> int:
    """An integer field of a message (Python or numpy integer) as an int; anything else
    (a float, a string, a boolean) is an InputError, never truncated."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise InputError(f"message field {name} must be an integer, got {value!r}")
    return int(value)


def is_compressed(message: Any) -> bool:
    return hasattr(message, "format") and not hasattr(message, "encoding")


def unsupported_reason(message: Any) -> Optional[str]:
    """Why clippy-rt cannot read this Image / CompressedImage message's encoding (a sentence
    listing what it reads), or None when it can."""
    if is_compressed(message):
        text = str(message.format).lower()
        if "compresseddepth" in text or not any(name in text for name in COMPRESSED_FORMATS):
            return f"compressed format {message.format!r} is not supported; clippy-rt reads {SUPPORTED}"
        return None
    encoding = str(getattr(message, "encoding", "")).lower()
    if encoding in RAW_ENCODINGS or encoding in YUV_ENCODINGS or encoding in BAYER_ENCODINGS:
        return None
    return f"encoding {getattr(message, 'encoding', None)!r} is not supported; clippy-rt reads {SUPPORTED}"


def message_to_frame(message: Any) -> np.ndarray:
    """An Image or CompressedImage message -> RGB uint8 [H, W, 3]."""
    if is_compressed(message):
        return compressed_to_frame(message)
    return image_to_frame(message)


def _bytes(data: Any) -> np.ndarray:
    if isinstance(data, np.ndarray):
        return data.reshape(-1).view(np.uint8) if data.dtype == np.uint8 else data.astype(np.uint8).reshape(-1)
    try:
        return np.frombuffer(memoryview(data), dtype=np.uint8)
    except TypeError:
        pass
    if isinstance(data, (str, numbers.Number)):
        raise InputError(f"message data must be bytes or a sequence of bytes, got {type(data).__name__}")
    try:
        return np.asarray(data, dtype=np.uint8).reshape(-1)
    except (TypeError, ValueError, OverflowError):
        raise InputError(f"message data must be bytes or a sequence of bytes (0..255), got "
                         f"{type(data).__name__}") from None


def image_to_frame(message: Any) -> np.ndarray:
    """``sensor_msgs/msg/Image`` (rgb8, bgr8, rgba8, bgra8, mono8) -> RGB uint8 [H, W, 3].

    Rows are read ``step`` bytes apart (padding at the end of each row is skipped); alpha
    is dropped. Any other encoding, or a size that does not add up, is an ``InputError``.
    """
    encoding = str(message.encoding).lower()
    if encoding in YUV_ENCODINGS:
        return _yuv422_to_rgb(_rows(message, 2), YUV_ENCODINGS[encoding])
    if encoding in BAYER_ENCODINGS:
        return _bayer_to_rgb(_rows(message, 1)[:, :, 0], encoding)
    if encoding not in RAW_ENCODINGS:
        raise InputError(f"unsupported image encoding {message.encoding!r}; clippy-rt reads {SUPPORTED}")
    channels = RAW_ENCODINGS[encoding]
    pixels = _rows(message, channels)
    if channels == 1:
        return np.ascontiguousarray(np.repeat(pixels, 3, axis=2))
    if encoding.startswith("bgr"):
        return np.ascontiguousarray(pixels[:, :, 2::-1])
    return np.ascontiguousarray(pixels[:, :, :3])


def _rows(message: Any, channels: int) -> np.ndarray:
    """The pixel bytes of an Image message as [H, W, channels], row padding (``step``) skipped."""
    height, width, step = (_whole(getattr(message, name), name) for name in ("height", "width", "step"))
    if height <= 0 or width <= 0:
        raise InputError(f"image message is empty: {width}x{height} pixels")
    if step < width * channels:
        raise InputError(f"image step {step} is smaller than width x bytes per pixel = {width * channels}")
    data = _bytes(message.data)
    if data.size < step * height:
        raise InputError(f"image data holds {data.size} bytes; {height} rows of step {step} "
                         f"need {step * height}")
    rows = data[: step * height].reshape(height, step)[:, : width * channels]
    return rows.reshape(height, width, channels)


def _yuv422_to_rgb(pixels: np.ndarray, order) -> np.ndarray:
    """4:2:2 YUV [H, W, 2] (two pixels share a U and a V) -> RGB uint8, BT.601 full range."""
    height, width, _ = pixels.shape
    if width % 2:
        raise InputError(f"a yuv422 image needs an even width, got {width}")
    pairs = pixels.reshape(height, width // 2, 4).astype(np.float32)
    y_first, u_index, y_second, v_index = order
    luma = np.stack([pairs[:, :, y_first], pairs[:, :, y_second]], axis=2).reshape(height, width)
    u = np.repeat(pairs[:, :, u_index], 2, axis=1) - 128.0
    v = np.repeat(pairs[:, :, v_index], 2, axis=1) - 128.0
    rgb = np.stack([luma + 1.402 * v, luma - 0.344136 * u - 0.714136 * v, luma + 1.772 * u], axis=2)
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


def _bayer_to_rgb(mosaic: np.ndarray, encoding: str) -> np.ndarray:
    """An 8-bit Bayer mosaic [H, W] -> RGB uint8 [H, W, 3]: each 2x2 cell's red, blue and
    mean green, repeated over the cell."""
    height, width = mosaic.shape
    if height % 2 or width % 2:
        raise InputError(f"a Bayer image needs an even width and height, got {width}x{height}")
    pattern = encoding[len("bayer_"):len("bayer_") + 4]          # e.g. "rggb": cells (0,0) (0,1) (1,0) (1,1)
    cells = {(0, 0): mosaic[0::2, 0::2], (0, 1): mosaic[0::2, 1::2], (1, 0): mosaic[1::2, 0::2],
             (1, 1): mosaic[1::2, 1::2]}
    positions = [(0, 0), (0, 1), (1, 0), (1, 1)]
    red = cells[positions[pattern.index("r")]].astype(np.uint16)
    blue = cells[positions[pattern.index("b")]].astype(np.uint16)
    greens = [cells[p].astype(np.uint16) for p, colour in zip(positions, pattern) if colour == "g"]
    green = (greens[0] + greens[1] + 1) // 2
    small = np.stack([red, green, blue], axis=2).astype(np.uint8)
    return np.ascontiguousarray(np.repeat(np.repeat(small, 2, axis=0), 2, axis=1))


def compressed_to_frame(message: Any) -> np.ndarray:
    """``sensor_msgs/msg/CompressedImage`` (jpeg or png) -> RGB uint8 [H, W, 3].

    ``format`` may be the plain codec name or image_transport's "bgr8; jpeg compressed bgr8";
    the colour order of the decoded image is the codec's own, so both give RGB. An EXIF
    orientation is applied, as for image files.
    """
    from PIL import Image

    from ..images import load_image, upright

    text = str(message.format).lower()
    if "compresseddepth" in text or not any(name in text for name in COMPRESSED_FORMATS):
        raise InputError(f"unsupported compressed image format {message.format!r}; clippy-rt reads {SUPPORTED}")
    payload = _bytes(message.data).tobytes()
    if not payload:
        raise InputError("compressed image message holds no data")
    try:
        with Image.open(io.BytesIO(payload)) as opened:
            if opened.format not in ("JPEG", "PNG"):
                raise InputError(f"compressed image says {message.format!r} but holds {opened.format}")
            opened.load()
            picture = load_image(upright(opened))
    except InputError:
        raise
    except Exception as exc:  # PIL's decoders raise many types on bad data
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"cannot decode the compressed image: {first}") from None
    return np.asarray(picture, dtype=np.uint8)


def labels_message(labels: Any, header: Any, n_classes: int) -> Dict[str, Any]:
    """Labels [H, W] (class indices) -> ``sensor_msgs/msg/Image`` fields, ``mono8`` (``mono16``
    little-endian above 256 classes), with ``header``'s stamp and frame_id."""
    array = labels.numpy() if hasattr(labels, "numpy") else np.asarray(labels)
    if array.ndim != 2:
        raise InputError(f"labels must be [H, W], got shape {tuple(array.shape)}")
    if n_classes > 65536:
        raise InputError(f"{n_classes} classes do not fit a mono16 image")
    if array.size and (array.min() < 0 or array.max() >= n_classes):
        raise InputError(f"labels must lie in [0, {n_classes}), got [{array.min()}, {array.max()}]")
    wide = n_classes > 256
    pixels = array.astype("<u2" if wide else np.uint8)
    height, width = pixels.shape
    return {"header": header_fields(header), "height": height, "width": width,
            "encoding": "mono16" if wide else "mono8", "is_bigendian": 0,
            "step": width * (2 if wide else 1), "data": np.ascontiguousarray(pixels).tobytes()}


def rgb_message(rgb: np.ndarray, header: Any) -> Dict[str, Any]:
    """RGB uint8 [H, W, 3] -> ``sensor_msgs/msg/Image`` fields (``rgb8``)."""
    rgb = np.asarray(rgb)
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise InputError(f"an rgb8 image must be uint8 [H, W, 3], got {rgb.dtype} {tuple(rgb.shape)}")
    height, width, _ = rgb.shape
    return {"header": header_fields(header), "height": height, "width": width, "encoding": "rgb8",
            "is_bigendian": 0, "step": width * 3, "data": np.ascontiguousarray(rgb).tobytes()}


def overlay_message(frame: np.ndarray, labels: Any, classes: Sequence[str], header: Any,
                    alpha: float = 0.5) -> Dict[str, Any]:
    """The frame with each pixel tinted by its class (``clippy_rt.visualize.overlay``, no
    legend, same size as the frame) -> ``rgb8`` Image fields."""
    from ..visualize import overlay

    picture = overlay(frame, labels, list(classes), alpha, legend=False)
    return rgb_message(np.asarray(picture, dtype=np.uint8), header)


def classes_message(classes: Sequence[str], provenance: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """``std_msgs/msg/String`` fields: a JSON object whose ``classes`` is the list of class
    names (pixel value i is ``classes[i]``), with ``provenance`` (what produced the labels:
    source topic, model identity, prompts...) alongside."""
    return {"data": json.dumps(dict(provenance or {}, classes=list(classes)))}
