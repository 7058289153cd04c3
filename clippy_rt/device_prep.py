"""Camera frames pre-processed on their device: uint8 HWC -> resized, normalised pixels.

The host path (``clippy_rt.images``: PIL bicubic) is the reference; this is the fast path
for frames that are already bytes in memory (camera drivers, OpenCV, decoders). For a
frame of H0 x W0 pixels and an input of H x W it follows the same geometry
(``clippy_rt.images.plan_resize``: ``squash``, ``crop`` or ``letterbox``, with the same
``out_size``, ``window`` and ``crop_box``); the frames cross to the device as bytes,
through pinned memory. Two resamplers (``resample``):

- ``"bicubic"`` (the default): PIL's bicubic filter on the device with torch ops, as PIL
  computes it on 8-bit images: two separable passes of the antialiased bicubic filter
  (a = -0.5, ``F.interpolate(mode="bicubic", antialias=True)``), each rounded and clipped
  to 0..255, in the order Pillow runs them in most cases (vertical first when the height
  shrinks and H * W0 < H0 * W or the width grows). Where the order matches, pixels agree
  with the host path's to one grey level on a few pixels in a thousand; where it does
  not (some frames shrunk on both axes), by a few grey levels on about a third of them.
- ``"bilinear"``: ``clippy_rt.kernels.preprocess``, one fused pass (bilinear,
  antialiased when shrinking, normalised, written in the model's dtype): the Triton
  kernel on CUDA, its torch reference ``preprocess_ref`` elsewhere. Fastest; not PIL's
  filter, so labels differ from the host path's near class boundaries (docs/streams.md
  gives the measured agreement).

Accepted frames (one, a list, or a batch): numpy uint8 [H, W], [H, W, 1], [H, W, 3] or
[H, W, 4] and [B, H, W, C]; torch uint8 [H, W, C] or [B, H, W, C] on any device (HWC,
channels last, as cameras and OpenCV deliver them). ``bgr=True`` reads 3- and
4-channel frames as BGR / BGRA; alpha is dropped, as on the host path.
"""

from __future__ import annotations

import functools
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from .errors import InputError
from .images import RESIZE_MODES, Prepared, Size, check_input_size, plan_resize

PREPROCESS_CHOICES = ("auto", "host", "device", "kernel")
RESAMPLERS = ("bicubic", "bilinear")
_CHANNELS = (1, 3, 4)


def is_frame(item) -> bool:
    """Whether ``item`` is one uint8 frame the device path takes (see the module doc)."""
    if isinstance(item, np.ndarray):
        return item.dtype == np.uint8 and (item.ndim == 2 or (item.ndim == 3 and item.shape[2] in _CHANNELS))
    if isinstance(item, torch.Tensor):
        return item.dtype == torch.uint8 and item.ndim == 3
    return False


def frames_of(images) -> Optional[List]:
    """``images`` as a list of single frames when every item is a uint8 frame (a batch
    [B, H, W, C] is split into its frames), else None (PIL images, paths, float tensors)."""
    if isinstance(images, (np.ndarray, torch.Tensor)) and images.ndim == 4:
        return list(images) if images.dtype in (np.uint8, torch.uint8) else None
    items = list(images) if isinstance(images, (list, tuple)) else [images]
    if items and all(is_frame(item) for item in items):
        return items
    return None


def use_device_path(images, preprocess: str, device: torch.device) -> bool:
    """Whether ``Engine.prepare`` sends ``images`` through this module.

    ``preprocess``: "auto" (uint8 frames on a CUDA engine), "device" / "kernel" (uint8
    frames, any device; "kernel" picks the bilinear resampler, see ``resampler_of``) or
    "host" (never). Raises InputError for an unknown choice, or for "device" / "kernel"
    with inputs that are not uint8 frames.
    """
    if preprocess not in PREPROCESS_CHOICES:
        raise InputError(f"preprocess must be one of {', '.join(PREPROCESS_CHOICES)}, got {preprocess!r}")
    if preprocess == "host":
        return False
    frames = frames_of(images)
    if preprocess in ("device", "kernel"):
        if frames is None:
            raise InputError(f"preprocess={preprocess!r} takes uint8 frames (numpy or torch, [H, W, C] or "
                             "[B, H, W, C]); decode files and PIL images on the host (preprocess='host')")
        return True
    return frames is not None and device.type == "cuda"


def resampler_of(preprocess: str) -> str:
    """The resampler of a device ``preprocess`` choice: "kernel" -> "bilinear", else "bicubic"."""
    return "bilinear" if preprocess == "kernel" else "bicubic"


