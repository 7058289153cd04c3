"""Device pre-processing of uint8 frames: pixels against F.interpolate, geometry against
the host (PIL) path, frame forms, errors; the CUDA path on a GPU."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import clippy_rt
from clippy_rt.device_prep import prepare_frames, resample_like_pil, to_host, use_device_path
from clippy_rt.errors import InputError
from clippy_rt.images import prepare
from PIL import Image

from tolerances import TOLERANCES

# CLIP's (OpenAI) normalisation constants, typed in.
MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)


def _expected(frame: np.ndarray, resize_to, crop=None, pad=None):
    """One RGB frame through F.interpolate (bilinear, antialias) and normalisation, then an
    explicit crop (top, left, H, W) or zero pad (top, left, H, W)."""
    pixels = torch.from_numpy(frame).permute(2, 0, 1)[None].double()
    pixels = F.interpolate(pixels, size=resize_to, mode="bilinear", align_corners=False, antialias=True)
    mean = torch.tensor(MEAN, dtype=torch.float64).view(1, 3, 1, 1)
    std = torch.tensor(STD, dtype=torch.float64).view(1, 3, 1, 1)
    pixels = ((pixels / 255.0 - mean) / std)[0].float()
    if crop is not None:
        top, left, height, width = crop
        return pixels[:, top:top + height, left:left + width]
    if pad is not None:
        top, left, height, width = pad
        out = torch.zeros(3, height, width)
        out[:, top:top + pixels.shape[1], left:left + pixels.shape[2]] = pixels
        return out
    return pixels


def _frame(height, width, seed=0, channels=3):
    return np.random.default_rng(seed).integers(0, 256, (height, width, channels), dtype=np.uint8)


def test_squash_crop_letterbox_pixels_and_geometry():
    frame = _frame(45, 70)
    args = dict(mean=MEAN, std=STD, patch_size=8, resample="bilinear")
    # squash: straight to 32 x 48.
    pixels, (item,) = prepare_frames(frame, (32, 48), mode="squash", **args)
    torch.testing.assert_close(pixels[0], _expected(frame, (32, 48)), **TOLERANCES[torch.float32])
    assert item.out_size == (45, 70) and item.window is None and item.crop_box is None
    # crop to 32 x 32: cover size 32 x floor(73 * 32 / 45) = 51, offset round((51 - 32) / 2) = 10
    # (torchvision's CenterCrop rounds half to even); in original pixels round(10 * 45 / 32) = 14
    # from the left, round(32 * 73 / 51) = 46 wide.
    wide = _frame(45, 73, seed=12)
    pixels, (item,) = prepare_frames(wide, 32, mode="crop", **args)
    torch.testing.assert_close(pixels[0], _expected(wide, (32, 51), crop=(0, 10, 32, 32)),
                               **TOLERANCES[torch.float32])
    # the crop keeps 45 x 45 of the original (a square target), from round(10 * 73 / 51) = 14
    assert item.crop_box == (0, 14, 45, 45) and item.out_size == (45, 45)
    # letterbox to 32 x 32: fit 32 wide, round(45 * 32 / 70) = 21 high, top (32 - 21) // 2 = 5.
    pixels, (item,) = prepare_frames(frame, 32, mode="letterbox", **args)
    torch.testing.assert_close(pixels[0], _expected(frame, (21, 32), pad=(5, 0, 32, 32)),
                               **TOLERANCES[torch.float32])
    assert item.window == pytest.approx((5 / 32, 0.0, 26 / 32, 1.0))


@pytest.mark.parametrize("mode", ["squash", "crop", "letterbox"])
@pytest.mark.parametrize("shape", [(45, 70), (70, 45), (33, 33), (16, 100)])
def test_geometry_matches_host_path(mode, shape):
    frame = _frame(*shape, seed=1)
    _, (device_item,) = prepare_frames(frame, (32, 24), mode=mode, mean=MEAN, std=STD, patch_size=8)
    host = prepare(frame, (32, 24), mode=mode, mean=MEAN, std=STD, patch_size=8)
    assert device_item.original_size == host.original_size
    assert device_item.out_size == host.out_size
    assert device_item.window == host.window
    assert device_item.crop_box == host.crop_box
    # The same filter (bicubic): within a grey level on average (the pass order may differ
    # from Pillow's for frames shrunk on both axes); bilinear: close on average.
    device_pixels, _ = prepare_frames(frame, (32, 24), mode=mode, mean=MEAN, std=STD, patch_size=8)
    assert (device_pixels[0] - host.pixels).abs().mean() <= 1.0 / 255.0 / min(STD)
    device_pixels, _ = prepare_frames(frame, (32, 24), mode=mode, mean=MEAN, std=STD, patch_size=8,
                                      resample="bilinear")
    assert (device_pixels[0] - host.pixels).abs().mean() < 0.6


@pytest.mark.parametrize("shape,size", [((64, 64), (40, 56)), ((45, 70), (32, 48)), ((100, 60), (48, 48)),
                                        ((480, 640), (224, 224)), ((30, 40), (48, 64))])
def test_bicubic_matches_pil(shape, size):
    # PIL's 8-bit bicubic resize, against PIL itself: the two passes are rounded to 8 bits,
    # in Pillow's order (here vertical first for (64, 64) -> (40, 56) and (100, 60) -> (48, 48)).
    frame = _frame(*shape, seed=13)
    pil = np.asarray(Image.fromarray(frame).resize(size[::-1], Image.Resampling.BICUBIC)).astype(np.int64)
    ours = resample_like_pil(torch.from_numpy(frame)[None], size)[0].permute(1, 2, 0).numpy().astype(np.int64)
    difference = np.abs(ours - pil)
    assert difference.max() <= (1 if size[0] <= shape[0] else 2)
    assert (difference > 0).mean() < 0.03
    # And through prepare_frames, normalised, in BGR: the host path's pixels to a grey level.
    pixels, _ = prepare_frames(np.ascontiguousarray(frame[:, :, ::-1]), size, mean=MEAN, std=STD, patch_size=8,
                               bgr=True)
    host = prepare(frame, size, mean=MEAN, std=STD, patch_size=8).pixels
    assert (pixels[0] - host).abs().max() <= 2.0 / 255.0 / min(STD) + 1e-5


def test_bgr_grey_rgba_and_frame_forms():
    args = dict(mean=MEAN, std=STD, patch_size=8)
    frame = _frame(40, 56, seed=2)
    rgb, _ = prepare_frames(frame, 32, **args)
    bgr, _ = prepare_frames(np.ascontiguousarray(frame[:, :, ::-1]), 32, bgr=True, **args)
    torch.testing.assert_close(bgr, rgb, atol=0, rtol=0)
    rgba = np.concatenate([frame, _frame(40, 56, seed=3, channels=1)], axis=2)
    torch.testing.assert_close(prepare_frames(rgba, 32, **args)[0], rgb, atol=0, rtol=0)
    grey = frame[:, :, 1]
    expected, _ = prepare_frames(np.repeat(grey[:, :, None], 3, axis=2), 32, **args)
    torch.testing.assert_close(prepare_frames(grey, 32, **args)[0], expected, atol=0, rtol=0)
    # numpy, torch HWC, torch BHWC and a list give one batch.
    other = _frame(40, 56, seed=4)
    batch = np.stack([frame, other])
    expected, _ = prepare_frames([frame, other], 32, **args)
    for form in (batch, torch.from_numpy(batch), [torch.from_numpy(frame), torch.from_numpy(other)]):
        pixels, prepared = prepare_frames(form, 32, **args)
        torch.testing.assert_close(pixels, expected, atol=0, rtol=0)
        assert len(prepared) == 2
    assert torch.equal(expected[1], prepare_frames(other, 32, **args)[0][0])


def test_mixed_sizes_keep_order_and_dtype():
    args = dict(mean=MEAN, std=STD, patch_size=8)
    frames = [_frame(40, 56, seed=5), _frame(64, 48, seed=6), _frame(40, 56, seed=7)]
    pixels, prepared = prepare_frames(frames, 32, mode="letterbox", dtype=torch.float16, **args)
    assert pixels.dtype == torch.float16 and pixels.shape == (3, 3, 32, 32)
    for index, frame in enumerate(frames):
        alone, (item,) = prepare_frames(frame, 32, mode="letterbox", **args)
        torch.testing.assert_close(pixels[index].float(), alone[0], **TOLERANCES[torch.float16])
        assert prepared[index].window == item.window and prepared[index].out_size == frame.shape[:2]


@pytest.mark.parametrize("bad,error,match", [
    (torch.zeros(3, 40, 40, dtype=torch.uint8), InputError, "channels first"),
    (np.zeros((40, 40, 3), dtype=np.float32), TypeError, "uint8"),
    (np.zeros((40, 4, 3), dtype=np.uint8), InputError, "smaller than one 8x8 patch"),
    (np.zeros((40, 40, 2), dtype=np.uint8), InputError, r"\[H, W, 3\]"),
])
def test_bad_frames_raise_clear_errors(bad, error, match):
    with pytest.raises(error, match=match):
        prepare_frames([_frame(40, 40), bad], 32, mean=MEAN, std=STD, patch_size=8)


def test_path_choice():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    frame = _frame(40, 40)
    assert use_device_path(frame, "auto", cuda) and not use_device_path(frame, "auto", cpu)
    assert use_device_path([frame, torch.from_numpy(frame)], "device", cpu)
    assert use_device_path(frame, "kernel", cpu)
    assert not use_device_path(frame, "host", cuda)
    assert not use_device_path(["image.png"], "auto", cuda)
    with pytest.raises(InputError, match="uint8 frames"):
        use_device_path(["image.png"], "device", cpu)
    with pytest.raises(InputError, match="preprocess must be one of"):
        use_device_path(frame, "gpu", cpu)


def test_engine_prepare_routes_frames(tiny_model_dir):
    engine = clippy_rt.load(tiny_model_dir)
    frame = _frame(40, 56, seed=8)
    cfg = engine.config.image
    pixels, _ = engine.prepare(frame, preprocess="device")
    expected, _ = prepare_frames(frame, cfg.image_size, mean=cfg.mean, std=cfg.std, patch_size=cfg.patch_size)
    torch.testing.assert_close(pixels, expected, atol=0, rtol=0)
    pixels, _ = engine.prepare(frame, preprocess="kernel")
    expected, _ = prepare_frames(frame, cfg.image_size, mean=cfg.mean, std=cfg.std, patch_size=cfg.patch_size,
                                 resample="bilinear")
    torch.testing.assert_close(pixels, expected, atol=0, rtol=0)
    # On a CPU engine "auto" keeps the host path, for numpy and torch frames alike.
    host = prepare(frame, cfg.image_size, mean=cfg.mean, std=cfg.std, patch_size=cfg.patch_size).pixels
    for form in (frame, torch.from_numpy(frame)):
        pixels, _ = engine.prepare(form)
        torch.testing.assert_close(pixels[0], host, atol=0, rtol=0)


def test_to_host_passes_cpu_tensors_through():
    tensor = torch.arange(6)
    (out,) = to_host(tensor)
    assert out is tensor


@pytest.mark.gpu
@pytest.mark.parametrize("resample", ["bicubic", "bilinear"])
@pytest.mark.parametrize("mode", ["squash", "crop", "letterbox"])
def test_cuda_frames_match_cpu_reference(mode, resample):
    frames = [_frame(480, 640, seed=9), _frame(480, 640, seed=10, channels=4), _frame(300, 200, seed=11)]
    args = dict(mode=mode, mean=MEAN, std=STD, patch_size=16, bgr=True, resample=resample)
    expected, expected_items = prepare_frames(frames, 448, **args)
    for source in (frames, [torch.from_numpy(f).cuda() for f in frames]):
        pixels, items = prepare_frames(source, 448, device=torch.device("cuda"), dtype=torch.float16, **args)
        assert pixels.is_cuda and pixels.dtype == torch.float16
        # bicubic: a rounding step may land one grey level apart on a few pixels.
        difference = (pixels.float().cpu() - expected).abs()
        assert (difference > 2e-2).float().mean() < (1e-3 if resample == "bicubic" else 1e-6)
        assert difference.max() <= 1.0 / 255.0 / min(STD) + 2e-2
        assert [(i.out_size, i.window, i.crop_box) for i in items] == \
            [(i.out_size, i.window, i.crop_box) for i in expected_items]


@pytest.mark.gpu
def test_to_host_uses_pinned_buffers():
    tensor = torch.arange(1000, device="cuda", dtype=torch.int32)
    labels, scores = to_host(tensor.to(torch.uint8), tensor.float())
    assert labels.is_pinned() and scores.is_pinned() and not labels.is_cuda
    assert torch.equal(scores, torch.arange(1000, dtype=torch.float32))
    assert torch.equal(labels, torch.arange(1000).to(torch.uint8))


@pytest.mark.gpu
def test_cuda_segment_on_frames_matches_the_cpu_device_path(tiny_model_dir):
    frames = [_frame(120, 160, seed=14), _frame(120, 160, seed=15)]
    prompts = ["a red circle", "a blue square", "grass"]
    cpu = clippy_rt.load(tiny_model_dir).segment(frames, prompts, preprocess="device")
    engine = clippy_rt.load(tiny_model_dir, device="cuda", precision="fp16")
    on_host = engine.segment(frames, prompts)
    on_device = engine.segment(frames, prompts, device_output=True)
    for cpu_result, host_result, device_result in zip(cpu, on_host, on_device):
        assert host_result.labels.dtype == torch.uint8 and host_result.labels.is_pinned()
        assert device_result.labels.is_cuda and device_result.scores.is_cuda
        assert torch.equal(device_result.labels.cpu(), host_result.labels)
        # fp16 tower against fp32: labels may flip where two prompts nearly tie.
        assert (host_result.labels == cpu_result.labels).float().mean() > 0.98
