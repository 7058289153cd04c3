"""``clippy_rt.sources`` and ``clippy-rt segment --source``: folders, globs, videos written by
the tests with OpenCV, cameras that do not exist; docs/streams.md's camera loop run on a video."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import clippy_rt
from clippy_rt.cli.main import main as cli
from clippy_rt.errors import InputError
from clippy_rt.sources import open_source

cv2 = pytest.importorskip("cv2")
ROOT = Path(__file__).resolve().parents[1]
# Frame k is one flat colour; channel order is checked through it.
COLOURS = [(220, 30, 30), (30, 220, 30), (30, 30, 220), (200, 200, 40), (40, 200, 200), (120, 60, 180)]


def write_video(path: Path, size=(48, 64), fps=12.0) -> Path:
    """Six flat-coloured frames (RGB ``COLOURS``) with a white square, written as MJPG AVI."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (size[1], size[0]))
    for k, rgb in enumerate(COLOURS):
        frame = np.zeros((*size, 3), np.uint8)
        frame[:] = rgb[::-1]                      # OpenCV writes BGR
        frame[4 + 4 * k:20 + 4 * k, 8:24] = 255
        writer.write(frame)
    writer.release()
    return path


@pytest.fixture()
def video(tmp_path):
    return write_video(tmp_path / "clip.avi")


def test_video_frames_come_out_rgb_in_order(video):
    with open_source(video) as source:
        assert source.kind == "video" and source.count == len(COLOURS) and source.fps == pytest.approx(12.0)
        frames = list(source)
    assert [f.name for f in frames] == [f"clip_{k:06d}" for k in range(len(COLOURS))]
    for k, frame in enumerate(frames):
        assert frame.image.shape == (48, 64, 3) and frame.image.dtype == np.uint8
        corner = frame.image[40:, 40:].reshape(-1, 3).mean(0)
        assert np.abs(corner - np.array(COLOURS[k])).max() < 12, (k, corner)
        assert frame.image[6 + 4 * k, 12].min() > 200             # the white square moved with k
    assert frames[2].time_s == pytest.approx(2 / 12.0, abs=1e-3)
    with open_source(video, max_frames=2) as source:
        assert len(list(source)) == 2 and source.count == 2


def test_folder_and_glob_are_sorted_images(tmp_path, video):
    folder = tmp_path / "shots"
    folder.mkdir()
    for name, colour in (("b.png", (0, 0, 255)), ("a.jpg", (255, 0, 0)), ("c.PNG", (0, 255, 0))):
        Image.new("RGB", (20, 16), colour).save(folder / name)
    (folder / "notes.txt").write_text("not an image")
    with open_source(folder) as source:
        frames = list(source)
    assert [f.name for f in frames] == ["a", "b", "c"] and source.count == 3
    assert tuple(frames[0].image[0, 0]) == pytest.approx((254, 0, 0), abs=2)
    with open_source(str(folder / "*.png")) as source:           # case-sensitive glob: b.png only
        assert [f.name for f in source] == ["b"]
    with open_source(str(tmp_path / "**" / "*.avi")) as source:   # a glob may hold videos
        assert len(list(source)) == len(COLOURS)


@pytest.mark.parametrize("spec, message", [
    ("missing-folder/", "no such file or folder"),
    ("nothing-*.png", "no image or video file matches"),
    ("97", "^cannot open camera 97$"),
])
def test_sources_that_cannot_open(tmp_path, monkeypatch, spec, message):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(InputError, match=message):
        open_source(spec)


def test_empty_folder_and_bad_video(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="holds no image files"):
        open_source(tmp_path / "empty")
    (tmp_path / "broken.mp4").write_bytes(b"not a video at all")
    with pytest.raises(InputError, match="cannot open video file"):
        open_source(tmp_path / "broken.mp4")


def test_cli_segment_source_video(tiny_model_dir, tmp_path, capsys):
    # 40 x 60 frames: the crop is 40 x 40, even sides for the video codec.
    video = write_video(tmp_path / "clip.avi", size=(40, 60))
    out, saved = tmp_path / "out", tmp_path / "overlay.avi"
    assert cli(["segment", str(tiny_model_dir), "--source", str(video), "--prompts", "red,green,blue",
                "--out", str(out), "--save-video", str(saved), "--resize", "crop", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["frames"] == len(COLOURS) and report["kind"] == "video" and report["frames_per_s"] > 0
    # Labels equal segment's on the same decoded frames (crop: the centred square of a 48 x 64 frame).
    engine = clippy_rt.load(tiny_model_dir)
    with open_source(video) as source:
        decoded = [f.image for f in source]
    for k, image in enumerate(decoded):
        expected = engine.segment(image, ["red", "green", "blue"], resize="crop")
        with Image.open(out / f"clip_{k:06d}.labels.png") as handle:
            written = np.array(handle)
        assert torch.equal(torch.from_numpy(written), expected.labels)
        assert report["per_frame"][k]["crop_box"] == list(expected.crop_box)
        assert report["per_frame"][k]["input_size"] == [40, 60]
        assert report["per_frame"][k]["output_size"] == list(expected.labels.shape) == list(expected.crop_box[2:])
        # The centred square of the 40 x 60 frame, the shorter side whole.
        assert expected.crop_box[2:] == (40, 40) and 9 <= expected.crop_box[1] <= 11
    capture = cv2.VideoCapture(str(saved))
    assert int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) == len(COLOURS)
    # The video shows whole frames (the crop painted, the rest as it was).
    assert (int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT)), int(capture.get(cv2.CAP_PROP_FRAME_WIDTH))) == (40, 60)
    capture.release()
    assert not list(tmp_path.glob(".*partial*"))


def test_cli_source_arguments_are_checked(tiny_model_dir, tmp_path, video, capsys):
    image = tmp_path / "one.png"
    Image.new("RGB", (32, 32)).save(image)
    assert cli(["segment", str(tiny_model_dir), str(image), "--source", str(video), "--prompts", "a,b"]) == 1
    assert "not both" in capsys.readouterr().err
    assert cli(["segment", str(tiny_model_dir), "--prompts", "a,b"]) == 1
    assert "give IMAGE files or --source" in capsys.readouterr().err
    assert cli(["segment", str(tiny_model_dir), str(image), "--prompts", "a,b", "--max-frames", "3"]) == 1
    assert "go with --source" in capsys.readouterr().err
    assert cli(["segment", str(tiny_model_dir), "--source", str(video), "--prompts", "a,b",
                "--save-video", str(tmp_path / "x.gif")]) == 1
    assert "must end in" in capsys.readouterr().err


def test_docs_camera_loop_runs_on_a_video(video, monkeypatch):
    text = (ROOT / "docs" / "streams.md").read_text()
    block = next(b for b in re.findall(r"```python\n(.*?)```", text, flags=re.S) if "open_source(" in b)
    assert "open_source(0," in block
    code = block.replace("open_source(0,", f"open_source({str(video)!r},")
    namespace = {}
    exec(compile(code, "docs/streams.md", "exec"), namespace)
    assert namespace["circle"].shape == (48, 64) and namespace["circle"].dtype == bool
    assert namespace["stream"].prompts[-1] == "star"