def as_frame_tensor(frame, index: int) -> torch.Tensor:
    """One frame -> a uint8 [H, W, C] torch tensor (a view where possible), C in 1, 3, 4."""
    if isinstance(frame, np.ndarray):
        if frame.dtype != np.uint8:
            raise TypeError(f"frame {index}: frames must be uint8, got dtype {frame.dtype}")
        if frame.ndim == 2:
            frame = frame[:, :, None]
        if not frame.flags.writeable:
            frame = frame.copy()  # torch.from_numpy wants a writeable array
        tensor = torch.from_numpy(frame)
    elif isinstance(frame, torch.Tensor):
        if frame.dtype != torch.uint8:
            raise TypeError(f"frame {index}: frames must be uint8, got {frame.dtype}")
        tensor = frame.detach()
    else:
        raise TypeError(f"frame {index}: expected a uint8 numpy array or torch tensor, got {type(frame).__name__}")
    if tensor.ndim != 3 or tensor.shape[2] not in _CHANNELS:
        hint = " (channels first? frames are channels last: [H, W, C])" if tensor.ndim == 3 and \
            tensor.shape[0] in (3, 4) else ""
        raise InputError(f"frame {index}: expected shape [H, W], [H, W, 1], [H, W, 3] or [H, W, 4], "
                         f"got {tuple(tensor.shape)}{hint}")
    return tensor


def concrete_device(device: torch.device) -> torch.device:
    """``cuda`` -> ``cuda:N`` (the current device), so it compares equal to tensors' devices."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", torch.cuda.current_device())
    return device


def upload(frames: Sequence[torch.Tensor], device: torch.device) -> torch.Tensor:
    """Stack same-size uint8 frames [H, W, C] into [B, H, W, C] on ``device``.

    Host frames bound for CUDA are gathered into one pinned buffer and copied with
    ``non_blocking=True`` (queued on the current stream; later work on that stream sees it).
    """
    device = concrete_device(device)
    if all(frame.device == device for frame in frames):
        return torch.stack(list(frames)) if len(frames) > 1 else frames[0][None]
    if device.type == "cuda":
        on_host = [frame.cpu() for frame in frames]
        staging = torch.empty((len(frames), *on_host[0].shape), dtype=torch.uint8, pin_memory=True)
        torch.stack(on_host, out=staging)
        return staging.to(device, non_blocking=True)
    return torch.stack([frame.to(device) for frame in frames])


def resample_like_pil(batch: torch.Tensor, out_size: Tuple[int, int], bgr: bool = False) -> torch.Tensor:
    """uint8 [B, H0, W0, 3] -> float32 [B, 3, H, W] RGB holding whole numbers 0..255: PIL's
    8-bit bicubic resize (see the module doc), on the frames' device."""
    height, width = out_size
    pixels = batch.permute(0, 3, 1, 2).float()
    if bgr:
        pixels = pixels.flip(1)
    in_height, in_width = pixels.shape[-2:]
    passes = [(in_height, width), (height, width)]
    # Pillow's pass order, as observed: vertical first when the height shrinks and that
    # pass is the cheaper one to run first (it always is when the width grows).
    if height < in_height and (width >= in_width or height * in_width < in_height * width):
        passes[0] = (height, in_width)
    for size in passes:
        if tuple(pixels.shape[-2:]) != size:
            pixels = F.interpolate(pixels, size=size, mode="bicubic", align_corners=False, antialias=True)
            pixels = pixels.round_().clamp_(0.0, 255.0)
    return pixels


def _resample(group: torch.Tensor, out_size, mean, std, bgr: bool, dtype: torch.dtype, resample: str,
              impl: str) -> torch.Tensor:
    """Resize and normalise [B, H0, W0, 3] uint8 -> [B, 3, H, W] ``dtype``."""
    from .kernels.preprocess import preprocess

    if resample == "bilinear":
        return preprocess(group, out_size, mean, std, bgr=bgr, antialias=True, out_dtype=dtype, impl=impl)
    pixels = resample_like_pil(group, out_size, bgr)
    mean_t, std_t = _channel_constants(tuple(mean), tuple(std), pixels.device)
    return pixels.div_(255.0).sub_(mean_t).div_(std_t).to(dtype)


@functools.lru_cache(maxsize=16)
def _channel_constants(mean: Tuple[float, ...], std: Tuple[float, ...], device: torch.device):
    """mean and std as [1, 3, 1, 1] float32 on ``device``, made once (no upload inside a
    CUDA graph capture)."""
    return (torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1).to(device),
            torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1).to(device))


