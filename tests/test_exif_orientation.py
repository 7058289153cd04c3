"""Every EXIF orientation (1-8) on every entry point that reads file bytes: the Python API
(``load_image``, ``probe_image``, ``Engine.segment`` on a path), the command line and the bag
tool's compressed frames. A photo comes out as viewers show it, equal to the upright pixels.

The expectation is written from the EXIF 2.3 table 'Orientation' with numpy, not with PIL:
a file tagged ``o`` stores the upright picture turned by the inverse of what ``o`` says
to do for display."""

from __future__ import annotations

import io
import json
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

import clippy_rt
from clippy_rt.images import load_image, probe_image
from clippy_rt.robotics import messages

PROMPTS = ["a red circle", "a blue square", "grass"]
ORIENTATIONS = range(1, 9)


def _transverse(array):
    return np.rot90(array, 2).swapaxes(0, 1)


# What a viewer does to the stored pixels for each tag (EXIF 2.3).
TO_DISPLAY = {
    1: lambda a: a,
    2: lambda a: a[:, ::-1],                 # mirrored left-right
    3: lambda a: np.rot90(a, 2),             # turned 180 degrees
    4: lambda a: a[::-1],                    # mirrored top-bottom
    5: lambda a: a.swapaxes(0, 1),           # mirrored along the main diagonal
    6: lambda a: np.rot90(a, -1),            # turned 90 degrees clockwise
    7: _transverse,                          # mirrored along the other diagonal
    8: lambda a: np.rot90(a, 1),             # turned 90 degrees counter-clockwise
}
# The stored pixels for an upright picture: the inverse of each turn.
TO_STORED = {**TO_DISPLAY, 6: lambda a: np.rot90(a, 1), 8: lambda a: np.rot90(a, -1)}



def _upright():
    """A smooth picture (JPEG keeps it) with no symmetry: red grows to the right, green
    downwards, a blue block sits top left; every flip or turn changes it (and its shape)."""
    picture = np.zeros((24, 40, 3), np.uint8)
    picture[:, :, 0] = np.linspace(0, 255, 40)[None, :]
    picture[:, :, 1] = np.linspace(0, 255, 24)[:, None]
    picture[:8, :12, 2] = 255
    return picture


UPRIGHT = _upright()


@pytest.fixture(scope="module")
def engine(tiny_model_dir):
    return clippy_rt.load(tiny_model_dir)


def _file_bytes(orientation: int, codec: str = "PNG") -> bytes:
    stored = np.ascontiguousarray(TO_STORED[orientation](UPRIGHT))
    picture = Image.fromarray(stored)
    exif = picture.getexif()
    exif[0x0112] = orientation
    buffer = io.BytesIO()
    picture.save(buffer, format=codec, exif=exif.tobytes(), **({"quality": 95} if codec == "JPEG" else {}))
    return buffer.getvalue()


def test_the_expected_turns_invert_each_other():
    for orientation in ORIENTATIONS:
        np.testing.assert_array_equal(TO_DISPLAY[orientation](TO_STORED[orientation](UPRIGHT)), UPRIGHT)


@pytest.mark.parametrize("orientation", ORIENTATIONS)
def test_python_api(tmp_path, engine, orientation):
    path = tmp_path / f"photo-{orientation}.png"
    path.write_bytes(_file_bytes(orientation))
    np.testing.assert_array_equal(np.asarray(load_image(path)), UPRIGHT)
    assert probe_image(path) == (UPRIGHT.shape[1], UPRIGHT.shape[0])
    got = engine.segment(path, PROMPTS, size=32)
    want = engine.segment(UPRIGHT, PROMPTS, size=32)
    assert got.labels.shape == UPRIGHT.shape[:2]
    assert np.array_equal(got.labels.numpy(), want.labels.numpy())


def test_command_line(tmp_path, tiny_model_dir, engine, capsys):
    from clippy_rt.cli.main import main

    paths = []
    for orientation in ORIENTATIONS:
        paths.append(tmp_path / f"photo-{orientation}.png")
        paths[-1].write_bytes(_file_bytes(orientation))
    out = tmp_path / "out"
    assert main(["segment", str(tiny_model_dir), *map(str, paths), "--prompts", ",".join(PROMPTS),
                 "--size", "32", "--out", str(out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    want = engine.segment(UPRIGHT, PROMPTS, size=32).labels.numpy()
    for path, item in zip(paths, report["images"]):
        assert item["input_size"] == list(UPRIGHT.shape[:2]), path.name
        labels = np.asarray(Image.open(out / f"{path.stem}.labels.png"))
        np.testing.assert_array_equal(labels, want, err_msg=path.name)


@pytest.mark.parametrize("codec", ["PNG", "JPEG"])
@pytest.mark.parametrize("orientation", ORIENTATIONS)
def test_bag_compressed_frames(orientation, codec):
    message = SimpleNamespace(header=SimpleNamespace(stamp=SimpleNamespace(sec=1, nanosec=2), frame_id="cam"),
                              format=codec.lower(), data=_file_bytes(orientation, codec))
    frame = messages.message_to_frame(message)
    assert frame.shape == UPRIGHT.shape
    if codec == "PNG":
        np.testing.assert_array_equal(frame, UPRIGHT)
    else:
        # JPEG is lossy: each pixel near its upright value, far from any other turn's.
        error = np.abs(frame.astype(int) - UPRIGHT).mean()
        assert error < 12, error
