"""preprocess: the reference against torch and PIL, the Triton kernel against the reference."""

from __future__ import annotations

import importlib

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from clippy_rt.errors import BackendUnavailableError, InputError
from clippy_rt.kernels.preprocess import preprocess, preprocess_ref, resample_taps

preprocess_module = importlib.import_module("clippy_rt.kernels.preprocess")

MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)


def make_frames(batch, height, width, device="cpu", seed=0, smooth=False):
    generator = torch.Generator().manual_seed(seed)
    if not smooth:
        return torch.randint(0, 256, (batch, height, width, 3), generator=generator, dtype=torch.uint8).to(device)
    # Natural-image-like: smooth content plus noise, so resampling errors are not all at edges.
    base = torch.rand(batch, 3, 6, 6, generator=generator) * 255
    image = F.interpolate(base, size=(height, width), mode="bicubic", align_corners=False)
    image = image + 20 * torch.randn(image.shape, generator=generator)
    return image.clamp(0, 255).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous().to(device)


def to_pixels(normalised):
    """Undo the normalisation: [B, 3, H, W] -> pixel values in [0, 255] float64."""
    mean = torch.tensor(MEAN, dtype=torch.float64).view(1, 3, 1, 1)
    std = torch.tensor(STD, dtype=torch.float64).view(1, 3, 1, 1)
    return (normalised.double() * std + mean) * 255


@pytest.mark.parametrize("in_size, out_size", [(97, 31), (31, 97), (50, 50), (7, 3), (1, 5), (5, 1)])
@pytest.mark.parametrize("antialias", [True, False])
def test_taps_reproduce_interpolate(in_size, out_size, antialias):
    """The tap tables applied to a 1-D signal give F.interpolate's result."""
    signal = torch.randn(1, 1, 1, in_size, dtype=torch.float64)
    index, weight = resample_taps(in_size, out_size, antialias)
    assert index.dtype == torch.int32 and weight.dtype == torch.float32
    assert int(index.min()) >= 0 and int(index.max()) < in_size
    torch.testing.assert_close(weight.sum(dim=1), torch.ones(out_size), rtol=0, atol=1e-6)
    resampled = (signal[0, 0, 0][index.long()] * weight.double()).sum(dim=1)
    expected = F.interpolate(signal, size=(1, out_size), mode="bilinear", align_corners=False,
                             antialias=antialias)[0, 0, 0]
    torch.testing.assert_close(resampled, expected, rtol=0, atol=1e-6)


def bilinear_numpy(image, out_h, out_w):
    """Two-tap bilinear resampling (align_corners=False, edge clamping) in float64 numpy,
    written from the formula: src = (dst + 0.5) * in / out - 0.5, clamped at 0."""
    def axis(size_in, size_out):
        src = np.maximum((np.arange(size_out) + 0.5) * size_in / size_out - 0.5, 0.0)
        first = np.minimum(np.floor(src).astype(np.int64), size_in - 1)
        second = np.minimum(first + 1, size_in - 1)
        frac = np.clip(src - first, 0.0, 1.0)
        return first, second, frac

    y0, y1, fy = axis(image.shape[0], out_h)
    x0, x1, fx = axis(image.shape[1], out_w)
    rows = image[y0] * (1 - fy)[:, None, None] + image[y1] * fy[:, None, None]
    return rows[:, x0] * (1 - fx)[None, :, None] + rows[:, x1] * fx[None, :, None]


def test_ref_resamples_at_exact_coordinates():
    """1920 -> 448 columns: the reference equals float64 bilinear resampling to 1e-6 after
    normalisation. F.interpolate on float32 pixels computes its source coordinates in
    float32 and is off by up to 3.6e-4 here; the Triton kernel's taps are exact."""
    frame = make_frames(1, 5, 1920, seed=4)[0]
    got = preprocess_ref(frame, (3, 448), MEAN, STD, antialias=False)[0].permute(1, 2, 0).double()
    expected = (bilinear_numpy(frame.numpy().astype(np.float64), 3, 448) / 255 - np.array(MEAN)) / np.array(STD)
    # float32 output of values up to about 2.6: one rounding is at most 1.2e-7.
    torch.testing.assert_close(got, torch.from_numpy(expected), rtol=0, atol=1e-6)


@pytest.mark.parametrize("in_size, out_size", [(97, 131), (64, 64), (480, 224), (40, 97)])
def test_ref_close_to_pil_bilinear(in_size, out_size):
    """PIL rounds to uint8 after each pass, so it differs by under about one level."""
    frame = make_frames(1, in_size, in_size + 13, smooth=True)[0]
    size = (out_size, out_size + 7)
    pil = np.asarray(Image.fromarray(frame.numpy()).resize((size[1], size[0]), Image.BILINEAR))
    ours = to_pixels(preprocess_ref(frame, size, MEAN, STD))[0].permute(1, 2, 0)
    difference = (ours - torch.from_numpy(pil.astype(np.float64))).abs()
    assert difference.max().item() < 1.5
    assert difference.mean().item() < 0.4


def test_ref_bgr_single_frame_and_dtype():
    frame = make_frames(1, 20, 30)[0]
    rgb = preprocess_ref(frame, (10, 12), MEAN, STD)
    assert rgb.shape == (1, 3, 10, 12) and rgb.dtype == torch.float32
    bgr = preprocess_ref(frame.flip(-1), (10, 12), MEAN, STD, bgr=True)
    torch.testing.assert_close(bgr, rgb, rtol=0, atol=0)
    half = preprocess_ref(frame, (10, 12), MEAN, STD, out_dtype=torch.float16)
    assert half.dtype == torch.float16
    unchanged = preprocess_ref(frame, (20, 30), (0, 0, 0), (1, 1, 1))
    torch.testing.assert_close(unchanged * 255, frame.permute(2, 0, 1)[None].float(), rtol=0, atol=1e-4)