def _rgb_view(batch: torch.Tensor) -> torch.Tensor:
    """[B, H, W, C] uint8 -> a [B, H, W, 3] view: grey repeated (stride 0), alpha dropped."""
    if batch.shape[-1] == 1:
        return batch.expand(-1, -1, -1, 3)
    return batch[..., :3]


def prepare_frames(frames, size: Size, *, mode: str = "squash", mean: Sequence[float], std: Sequence[float],
                   patch_size: int, bgr: bool = False, device: torch.device = torch.device("cpu"),
                   dtype: torch.dtype = torch.float32, resample: str = "bicubic", impl: str = "auto"
                   ) -> Tuple[torch.Tensor, List[Prepared]]:
    """Frames (one, a list, or [B, H, W, C]) -> (pixels [B, 3, H, W] of ``dtype`` on
    ``device``, per-frame ``Prepared`` whose ``pixels`` are views of that batch).

    Frames of one size are resampled together. ``resample``: "bicubic" or "bilinear" (see
    the module doc); ``impl`` is passed to ``clippy_rt.kernels.preprocess`` for
    "bilinear" ("auto": Triton on CUDA, torch elsewhere). Raises
    InputError / TypeError naming the bad frame; nothing is uploaded before every frame
    has been checked.
    """
    height, width = check_input_size(size, patch_size)
    device = concrete_device(device)
    if mode not in RESIZE_MODES:
        raise InputError(f"mode must be one of {', '.join(RESIZE_MODES)}, got {mode!r}")
    if resample not in RESAMPLERS:
        raise InputError(f"resample must be one of {', '.join(RESAMPLERS)}, got {resample!r}")
    mean, std = [float(v) for v in mean], [float(v) for v in std]
    items = frames_of(frames)
    if items is None:
        items = list(frames) if isinstance(frames, (list, tuple)) else [frames]
    if not items:
        raise InputError("no frames given")
    tensors = [as_frame_tensor(frame, index) for index, frame in enumerate(items)]
    for index, tensor in enumerate(tensors):
        if tensor.shape[0] < patch_size or tensor.shape[1] < patch_size:
            raise InputError(f"frame {index} is {tensor.shape[1]}x{tensor.shape[0]} pixels (width x height), "
                             f"smaller than one {patch_size}x{patch_size} patch")

    groups = {}
    for index, tensor in enumerate(tensors):
        groups.setdefault(tuple(tensor.shape), []).append(index)
    single_group = len(groups) == 1
    batch = None if single_group else torch.empty((len(tensors), 3, height, width), dtype=dtype, device=device)
    prepared: List[Optional[Prepared]] = [None] * len(tensors)
    for shape, indices in groups.items():
        plan = plan_resize(shape[:2], (height, width), mode)
        group = _rgb_view(upload([tensors[i] for i in indices], device))
        resized = _resample(group, plan.resize_to, mean, std, bgr and shape[2] != 1, dtype, resample, impl)
        top, left = plan.offset
        if mode == "crop":
            pixels = resized[:, :, top:top + height, left:left + width]
        elif mode == "letterbox" and plan.resize_to != (height, width):
            # The mean colour normalises to zero, so padding is a zero fill.
            pixels = resized.new_zeros((len(indices), 3, height, width))
            new_h, new_w = plan.resize_to
            pixels[:, :, top:top + new_h, left:left + new_w] = resized
        else:
            pixels = resized
        if single_group:
            batch = pixels.contiguous()
        else:
            batch[indices] = pixels
        for index in indices:
            prepared[index] = plan
    views = [Prepared(batch[i], plan.original_size, plan.out_size, plan.window, plan.crop_box)
             for i, plan in enumerate(prepared)]
    return batch, views


def to_host(*tensors: torch.Tensor) -> Tuple[torch.Tensor, ...]:
    """Copy tensors to the CPU; CUDA tensors go through pinned buffers with non-blocking
    copies and one wait on the current stream (the buffers come from torch's caching host
    allocator, so steady-state calls allocate nothing new). CPU tensors are returned as is."""
    copies = []
    waits = set()
    for tensor in tensors:
        if not tensor.is_cuda:
            copies.append(tensor)
            continue
        host = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
        host.copy_(tensor, non_blocking=True)
        copies.append(host)
        waits.add(tensor.device)
    for device in waits:
        torch.cuda.current_stream(device).synchronize()
    return tuple(copies)
