"""The engine against references built here, not taken from the code under test.

- Pre-processing constants typed from their published source.
- ``resize="letterbox"`` decoded independently: the image is letterboxed by hand, the
  features are upsampled over the whole input frame with F.interpolate, and the window
  the image occupies is cut out; that must be the engine's label map.
- The torch float16 and bfloat16 engines really compute in their dtype, and stay within
  a tolerance measured for them (tools/measure_tolerances.py).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import clippy_rt
from clippy_rt.config import ClippyConfig, clippy_b16, tiny

from tolerances import MEASURED_MAX_ABS, TOLERANCES

# OpenAI CLIP's pre-processing, clip/clip.py (_transform): Normalize((0.48145466, 0.4578275,
# 0.40821073), (0.26862954, 0.26130258, 0.27577711)). MODEL.md names the same constants.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@pytest.fixture(scope="module")
def engine(tiny_model_dir):
    return clippy_rt.load(tiny_model_dir)


@pytest.mark.parametrize("make", [clippy_b16, tiny, ClippyConfig])
def test_configs_carry_the_published_clip_constants(make):
    image = make().image
    assert image.mean == CLIP_MEAN
    assert image.std == CLIP_STD


def test_demo_and_random_models_carry_the_published_constants(engine):
    assert engine.config.image.mean == CLIP_MEAN and engine.config.image.std == CLIP_STD
    demo = clippy_rt.load("demo")
    assert demo.config.image.mean == CLIP_MEAN and demo.config.image.std == CLIP_STD


@pytest.mark.parametrize("resize", ["squash", "crop", "letterbox"])
def test_prepare_normalises_with_the_published_constants(engine, resize):
    colour = (200, 30, 117)
    image = np.empty((32, 32, 3), dtype=np.uint8)
    image[:] = colour
    pixels, _ = engine.prepare(image, resize=resize)
    expected = torch.tensor([(c / 255 - m) / s for c, m, s in zip(colour, CLIP_MEAN, CLIP_STD)])
    torch.testing.assert_close(pixels[0].mean(dim=(1, 2)), expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(pixels[0].amin(dim=(1, 2)), expected, atol=1e-5, rtol=0)


def _letterbox_by_hand(image: Image.Image, side: int) -> torch.Tensor:
    """[1, 3, side, side]: fit the longer side, PIL bicubic, centre, pad with the mean (0)."""
    width, height = image.size
    scale = side / max(width, height)
    new_w, new_h = round(width * scale), round(height * scale)
    resized = np.asarray(image.resize((new_w, new_h), Image.Resampling.BICUBIC), dtype=np.float64) / 255
    normalised = (resized - np.array(CLIP_MEAN)) / np.array(CLIP_STD)
    frame = torch.zeros(1, 3, side, side)
    top, left = (side - new_h) // 2, (side - new_w) // 2
    frame[0, :, top:top + new_h, left:left + new_w] = torch.from_numpy(normalised).permute(2, 0, 1).float()
    return frame


# (original height, width): each fits the 32x32 frame with a whole number of input pixels
# per original pixel, so cropping the full-frame upsampling at frame scale `zoom` is exact.
@pytest.mark.parametrize("height,width,zoom", [(16, 32, 1), (32, 64, 2), (64, 32, 2), (24, 48, 1.5)])
def test_letterbox_labels_equal_an_independent_crop_of_the_full_frame(engine, height, width, zoom):
    rng = np.random.default_rng(height * width)
    image = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
    side = engine.config.image.image_size
    frame = _letterbox_by_hand(image, side)
    pixels, _ = engine.prepare(image, resize="letterbox")
    torch.testing.assert_close(pixels, frame, atol=1e-5, rtol=0)

    prompts = ["red", "green", "blue", "a dark patch", "noise"]
    features = engine.encode_image(frame).patch.permute(0, 3, 1, 2)  # [1, D, h, w]
    text = engine.encode_text(prompts)
    full = round(side * zoom)
    upsampled = F.interpolate(features, size=(full, full), mode="bilinear", align_corners=False)
    top, left = (full - round(height * 1.0)) // 2, (full - round(width * 1.0)) // 2
    window = upsampled[..., top:top + height, left:left + width]
    logits = torch.einsum("bdhw,kd->bkhw", window, text)[0]
    expected = logits.argmax(dim=0)

    result = engine.segment(image, prompts, resize="letterbox", template="{}")
    assert result.labels.shape == (height, width)
    top2 = logits.topk(2, dim=0).values
    decided = (top2[0] - top2[1]) > 1e-5
    assert decided.float().mean() > 0.9
    assert torch.equal(result.labels[decided], expected[decided])
    torch.testing.assert_close(result.scores, top2[0], atol=1e-5, rtol=0)


@pytest.mark.parametrize("precision,dtype", [("fp16", torch.float16), ("bf16", torch.bfloat16)])
def test_reduced_precision_torch_engine_runs_in_its_dtype(tiny_model_dir, precision, dtype):
    full = clippy_rt.load(tiny_model_dir)
    half = clippy_rt.load(tiny_model_dir, precision=precision)
    assert {p.dtype for p in half.model.parameters()} == {dtype}
    seen = []
    hook = half.model.visual.register_forward_hook(lambda module, args, out: seen.append(args[0].dtype))
    try:
        pixels = torch.randn(2, 3, 32, 48, generator=torch.Generator().manual_seed(4))
        got = half.encode_image(pixels)
    finally:
        hook.remove()
    assert seen == [dtype]
    expected = full.encode_image(pixels)
    difference = (got.pooled - expected.pooled).abs().max()
    # Rounding to the narrow dtype must show (a float32 run would give ~1e-7) ...
    assert difference > 1e-5
    # ... and stay within the tolerance measured for it.
    torch.testing.assert_close(got.patch, expected.patch, **TOLERANCES[dtype])
    torch.testing.assert_close(got.pooled, expected.pooled, **TOLERANCES[dtype])
    prompts = ["cat", "a dog on grass", "sky"]
    torch.testing.assert_close(half.encode_text(prompts), full.encode_text(prompts), **TOLERANCES[dtype])
    assert MEASURED_MAX_ABS[dtype] < TOLERANCES[dtype]["atol"]
