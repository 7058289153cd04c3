"""Host-side image pre-processing: decode anything image-like to RGB, resize, normalise.

Pipeline for one image of H0 x W0 pixels and a model input of H x W (multiples of the patch
size):

    RGB uint8 -> resize (PIL bicubic) -> x / 255 -> (x - mean) / std -> float32 [3, H, W]

Three ways to fit the input frame (``mode``):

- ``squash``: resize to H x W, ignoring the aspect ratio; labels at the original size.
- ``crop``: the reference evaluation protocol. Scale so the image covers H x W (for a
  square input: shorter side to H), centre crop H x W. Labels cover the crop only:
  ``crop_box`` says where it lies in the original and ``out_size`` is its size there.
- ``letterbox``: scale so the image fits inside H x W keeping its aspect ratio, centre it,
  pad with the mean colour (zero after normalisation). ``window`` is the unpadded region
  in normalised coordinates of the input frame; labels at the original size.

Decoding follows PIL's own conversions except where they lose data: 16-bit grayscale is
scaled to 8 bits (v -> round(v / 257)) instead of clipped at 255, palette images go through
RGBA. Alpha is dropped, not composited: the colour stored under a transparent pixel is what
the model sees (as with PIL's ``convert("RGB")`` and OpenCV's BGRA -> RGB). A file's EXIF
orientation is applied (``ImageOps.exif_transpose``), so labels line up with the image as
viewers show it; arrays and PIL images passed in are taken as they are.

Sizes are bounded (``clippy_rt.limits``): a decoded image holds at most MAX_IMAGE_PIXELS
pixels (checked from the header, before decoding), a model input at most MAX_INPUT_SIDE
pixels a side and MAX_INPUT_PATCHES patches.
"""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from PIL import Image, ImageOps

from . import limits
from .errors import InputError
from .validate import check_positive_int

# The resize modes, defined once: squash to the size, crop the centre, or letterbox (pad).
RESIZE_MODES = ("squash", "crop", "letterbox")
# The modes whose labels cover the whole input frame (outputs that must match the frame).
WHOLE_FRAME_MODES = tuple(mode for mode in RESIZE_MODES if mode != "crop")

ImageSource = Union[Image.Image, np.ndarray, str, os.PathLike]
Size = Union[int, Tuple[int, int]]

_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


@dataclass(frozen=True, eq=False)
class Prepared:
    """One image ready for the model, and where its labels belong.

    pixels:        float32 [3, H, W], normalised.
    original_size: (H0, W0) of the decoded image.
    out_size:      (height, width) the label map should have: the original size, or in
                   ``crop`` mode the size of the crop in original pixels.
    window:        (y0, x0, y1, x1) in [0, 1], the part of the input frame the labels cover
                   (``letterbox`` with padding); None for the whole frame.
    crop_box:      (top, left, height, width) of the crop in original pixels (``crop``
                   mode); None otherwise.
    """

    pixels: torch.Tensor
    original_size: Tuple[int, int]
    out_size: Tuple[int, int]
    window: Optional[Tuple[float, float, float, float]] = None
    crop_box: Optional[Tuple[int, int, int, int]] = None


# ---------------------------------------------------------------------------------------
# Decoding


def load_image(source: ImageSource, *, bgr: bool = False) -> Image.Image:
    """Decode ``source`` into a new RGB PIL image.

    ``source``: a PIL image (any mode), a file path, or a uint8 numpy array of shape
    [H, W] (grayscale), [H, W, 1], [H, W, 3] (RGB) or [H, W, 4] (RGBA). ``bgr=True`` reads
    3- and 4-channel arrays as BGR / BGRA (OpenCV frames); it has no effect on PIL images
    and files, which carry their own channel order.

    Raises ``InputError`` for a missing, unreadable, corrupt or truncated file (naming it)
    and for an array of the wrong shape; ``TypeError`` for an unsupported type or dtype.
    """
    if isinstance(source, Image.Image):
        name = getattr(source, "filename", "") or "the PIL image"
        _check_pixels(source.size, name)
        try:
            # Image.open is lazy: force decoding so a truncated file fails here.
            source.load()
        except Exception as exc:
            raise InputError(f"cannot decode {name}: {_reason(exc)}") from None
        return _to_rgb(source, name)
    if isinstance(source, np.ndarray):
        return _array_to_rgb(source, bgr)
    if isinstance(source, (str, os.PathLike)):
        return _read_file(Path(source))
    if isinstance(source, torch.Tensor):
        raise TypeError("load_image takes a PIL image, a uint8 numpy array or a path, got a "
                        "torch.Tensor; pass normalised float tensors through as_pixel_batch")
    raise TypeError(f"expected a PIL image, a uint8 numpy array or a path, got "
                    f"{type(source).__name__}")


