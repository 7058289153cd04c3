"""Label maps as images: a class palette, label and mask PNGs, colour overlays, class legends.

Every file is written atomically: into a temporary file in the destination directory, then
renamed over the destination, so a failed or interrupted write leaves the old file (or
nothing) and no partial image.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, List, Sequence, Tuple, Union

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from .errors import InputError
from .formats.atomic import atomic_write

PathLike = Union[str, Path]
RGB = Tuple[int, int, int]

# An 8-bit palette PNG holds at most this many classes; more go to 16-bit grayscale.
MAX_PALETTE_CLASSES = 256
MAX_CLASSES = 65536


def palette(n: int) -> List[RGB]:
    """``n`` distinct RGB colours, entry i for class i; the same for every call; none black.

    The PASCAL VOC colour map without its black first entry: class i gets VOC colour i + 1,
    whose bits are dealt out to the three channels from the most significant bit down (bit
    3j of i + 1 -> bit 7-j of red, 3j+1 -> green, 3j+2 -> blue). Any two classes below
    2**24 - 1 get different colours, and class 0 (often "background" or "floor") shows in
    an overlay like every other class (dark red, then dark green, olive, navy, ...).
    """
    if not isinstance(n, int) or isinstance(n, bool) or n < 0:
        raise InputError(f"palette size must be a non-negative integer, got {n!r}")
    if n > (1 << 24) - 1:
        raise InputError(f"palette size must be at most {(1 << 24) - 1}, got {n}")
    colours = []
    for index in range(1, n + 1):
        red = green = blue = 0
        value = index
        for bit in range(8):
            red |= ((value >> 0) & 1) << (7 - bit)
            green |= ((value >> 1) & 1) << (7 - bit)
            blue |= ((value >> 2) & 1) << (7 - bit)
            value >>= 3
        colours.append((red, green, blue))
    return colours


@functools.lru_cache(maxsize=1)
def _flat_palette() -> bytes:
    """``palette(MAX_PALETTE_CLASSES)`` as the 768 bytes PIL's putpalette takes, built once."""
    return bytes(channel for colour in palette(MAX_PALETTE_CLASSES) for channel in colour)


def _label_array(labels: Any) -> np.ndarray:
    if isinstance(labels, torch.Tensor):
        if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
            raise TypeError(f"labels must be an integer tensor, got {labels.dtype}")
        labels = labels.detach().cpu().numpy()
    if not isinstance(labels, np.ndarray):
        raise TypeError(f"labels must be a numpy array or torch tensor, got {type(labels).__name__}")
    if labels.dtype.kind not in "iu":
        raise TypeError(f"labels must have an integer dtype, got {labels.dtype}")
    if labels.ndim != 2:
        raise InputError(f"labels must be 2-D [H, W], got shape {tuple(labels.shape)}")
    if labels.shape[0] == 0 or labels.shape[1] == 0:
        raise InputError(f"labels must not be empty, got shape {tuple(labels.shape)}")
    return labels


def label_image(labels: Any, n_classes: int) -> Image.Image:
    """The PIL image whose pixel values are ``labels`` [H, W] (integers in [0, n_classes)).

    Up to 256 classes: mode 'P' with ``palette(256)`` (class i shows in colour i). More, up
    to 65536: mode 'I;16', a 16-bit grayscale image of the class indices (no colours).
    """
    labels = _label_array(labels)
    if not isinstance(n_classes, int) or isinstance(n_classes, bool) or not 1 <= n_classes <= MAX_CLASSES:
        raise InputError(f"n_classes must be an integer in [1, {MAX_CLASSES}], got {n_classes!r}")
    low, high = int(labels.min()), int(labels.max())
    if low < 0 or high >= n_classes:
        raise InputError(f"labels must lie in [0, {n_classes - 1}], got values in [{low}, {high}]")
    if n_classes <= MAX_PALETTE_CLASSES:
        height, width = labels.shape
        image = Image.frombytes("P", (width, height),
                                np.ascontiguousarray(labels, dtype=np.uint8).tobytes())
        image.putpalette(_flat_palette())
        return image
    height, width = labels.shape
    return Image.frombytes("I;16", (width, height),
                           np.ascontiguousarray(labels, dtype="<u2").tobytes())


def save_label_png(labels: Any, path: PathLike, n_classes: int) -> Path:
    """Write ``labels`` [H, W] as a PNG whose pixel values are the class indices.

    Palette PNG for up to 256 classes, 16-bit grayscale for up to 65536 (see
    ``label_image``). Reading it back with PIL and ``np.asarray`` gives ``labels``.
    Written atomically; returns ``path``.
    """
    image = label_image(labels, n_classes)
    return atomic_write(path, lambda handle: image.save(handle, format="PNG"))


def save_mask_png(mask: Any, path: PathLike) -> Path:
    """Write a binary mask [H, W] (bool, or integers where non-zero is in) as an 8-bit
    grayscale PNG: 255 inside, 0 outside. Written atomically; returns ``path``."""
    if isinstance(mask, torch.Tensor):
        mask = mask.detach().cpu().numpy()
    if not isinstance(mask, np.ndarray) or mask.ndim != 2 or mask.dtype.kind not in "biu":
        raise InputError(f"mask must be a 2-D bool or integer array, got "
                         f"{getattr(mask, 'dtype', type(mask).__name__)} {tuple(getattr(mask, 'shape', ()))}")
    image = Image.fromarray(np.where(mask != 0, 255, 0).astype(np.uint8))
    return atomic_write(path, lambda handle: image.save(handle, format="PNG"))


