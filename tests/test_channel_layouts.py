"""Every channel layout (RGB, BGR, RGBA, BGRA, grey [H, W] and [H, W, 1]) with ``bgr`` off and on,
on every pre-processing path (host PIL, device bicubic, fused bilinear kernel), against what
the layout means: colours worked out by hand with numpy."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import clippy_rt

LAYOUTS = ["rgb", "bgr", "rgba", "bgra", "grey", "grey1"]
PATHS = ["host", "device", "kernel"]
# A colour whose channels all differ, and an alpha that differs from each of them.
COLOUR = (200, 100, 30)
ALPHA = 7


@pytest.fixture(scope="module")
def engine(tiny_model_dir):
    return clippy_rt.load(tiny_model_dir)


def _store(rgb: np.ndarray, layout: str) -> np.ndarray:
    """An RGB frame written in ``layout``'s byte order, as a camera or decoder would."""
    alpha = np.full(rgb.shape[:2] + (1,), ALPHA, np.uint8)
    stored = {"rgb": rgb, "bgr": rgb[:, :, ::-1], "rgba": np.concatenate([rgb, alpha], axis=2),
              "bgra": np.concatenate([rgb[:, :, ::-1], alpha], axis=2), "grey": rgb[:, :, 1],
              "grey1": rgb[:, :, 1:2]}[layout]
    return np.ascontiguousarray(stored)


def _seen_as_rgb(stored: np.ndarray, bgr: bool) -> np.ndarray:
    """What the model must see for ``stored`` read with ``bgr``: grey repeated, alpha dropped,
    the first three channels reversed when ``bgr``."""
    if stored.ndim == 2 or stored.shape[2] == 1:
        grey = stored.reshape(stored.shape[:2])
        return np.repeat(grey[:, :, None], 3, axis=2)
    colour = stored[:, :, :3]
    return np.ascontiguousarray(colour[:, :, ::-1] if bgr else colour)


def _prepare(engine, frame, bgr, path, as_torch=False):
    if as_torch:
        frame = torch.from_numpy(frame if frame.ndim == 3 else frame[:, :, None])
    return engine.prepare([frame], 32, "squash", bgr, path).pixels[0]


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("bgr", [False, True])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_a_flat_colour_gives_its_normalised_value(engine, layout, bgr, path):
    rgb = np.empty((24, 40, 3), np.uint8)
    rgb[:] = COLOUR
    stored = _store(rgb, layout)
    seen = _seen_as_rgb(stored, bgr)[0, 0]
    mean, std = engine.config.image.mean, engine.config.image.std
    expected = torch.tensor([(seen[c] / 255.0 - mean[c]) / std[c] for c in range(3)], dtype=torch.float32)
    pixels = _prepare(engine, stored, bgr, path).float()
    assert pixels.shape == (3, 32, 32)
    torch.testing.assert_close(pixels, expected.view(3, 1, 1).expand(3, 32, 32), atol=1e-5, rtol=0)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("bgr", [False, True])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_every_layout_equals_its_rgb_frame(engine, layout, bgr, path):
    rgb = np.random.default_rng(11).integers(0, 256, (24, 40, 3), dtype=np.uint8)
    stored = _store(rgb, layout)
    expected = _prepare(engine, _seen_as_rgb(stored, bgr), False, path)
    torch.testing.assert_close(_prepare(engine, stored, bgr, path), expected, atol=0, rtol=0)
    if path != "host":
        torch.testing.assert_close(_prepare(engine, stored, bgr, path, as_torch=True), expected, atol=0, rtol=0)
