"""Order of results when a call mixes frame sizes (A, B, A): every path that groups frames
(``Engine.segment``'s pre-processing, ``Stream``'s chunks, ``FrameProcessor.process``) answers
in input order, each frame as it is answered alone."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import clippy_rt
from clippy_rt.robotics.processor import FrameProcessor

PROMPTS = ["a red circle", "a blue square", "noise", "a green star"]


@pytest.fixture(scope="module")
def engine(tiny_model_dir):
    return clippy_rt.load(tiny_model_dir)


def _mixed_frames():
    """A, B, A', B', A'': two shapes alternating, every frame different (a dark one, a
    bright one, noise) so that a swap between frames of one shape shows too."""
    rng = np.random.default_rng(5)
    a0 = rng.integers(0, 256, (40, 56, 3), dtype=np.uint8)
    b0 = rng.integers(0, 80, (48, 32, 3), dtype=np.uint8)
    a1 = np.clip(rng.normal(200, 20, (40, 56, 3)), 0, 255).astype(np.uint8)
    b1 = rng.integers(150, 256, (48, 32, 3), dtype=np.uint8)
    a2 = np.zeros((40, 56, 3), np.uint8)
    a2[:, 28:] = 255
    return [a0, b0, a1, b1, a2]


def _alone(engine, frames, **kwargs):
    """Each frame segmented in a call of its own: nothing to group or reorder."""
    return [engine.segment(frame, PROMPTS, size=32, **kwargs) for frame in frames]


def _assert_in_order(results, expected):
    assert len(results) == len(expected)
    for index, (got, want) in enumerate(zip(results, expected)):
        assert got.labels.shape == want.labels.shape, f"frame {index}"
        torch.testing.assert_close(got.scores, want.scores, atol=1e-4, rtol=0, msg=f"frame {index}")
        assert got.crop_box == want.crop_box


@pytest.mark.parametrize("preprocess", ["host", "device", "kernel"])
@pytest.mark.parametrize("resize", ["squash", "crop"])
def test_segment_keeps_input_order(engine, preprocess, resize):
    frames = _mixed_frames()
    expected = _alone(engine, frames, resize=resize, preprocess=preprocess)
    _assert_in_order(engine.segment(frames, PROMPTS, size=32, resize=resize, preprocess=preprocess), expected)


@pytest.mark.parametrize("preprocess", ["host", "device", "kernel"])
@pytest.mark.parametrize("batch", [1, 3])
def test_stream_keeps_input_order(engine, preprocess, batch):
    frames = _mixed_frames()
    expected = _alone(engine, frames, preprocess=preprocess)
    stream = engine.stream(PROMPTS, size=32, batch=batch, preprocess=preprocess)
    _assert_in_order(stream(frames), expected)
    # A batch tensor of one shape, then the mixed list again on the same stream.
    same = [frames[0], frames[2], frames[4]]
    _assert_in_order(stream(torch.from_numpy(np.stack(same))), [expected[0], expected[2], expected[4]])


def test_frame_processor_keeps_input_order(engine):
    frames = _mixed_frames()
    processor = FrameProcessor(engine, PROMPTS, size=32, batch=2)
    _assert_in_order(processor.process(frames), _alone(engine, frames, preprocess="host"))
