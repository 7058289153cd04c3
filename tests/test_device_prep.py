"""Device pre-processing of uint8 frames: pixels against F.interpolate, geometry against
the host (PIL) path, frame forms, errors; the CUDA path on a GPU."""

from __future__ import annotations

import warnings

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
                                        ((480, 640), (224, 224)), ((30, 40), (48, 64)),
                                        ((64, 64), (32, 32)), ((96, 64), (48, 32))])
def test_bicubic_matches_pil(shape, size):
    # PIL's 8-bit bicubic resize, against PIL itself: the two passes are rounded to 8 bits,
    # in Pillow's order (here vertical first for (64, 64) -> (40, 56) and (100, 60) -> (48, 48);
    # horizontal first when both sides shrink by the same factor, as (64, 64) -> (32, 32)).
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


def test_bicubic_overshoot_is_clipped_to_black_and_white():
    # Bicubic rings past 0 and 255 beside sharp edges; PIL clips each pass to 0..255, so black
    # stays 0 and white 255 (not 1, not 256).
    frame = np.zeros((60, 60, 3), dtype=np.uint8)
    frame[:, 30:] = 255
    frame[:, 2:30:4] = 255
    size = (45, 45)
    pil = np.asarray(Image.fromarray(frame).resize(size[::-1], Image.Resampling.BICUBIC)).astype(np.int64)
    ours = resample_like_pil(torch.from_numpy(frame)[None], size)[0].permute(1, 2, 0).numpy().astype(np.int64)
    assert ours.min() == 0 and ours.max() == 255
    assert np.abs(ours - pil).max() <= 1
    assert (ours[:, :, 0] == 0).sum() == (pil[:, :, 0] == 0).sum()


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


def test_grey_frames_of_one_size_share_a_batch():
    args = dict(mean=MEAN, std=STD, patch_size=8)
    greys = [_frame(40, 56, seed=20, channels=1)[:, :, 0], _frame(40, 56, seed=21, channels=1)[:, :, 0]]
    pixels, _ = prepare_frames(greys, 32, **args)
    for index, grey in enumerate(greys):
        rgb, _ = prepare_frames(np.repeat(grey[:, :, None], 3, axis=2), 32, **args)
        torch.testing.assert_close(pixels[index], rgb[0], atol=0, rtol=0)


def test_read_only_frames_are_taken_without_a_warning():
    # A read-only array (a memory-mapped or shared buffer) is copied, not handed to torch as is.
    frame = _frame(40, 56, seed=22)
    expected, _ = prepare_frames(frame.copy(), 32, mean=MEAN, std=STD, patch_size=8)
    frame.setflags(write=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pixels, _ = prepare_frames(frame, 32, mean=MEAN, std=STD, patch_size=8)
    torch.testing.assert_close(pixels, expected, atol=0, rtol=0)


def test_views_are_the_batch_rows():
    frames = [_frame(40, 56, seed=23), _frame(64, 48, seed=24)]
    for group in ([frames[0]], frames):
        pixels, prepared = prepare_frames(group, 32, mean=MEAN, std=STD, patch_size=8)
        for index, item in enumerate(prepared):
            assert torch.equal(item.pixels, pixels[index])


def test_frame_side_limits_and_error_messages():
    args = dict(mean=MEAN, std=STD, patch_size=8)
    # A side of exactly one patch is enough, on either axis.
    for shape in ((8, 40), (40, 8)):
        pixels, _ = prepare_frames(_frame(*shape), 32, **args)
        assert pixels.shape == (1, 3, 32, 32)
    # A side under one patch is refused, on either axis; the message gives width x height.
    with pytest.raises(InputError, match=r"frame 0 is 40x7 pixels \(width x height\)"):
        prepare_frames(_frame(7, 40), 32, **args)
    with pytest.raises(InputError, match=r"frame 1 is 7x40 pixels \(width x height\)"):
        prepare_frames([_frame(40, 40), _frame(40, 7)], 32, **args)
    # Bad frames are named by their position and what they are.
    good = _frame(40, 40)
    with pytest.raises(TypeError, match=r"^frame 1: frames must be uint8, got torch.float32$"):
        prepare_frames([good, torch.zeros(40, 40, 3)], 32, **args)
    with pytest.raises(TypeError, match=r"^frame 2: expected a uint8 numpy array or torch tensor, got str$"):
        prepare_frames([good, good, "frame.png"], 32, **args)
    # Channels first ([C, H, W]) gets a hint; other wrong channel counts do not.
    with pytest.raises(InputError, match=r"got \(4, 40, 40\) \(channels first\? frames are channels last"):
        prepare_frames([good, torch.zeros(4, 40, 40, dtype=torch.uint8)], 32, **args)
    with pytest.raises(InputError, match=r"got \(40, 40, 2\)$"):
        prepare_frames([good, np.zeros((40, 40, 2), dtype=np.uint8)], 32, **args)
    with pytest.raises(InputError, match="^no frames given$"):
        prepare_frames([], 32, **args)
    with pytest.raises(InputError, match=r"^mode must be one of squash, crop, letterbox, got 'fit'$"):
        prepare_frames(good, 32, mode="fit", **args)
    with pytest.raises(InputError, match=r"^resample must be one of bicubic, bilinear, got 'nearest'$"):
        prepare_frames(good, 32, resample="nearest", **args)


def test_bilinear_writes_the_requested_dtype():
    pixels, _ = prepare_frames(_frame(40, 56, seed=25), 32, mean=MEAN, std=STD, patch_size=8,
                               resample="bilinear", dtype=torch.float16)
    assert pixels.dtype == torch.float16


def test_only_uint8_frames_take_the_device_path():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    not_frames = [np.zeros((40, 40, 3), dtype=np.float32), np.zeros((40, 40, 2), dtype=np.uint8),
                  torch.zeros(40, 40, 3), np.zeros((2, 40, 40, 3), dtype=np.float32)]
    for item in not_frames:
        assert not use_device_path(item, "auto", cuda)
        with pytest.raises(InputError, match="uint8 frames"):
            use_device_path(item, "device", cpu)


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
    first, second, third = torch.arange(3), torch.zeros(2), torch.ones(4)
    assert [id(t) for t in to_host(first, second, third)] == [id(first), id(second), id(third)]


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