def overlay(image: Any, labels: Any, class_names: Sequence[str], alpha: float = 0.5, *,
            legend: bool = True) -> Image.Image:
    """Colour each pixel by its class and blend with the image; add a legend on the right.

    ``image`` is anything ``clippy_rt.images.load_image`` takes, of size W x H; ``labels``
    [H, W] holds class indices into ``class_names``. Pixel colour:
    ``(1 - alpha) * image + alpha * palette[label]``; labels outside [0, len(class_names))
    (an ignore value such as 255) leave the pixel as it is. With ``legend`` the result is
    wider than the image: a panel on its right lists each class present (colour swatch and
    name, in class order) in PIL's default font. Returns an RGB image.
    """
    from .images import load_image

    picture = load_image(image)
    labels = _label_array(labels)
    if labels.shape != (picture.height, picture.width):
        raise InputError(f"labels shape {tuple(labels.shape)} does not match the image "
                         f"(height, width) = ({picture.height}, {picture.width})")
    if isinstance(class_names, str) or not all(isinstance(name, str) for name in class_names):
        raise TypeError("class_names must be a sequence of strings")
    if not class_names:
        raise InputError("class_names must not be empty")
    if not isinstance(alpha, (int, float)) or isinstance(alpha, bool) or not 0.0 <= alpha <= 1.0:
        raise InputError(f"alpha must be a number in [0, 1], got {alpha!r}")

    n_classes = len(class_names)
    colours = np.asarray(palette(n_classes), dtype=np.float32)
    valid = (labels >= 0) & (labels < n_classes)
    pixels = np.asarray(picture, dtype=np.float32)
    blended = pixels.copy()
    index = labels[valid].astype(np.int64)
    blended[valid] = (1.0 - alpha) * pixels[valid] + alpha * colours[index]
    result = Image.fromarray(np.clip(np.rint(blended), 0, 255).astype(np.uint8))
    if not legend:
        return result
    present = np.unique(index).tolist()
    return _with_legend(result, [(class_names[i], tuple(int(c) for c in colours[i])) for i in present])


def legend_image(entries: Sequence[Tuple[str, RGB]]) -> Image.Image:
    """A white RGB panel listing ``entries`` (name, colour) top to bottom: a colour swatch
    with a black outline, then the name in PIL's default font."""
    font = ImageFont.load_default()
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    boxes = [measure.textbbox((0, 0), name, font=font) for name, _ in entries]
    text_height = max([box[3] - box[1] for box in boxes] + [10])
    swatch = text_height + 4
    margin = 6
    row = swatch + 4
    text_width = max([box[2] - box[0] for box in boxes] + [0])
    panel = Image.new("RGB", (margin * 3 + swatch + text_width, margin * 2 + row * len(entries)),
                      (255, 255, 255))
    draw = ImageDraw.Draw(panel)
    for k, ((name, colour), box) in enumerate(zip(entries, boxes)):
        top = margin + k * row
        draw.rectangle([margin, top, margin + swatch - 1, top + swatch - 1], fill=tuple(colour),
                       outline=(0, 0, 0))
        text_top = top + (swatch - (box[3] - box[1])) // 2 - box[1]
        draw.text((margin * 2 + swatch, text_top), name, fill=(0, 0, 0), font=font)
    return panel


def class_legend(class_names: Sequence[str]) -> Image.Image:
    """``legend_image`` of every class in ``class_names``, in class order, in the colours
    ``overlay`` paints them."""
    if isinstance(class_names, str) or not all(isinstance(name, str) for name in class_names):
        raise TypeError("class_names must be a sequence of strings")
    return legend_image(list(zip(class_names, palette(len(class_names)))))


def _with_legend(picture: Image.Image, entries: List[Tuple[str, RGB]]) -> Image.Image:
    panel = legend_image(entries)
    canvas = Image.new("RGB", (picture.width + panel.width, max(picture.height, panel.height)),
                       (255, 255, 255))
    canvas.paste(picture, (0, 0))
    canvas.paste(panel, (picture.width, 0))
    return canvas


def save_image(picture: Image.Image, path: PathLike) -> Path:
    """Write ``picture`` to ``path`` in the format its suffix names (.png, .jpg/.jpeg, .webp,
    .bmp), atomically; returns ``path``."""
    path = Path(path)
    image_format = _FORMATS.get(path.suffix.lower())
    if image_format is None:
        raise InputError(f"cannot tell the image format of {path}: use one of "
                         f"{', '.join(sorted(_FORMATS))}")
    return atomic_write(path, lambda handle: picture.save(handle, format=image_format))


_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP", ".bmp": "BMP"}


def save_overlay(image: Any, labels: Any, class_names: Sequence[str], path: PathLike,
                 alpha: float = 0.5, *, legend: bool = True) -> Path:
    """Write ``overlay(image, labels, class_names, alpha, legend=legend)`` to ``path``.

    The format follows the suffix (.png, .jpg/.jpeg, .webp, .bmp). Written atomically;
    returns ``path``.
    """
    return save_image(overlay(image, labels, class_names, alpha, legend=legend), path)