@pytest.mark.parametrize("call, error, message", [
    (lambda f: preprocess(f.float(), (4, 4), MEAN, STD), TypeError, "uint8"),
    (lambda f: preprocess(f[..., :2], (4, 4), MEAN, STD), InputError, r"\[B, H, W, 3\]"),
    (lambda f: preprocess(f, (4, -1), MEAN, STD), InputError, "positive integers"),
    (lambda f: preprocess(f, (4, 4), MEAN[:2], STD), InputError, "mean must be 3"),
    (lambda f: preprocess(f, (4, 4), MEAN, (1, 0, 1)), InputError, "std must be positive"),
    (lambda f: preprocess(f, (4, 4), MEAN, STD, out_dtype=torch.int8), TypeError, "out_dtype"),
    (lambda f: preprocess(f, (4, 4), MEAN, STD, impl="gpu"), InputError, "impl must be one of"),
])
def test_invalid_inputs_raise_clear_errors(call, error, message):
    with pytest.raises(error, match=message):
        call(make_frames(1, 6, 6))


def test_triton_on_cpu_without_interpreter_says_how(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(BackendUnavailableError, match="TRITON_INTERPRET=1"):
        preprocess(make_frames(1, 6, 6), (4, 4), MEAN, STD, impl="triton")


# (batch, in size, out size, antialias, bgr, out dtype): shrinking (antialiased and not),
# enlarging, mixed axes, identity, one-pixel frames. Outputs kept small for the interpreter.
KERNEL_CASES = [
    (2, (45, 61), (11, 13), True, False, torch.float32),
    (1, (45, 61), (11, 13), False, True, torch.float32),
    (1, (7, 9), (13, 11), True, False, torch.float16),
    (1, (30, 8), (9, 12), True, True, torch.bfloat16),
    (1, (12, 10), (12, 10), True, False, torch.float32),
    (1, (1, 1), (3, 4), True, False, torch.float32),
]


@pytest.mark.parametrize("batch, in_size, out_size, antialias, bgr, dtype", KERNEL_CASES)
def test_kernel_matches_reference(kernel_device, output_tol, batch, in_size, out_size, antialias, bgr, dtype):
    frames = make_frames(batch, *in_size, device=kernel_device)
    got = preprocess(frames, out_size, MEAN, STD, bgr=bgr, antialias=antialias, out_dtype=dtype,
                     impl="triton")
    expected = preprocess_ref(frames.cpu(), out_size, MEAN, STD, bgr=bgr, antialias=antialias, out_dtype=dtype)
    assert got.dtype == dtype and got.shape == expected.shape and got.device == frames.device
    # Values reach about 2 in magnitude: the float32 entry's rtol covers the summation order.
    torch.testing.assert_close(got.cpu(), expected, **output_tol[dtype])


@pytest.mark.parametrize("config_index", range(len(preprocess_module.RESIZE_CONFIGS)))
def test_kernel_every_launch_config(kernel_device, output_tol, config_index):
    """Every tile shape, on an output that no tile shape divides, shrinking one axis
    (antialiased, 5 taps) and enlarging the other (2 taps), BGR."""
    frames = make_frames(2, 37, 9, device=kernel_device)
    out = torch.empty((2, 3, 13, 70), device=kernel_device)
    taps = (*resample_taps(37, 13, True), *resample_taps(9, 70, True))
    taps = tuple(t.to(kernel_device) for t in taps)
    scales = [1.0 / (255.0 * s) for s in STD]
    biases = [-m / s for m, s in zip(MEAN, STD)]
    preprocess_module._launch_resize(out, frames, taps, scales, biases, True, config_index=config_index)
    expected = preprocess_ref(frames.cpu(), (13, 70), MEAN, STD, bgr=True)
    torch.testing.assert_close(out.cpu(), expected, **output_tol[torch.float32])


def test_kernel_strided_frames_and_single_frame(kernel_device, output_tol):
    """A crop of a larger frame (non-contiguous rows) and an unbatched [H, W, 3] frame."""
    frames = make_frames(1, 30, 40, device=kernel_device)
    crop = frames[0, 5:25, 3:33]
    assert not crop.is_contiguous()
    got = preprocess(crop, (8, 9), MEAN, STD, impl="triton")
    expected = preprocess_ref(crop.cpu().contiguous(), (8, 9), MEAN, STD)
    assert got.shape == (1, 3, 8, 9)
    torch.testing.assert_close(got.cpu(), expected, **output_tol[torch.float32])


@pytest.mark.gpu
@pytest.mark.slow
@pytest.mark.parametrize("antialias", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_kernel_sweep_gpu(antialias, dtype, output_tol):
    for in_size, out_size in [((1080, 1920), (448, 448)), ((480, 640), (224, 224)), ((224, 224), (448, 448)),
                              ((720, 1280), (1024, 1024)), ((37, 53), (223, 225))]:
        frames = make_frames(4, *in_size, device="cuda", smooth=True)
        for bgr in (False, True):
            got = preprocess(frames, out_size, MEAN, STD, bgr=bgr, antialias=antialias, out_dtype=dtype,
                             impl="triton")
            expected = preprocess_ref(frames, out_size, MEAN, STD, bgr=bgr, antialias=antialias, out_dtype=dtype)
            torch.testing.assert_close(got, expected, **output_tol[dtype])