def _open_lazily(path: Path) -> Image.Image:
    """``Image.open`` (header only). PIL's decompression-bomb warning is silenced: the
    size is checked against MAX_IMAGE_PIXELS, which is lower, before anything is decoded."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        return Image.open(path)


def probe_image(path: Union[str, os.PathLike]) -> Tuple[int, int]:
    """(width, height) of an image file as it will be decoded (EXIF orientation applied),
    read from its header without decoding the pixels.

    Raises ``InputError`` for a missing, unreadable or oversized file. Damage in the pixel
    data is found only by ``load_image``.
    """
    path = _existing_file(Path(path))
    try:
        with _open_lazily(path) as opened:
            _check_pixels(opened.size, str(path))
            width, height = opened.size
            try:
                turned = opened.getexif().get(_EXIF_ORIENTATION, 1) in (5, 6, 7, 8)
            except Exception:  # noqa: BLE001 - a malformed EXIF block is ignored when decoding too
                turned = False
    except InputError:
        raise
    except OSError as exc:
        reason = exc.strerror if exc.strerror else _reason(exc)
        raise InputError(f"cannot read image file {path}: {reason}") from None
    except Exception as exc:  # noqa: BLE001 - PIL's plugins raise many types
        raise InputError(f"cannot read image file {path}: {_reason(exc)}") from None
    return (height, width) if turned else (width, height)


def _reason(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _existing_file(path: Path) -> Path:
    if not path.exists():
        raise InputError(f"image file not found: {path}")
    if path.is_dir():
        raise InputError(f"image path is a directory, not a file: {path}")
    return path


def _read_file(path: Path) -> Image.Image:
    _existing_file(path)
    try:
        opened = _open_lazily(path)
    except OSError as exc:
        reason = exc.strerror if exc.strerror else _reason(exc)
        raise InputError(f"cannot read image file {path}: {reason}") from None
    except Exception as exc:
        raise InputError(f"cannot read image file {path}: {_reason(exc)}") from None
    try:
        _check_pixels(opened.size, str(path))
        try:
            # Decoding errors of PIL's plugins are of many types (OSError for truncation,
            # SyntaxError, EOFError, ValueError, struct.error, zlib.error, ...).
            opened.load()
        except Exception as exc:
            raise InputError(f"cannot decode image file {path}: {_reason(exc)}") from None
        return _to_rgb(upright(opened), str(path))
    finally:
        opened.close()


_EXIF_ORIENTATION = 0x0112


def upright(image: Image.Image) -> Image.Image:
    """``image`` (decoded file bytes) turned as its EXIF orientation tag says (itself when
    there is none or the EXIF block is malformed). Every reader of file bytes applies it, so
    a photo comes out the same whichever way it arrives."""
    try:
        if image.getexif().get(_EXIF_ORIENTATION, 1) == 1:
            return image
        return ImageOps.exif_transpose(image)
    except Exception:  # noqa: BLE001 - a malformed EXIF block: keep the stored orientation
        return image


def _check_pixels(size: Tuple[int, int], name: str) -> None:
    width, height = size
    if width * height > limits.MAX_IMAGE_PIXELS:
        raise InputError(f"{name} is {width}x{height} pixels (width x height), more than the "
                         f"{limits.MAX_IMAGE_PIXELS:,} pixels clippy-rt decodes")


def _to_rgb(image: Image.Image, name: str) -> Image.Image:
    mode = image.mode
    if mode in _SIXTEEN_BIT_MODES:
        # 'I' is how PIL opens 16-bit grayscale files: read it as 0..65535 as well, clipping
        # what lies outside. PIL's own I -> L conversion clips at 255 instead of scaling.
        values = np.clip(np.asarray(image).astype(np.int64), 0, 65535)
        eight_bit = ((values + 128) // 257).astype(np.uint8)
        return Image.fromarray(eight_bit).convert("RGB")
    if mode in ("P", "PA"):
        # Palette transparency is only honoured on the way to RGBA; PIL warns otherwise.
        return image.convert("RGBA").convert("RGB")
    try:
        return image.convert("RGB")
    except (ValueError, OSError) as exc:
        raise InputError(f"cannot convert {name} from mode {mode!r} to RGB: {_reason(exc)}") from None


def _array_to_rgb(array: np.ndarray, bgr: bool) -> Image.Image:
    if array.dtype != np.uint8:
        raise TypeError(f"image arrays must be uint8 [H, W], [H, W, 1], [H, W, 3] or [H, W, 4], "
                        f"got dtype {array.dtype}")
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (3, 4)):
        raise InputError(f"image arrays must have shape [H, W], [H, W, 1], [H, W, 3] or "
                         f"[H, W, 4], got {tuple(array.shape)}")
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise InputError(f"image array is empty: shape {tuple(array.shape)}")
    _check_pixels((array.shape[1], array.shape[0]), "the image array")
    if array.ndim == 2:
        return Image.fromarray(np.ascontiguousarray(array)).convert("RGB")
    rgb = array[:, :, 2::-1] if bgr else array[:, :, :3]
    return Image.fromarray(np.ascontiguousarray(rgb))


# ---------------------------------------------------------------------------------------
# Geometry


def check_input_size(size: Size, patch_size: int) -> Tuple[int, int]:
    """A model input size (an int or (H, W)) -> (H, W), checked: positive multiples of
    ``patch_size``, at most MAX_INPUT_SIDE a side and MAX_INPUT_PATCHES patches; else InputError."""
    check_positive_int("patch_size", patch_size)
    if isinstance(size, int) and not isinstance(size, bool):
        height = width = size
    elif (isinstance(size, (tuple, list)) and len(size) == 2
          and all(isinstance(v, int) and not isinstance(v, bool) for v in size)):
        height, width = size
    else:
        raise InputError(f"size must be an integer or a (height, width) pair of integers, got {size!r}")
    if height <= 0 or width <= 0 or height % patch_size or width % patch_size:
        raise InputError(f"input size must be positive multiples of the patch size {patch_size}, "
                         f"got {height}x{width} (height x width)")
    _check_input_bounds(height, width, patch_size)
    return height, width


def _check_input_bounds(height: int, width: int, patch_size: int) -> None:
    if max(height, width) > limits.MAX_INPUT_SIDE:
        raise InputError(f"input size {height}x{width} (height x width) is above the limit of "
                         f"{limits.MAX_INPUT_SIDE} pixels a side")
    patches = (height // patch_size) * (width // patch_size)
    if patches > limits.MAX_INPUT_PATCHES:
        raise InputError(f"input size {height}x{width} makes {patches:,} patches of {patch_size} pixels, "
                         f"above the limit of {limits.MAX_INPUT_PATCHES:,}")


def _check_mean_std(mean: Sequence[float], std: Sequence[float]) -> Tuple[torch.Tensor, torch.Tensor]:
    values = []
    for name, triple in (("mean", mean), ("std", std)):
        try:
            floats = [float(v) for v in triple]
        except (TypeError, ValueError):
            raise InputError(f"{name} must be 3 numbers, got {triple!r}") from None
        if len(floats) != 3 or not all(math.isfinite(v) for v in floats):
            raise InputError(f"{name} must be 3 finite numbers, got {triple!r}")
        values.append(floats)
    if min(values[1]) <= 0:
        raise InputError(f"std must be positive, got {std!r}")
    return (torch.tensor(values[0], dtype=torch.float32).view(3, 1, 1),
            torch.tensor(values[1], dtype=torch.float32).view(3, 1, 1))


def _round_div(numerator: int, denominator: int) -> int:
    """round(numerator / denominator) with halves up, exactly, for non-negative integers."""
    return (2 * numerator + denominator) // (2 * denominator)


def cover_size(original: Tuple[int, int], target: Tuple[int, int]) -> Tuple[int, int]:
    """(height, width) after scaling ``original`` to cover ``target``, aspect ratio kept.

    The binding side gets the target exactly and the other is floored, as torchvision's
    ``Resize(int)`` does (for a square target: shorter side to the target); integer
    arithmetic makes it exact.
    """
    (h0, w0), (h, w) = original, target
    if h * w0 >= w * h0:
        return h, (w0 * h) // h0
    return (h0 * w) // w0, w


def fit_size(original: Tuple[int, int], target: Tuple[int, int]) -> Tuple[int, int]:
    """(height, width) after scaling ``original`` to fit inside ``target``, aspect ratio kept.

    The binding side gets the target exactly and the other is rounded (at least 1 pixel).
    """
    (h0, w0), (h, w) = original, target
    if h * w0 <= w * h0:
        return h, min(w, max(1, _round_div(w0 * h, h0)))
    return min(h, max(1, _round_div(h0 * w, w0))), w


def crop_extent(original: Tuple[int, int], target: Tuple[int, int]) -> Tuple[int, int]:
    """(height, width) in original pixels of what a ``crop`` of ``target`` keeps of ``original``.

    The crop is the target divided by the one scale factor of the binding side, so the
    binding side is kept whole and the other gets the target's aspect ratio (rounded, at
    least 1 pixel): a square target on 640 x 480 keeps 480 x 480. It is not derived from
    ``cover_size``, whose floored side has a slightly different scale: mapping the crop
    back through it made the labels a pixel or two wider than the crop.
    """
    (h0, w0), (h, w) = original, target
    if h * w0 >= w * h0:
        return h0, min(w0, max(1, _round_div(w * h0, h)))
    return min(h0, max(1, _round_div(h * w0, w))), w0


def center_crop_offset(size: int, crop: int) -> int:
    """Offset of a centred crop, ``int(round((size - crop) / 2))`` as torchvision's CenterCrop
    (Python's round, halves to even)."""
    return int(round((size - crop) / 2.0))


@dataclass(frozen=True)
class ResizePlan:
    """How one image of ``original_size`` becomes an input frame of ``input_size`` (see the
    module doc), shared by the host (PIL) and device pre-processing.

    resize_to: (height, width) the image is resized to.
    offset:    (top, left): ``crop``: where the input frame starts in the resized image;
               ``letterbox``: where the resized image starts in the input frame; (0, 0)
               for ``squash``.
    out_size, window, crop_box: as in ``Prepared``.
    """

    original_size: Tuple[int, int]
    input_size: Tuple[int, int]
    mode: str
    resize_to: Tuple[int, int]
    offset: Tuple[int, int]
    out_size: Tuple[int, int]
    window: Optional[Tuple[float, float, float, float]] = None
    crop_box: Optional[Tuple[int, int, int, int]] = None


def plan_resize(original: Tuple[int, int], input_size: Tuple[int, int], mode: str) -> ResizePlan:
    """The ``ResizePlan`` of an image of ``original`` (H0, W0) for an input of ``input_size``
    (H, W) in ``mode`` ("squash", "crop" or "letterbox"); sizes are trusted."""
    (h0, w0), (height, width) = original, input_size
    if mode == "squash":
        return ResizePlan(original, input_size, mode, (height, width), (0, 0), original)
    if mode == "crop":
        new_h, new_w = cover_size(original, (height, width))
        top, left = center_crop_offset(new_h, height), center_crop_offset(new_w, width)
        crop_h0, crop_w0 = crop_extent(original, input_size)
        # Where the crop starts in original pixels (rounded), kept inside the image.
        top0 = min(_round_div(top * h0, new_h), h0 - crop_h0)
        left0 = min(_round_div(left * w0, new_w), w0 - crop_w0)
        return ResizePlan(original, input_size, mode, (new_h, new_w), (top, left), (crop_h0, crop_w0),
                          crop_box=(top0, left0, crop_h0, crop_w0))
    if mode != "letterbox":
        raise InputError(f"mode must be one of {', '.join(RESIZE_MODES)}, got {mode!r}")
    new_h, new_w = fit_size(original, (height, width))
    top, left = (height - new_h) // 2, (width - new_w) // 2
    window = None
    if (new_h, new_w) != (height, width):
        window = (top / height, left / width, (top + new_h) / height, (left + new_w) / width)
    return ResizePlan(original, input_size, mode, (new_h, new_w), (top, left), original, window=window)


# ---------------------------------------------------------------------------------------
# Preparation


def normalise_frames(frames: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 frames [n, h, w, 3] -> float32 [n, 3, h, w], contiguous: (x / 255 - mean) / std
    with ``mean`` and ``std`` [3, 1, 1] (``prepare``'s normalisation; a stream's trace runs it
    on whole chunks)."""
    return frames.permute(0, 3, 1, 2).to(torch.float32).div(255.0).sub(mean).div(std).contiguous()


def place_in_frame(pixels: torch.Tensor, plan: ResizePlan) -> torch.Tensor:
    """Normalised pixels [n, 3, h, w] of images resized as ``plan`` says -> the input frames
    [n, 3, H, W]: for ``letterbox``, a zero fill around them (the mean colour normalises to
    zero) at the plan's offset; otherwise ``pixels`` themselves."""
    if plan.mode != "letterbox":
        return pixels
    (height, width), (top, left), (new_h, new_w) = plan.input_size, plan.offset, plan.resize_to
    framed = torch.zeros((pixels.shape[0], 3, height, width), dtype=pixels.dtype)
    framed[:, :, top:top + new_h, left:left + new_w] = pixels
    return framed


def prepare(image: ImageSource, size: Size, *, mode: str = "squash", mean: Sequence[float],
            std: Sequence[float], patch_size: int, bgr: bool = False) -> Prepared:
    """Decode, resize and normalise one image for an input of ``size`` (see the module doc).

    ``size``: an int (square) or (H, W), multiples of ``patch_size``. Returns a ``Prepared``
    whose ``pixels`` are float32 [3, H, W]. Raises ``InputError`` for a bad size or mode and
    for an image smaller than one patch.
    """
    mean_t, std_t = _check_mean_std(mean, std)
    picture, plan = resize_frame(image, size, mode=mode, patch_size=patch_size, bgr=bgr)
    frame = torch.from_numpy(picture.copy()).unsqueeze(0)  # a copy: the caller's array may be read-only
    pixels = place_in_frame(normalise_frames(frame, mean_t, std_t), plan)[0]
    return Prepared(pixels, plan.original_size, plan.out_size, window=plan.window, crop_box=plan.crop_box)


def resize_picture(image: ImageSource, size: Size, *, mode: str = "squash", patch_size: int,
                   bgr: bool = False) -> Tuple[Image.Image, ResizePlan]:
    """The PIL stage of ``prepare``: the decoded image resized (bicubic) and, for ``crop``,
    cropped to the input size (for ``letterbox``, the resized image the frame's padding
    goes around), and its ``ResizePlan``. ``prepare`` normalises what this returns."""
    height, width = check_input_size(size, patch_size)
    if mode not in RESIZE_MODES:
        raise InputError(f"mode must be one of {', '.join(RESIZE_MODES)}, got {mode!r}")
    picture = load_image(image, bgr=bgr)
    w0, h0 = picture.size
    if h0 < patch_size or w0 < patch_size:
        raise InputError(f"image is {w0}x{h0} pixels (width x height), smaller than one "
                         f"{patch_size}x{patch_size} patch")
    plan = plan_resize((h0, w0), (height, width), mode)
    new_h, new_w = plan.resize_to
    resized = picture.resize((new_w, new_h), Image.Resampling.BICUBIC)
    if mode == "crop":
        top, left = plan.offset
        resized = resized.crop((left, top, left + width, top + height))
    return resized, plan


def resize_frame(frame: ImageSource, size: Size, *, mode: str = "squash", patch_size: int,
                 bgr: bool = False) -> Tuple[np.ndarray, ResizePlan]:
    """``resize_picture`` as a uint8 [h, w, 3] array: the same pixels and plan. A uint8
    [H, W, 3] frame the plan leaves at its size (already the input size; for ``letterbox``,
    one that fits without scaling) comes back as itself (a view, channels reversed for
    ``bgr``), with no trip through PIL; anything else goes through ``resize_picture``."""
    if (isinstance(frame, np.ndarray) and frame.dtype == np.uint8 and frame.ndim == 3 and frame.shape[2] == 3
            and mode in RESIZE_MODES and min(frame.shape[:2]) >= patch_size):
        input_size = check_input_size(size, patch_size)
        original = (int(frame.shape[0]), int(frame.shape[1]))
        plan = plan_resize(original, input_size, mode)
        unscaled = tuple(plan.resize_to) == original if mode == "letterbox" else original == input_size
        if unscaled:
            return (frame[:, :, ::-1] if bgr else frame), plan
    picture, plan = resize_picture(frame, size, mode=mode, patch_size=patch_size, bgr=bgr)
    return np.asarray(picture, dtype=np.uint8), plan


def prepare_batch(images: Union[Sequence[ImageSource], np.ndarray], size: Size, *, mode: str = "squash",
                  mean: Sequence[float], std: Sequence[float], patch_size: int,
                  bgr: bool = False) -> Tuple[torch.Tensor, List[Prepared]]:
    """``prepare`` each image and stack: returns (pixels float32 [B, 3, H, W], list of B
    ``Prepared`` whose ``pixels`` are views of that batch).

    ``images``: a list of anything ``load_image`` takes, or a uint8 array [B, H, W, C].
    """
    if isinstance(images, np.ndarray) and images.ndim == 4:
        images = list(images)
    if isinstance(images, (str, os.PathLike, Image.Image, np.ndarray)):
        raise TypeError(f"prepare_batch takes a list of images, got a single "
                        f"{type(images).__name__}; use prepare() or wrap it in a list")
    images = list(images)
    if not images:
        raise InputError("prepare_batch needs at least one image, got an empty list")
    prepared = [prepare(image, size, mode=mode, mean=mean, std=std, patch_size=patch_size, bgr=bgr)
                for image in images]
    batch = torch.stack([item.pixels for item in prepared])
    views = [Prepared(batch[i], item.original_size, item.out_size, item.window, item.crop_box)
             for i, item in enumerate(prepared)]
    return batch, views


def as_pixel_batch(tensor: torch.Tensor, patch_size: int) -> torch.Tensor:
    """Check an already normalised float tensor and return it as [B, 3, H, W].

    Accepts [3, H, W] (batch of one) or [B, 3, H, W], any float dtype and device; H and W
    must be multiples of ``patch_size`` and at least one patch. The tensor is returned as
    is (a view for 3-D input), with no copy or dtype change.
    """
    check_positive_int("patch_size", patch_size)
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"expected a torch.Tensor of normalised pixels [B, 3, H, W], got "
                        f"{type(tensor).__name__}")
    if not tensor.is_floating_point():
        raise TypeError(f"expected a floating-point tensor of normalised pixels, got {tensor.dtype}; "
                        f"raw uint8 images go through prepare()")
    if tensor.ndim == 3:
        tensor = tensor.unsqueeze(0)
    if tensor.ndim != 4:
        raise InputError(f"expected pixels of shape [3, H, W] or [B, 3, H, W], got "
                         f"{tuple(tensor.shape)}")
    batch, channels, height, width = tensor.shape
    if channels != 3:
        hint = " (channels-last? permute to [B, 3, H, W])" if width == 3 else ""
        raise InputError(f"expected 3 channels in dimension 1, got shape {tuple(tensor.shape)}{hint}")
    if batch == 0:
        raise InputError(f"expected at least one image, got shape {tuple(tensor.shape)}")
    if height < patch_size or width < patch_size or height % patch_size or width % patch_size:
        raise InputError(f"pixel height and width must be positive multiples of the patch size "
                         f"{patch_size}, got {height}x{width} (height x width)")
    _check_input_bounds(height, width, patch_size)
    if not bool(torch.isfinite(tensor).all()):
        raise InputError("the pixel tensor holds NaN or infinite values")
    return tensor
