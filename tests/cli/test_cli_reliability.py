"""The command line as a new user meets it: templates, limits, checksums, the umask,
per-image output, lazy decoding and label PNGs past 256 classes."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import clippy_rt.engine
import clippy_rt.images
from clippy_rt.cli.main import main as cli


def _images(folder: Path, count: int, shape=(40, 56, 3)):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(count)
    paths = []
    for index in range(count):
        path = folder / f"img{index:03d}.png"
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def _error_line(capsys) -> str:
    err = [line for line in capsys.readouterr().err.splitlines() if not line.startswith("warning:")]
    assert len(err) == 1, err
    return err[0]


@pytest.fixture()
def encoded_prompts(monkeypatch):
    seen = []
    original = clippy_rt.engine.Engine.encode_text

    def recording(self, prompts):
        seen.extend(prompts)
        return original(self, prompts)

    monkeypatch.setattr(clippy_rt.engine.Engine, "encode_text", recording)
    return seen


@pytest.mark.parametrize("command,flag", [("segment", "--prompts"), ("classify", "--labels")])
def test_template_is_applied(tmp_path, tiny_model_dir, encoded_prompts, command, flag):
    image = _images(tmp_path, 1)[0]
    assert cli([command, str(tiny_model_dir), str(image), flag, "background|sky,apple",
                "--template", "a photo of {article} {}", "--json"]) == 0
    assert set(encoded_prompts) == {"a photo of a background", "a photo of a sky", "a photo of an apple"}


@pytest.mark.parametrize("command,flag", [("segment", "--prompts"), ("classify", "--labels")])
def test_the_models_template_is_the_default_and_no_template_keeps_prompts_verbatim(tmp_path, tiny_model_dir,
                                                                                    encoded_prompts, command, flag):
    # The tiny model's config.json holds "a photo of {article} {}", as converted checkpoints do.
    image = _images(tmp_path, 1)[0]
    assert cli([command, str(tiny_model_dir), str(image), flag, "background|sky,apple", "--json"]) == 0
    assert set(encoded_prompts) == {"a photo of a background", "a photo of a sky", "a photo of an apple"}
    encoded_prompts.clear()
    assert cli([command, str(tiny_model_dir), str(image), flag, "background|sky,apple", "--json",
                "--no-template"]) == 0
    assert set(encoded_prompts) == {"background", "sky", "apple"}


def test_source_frames_get_the_models_template(tmp_path, tiny_model_dir, encoded_prompts):
    folder = tmp_path / "frames"
    _images(folder, 2)
    assert cli(["segment", str(tiny_model_dir), "--source", str(folder), "--prompts", "cat,owl", "--json"]) == 0
    assert set(encoded_prompts) == {"a photo of a cat", "a photo of an owl"}


@pytest.mark.parametrize("command,flag", [("segment", "--prompts"), ("classify", "--labels"), ("bag", "--prompts")])
def test_template_and_no_template_together_are_refused(tmp_path, tiny_model_dir, capsys, command, flag):
    args = [command, str(tiny_model_dir), str(tmp_path / "x.png"), flag, "cat", "--template", "a {}", "--no-template"]
    with pytest.raises(SystemExit) as exit_info:
        cli(args)
    assert exit_info.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err


@pytest.mark.parametrize("command,flag", [("segment", "--prompts"), ("classify", "--labels")])
def test_template_without_placeholder_is_refused(tmp_path, tiny_model_dir, capsys, command, flag):
    image = _images(tmp_path, 1)[0]
    out = tmp_path / "out"
    assert cli([command, str(tiny_model_dir), str(image), flag, "a,b", "--template", "a photo",
                *(["--out", str(out)] if command == "segment" else [])]) == 1
    assert "template 'a photo' has no '{}'" in _error_line(capsys)
    assert not out.exists()


def test_size_past_the_limit_is_one_line(tmp_path, tiny_model_dir, capsys):
    image = _images(tmp_path, 1)[0]
    assert cli(["segment", str(tiny_model_dir), str(image), "--prompts", "a,b", "--size", "100000"]) == 1
    assert "above the limit of 4096 pixels a side" in _error_line(capsys)


def test_info_fails_on_a_checksum_mismatch(tmp_path, tiny_onnx_dir, capsys):
    assert cli(["info", str(tiny_onnx_dir)]) == 0
    capsys.readouterr()
    copy = shutil.copytree(tiny_onnx_dir, tmp_path / "copy")
    graph = copy / "image.onnx"
    data = bytearray(graph.read_bytes())
    data[-20] ^= 0xFF  # same size, other bytes
    graph.write_bytes(bytes(data))
    assert cli(["info", str(copy)]) == 1
    assert "does not match its sha256" in _error_line(capsys)


def test_outputs_follow_the_umask(tmp_path, tiny_model_dir):
    image = _images(tmp_path / "in", 1)[0]
    previous = os.umask(0o027)
    try:
        assert cli(["random-init", "--arch", "tiny", "--out", str(tmp_path / "model")]) == 0
        assert cli(["segment", str(tiny_model_dir), str(image), "--prompts", "a,b",
                    "--out", str(tmp_path / "seg"), "--json"]) == 0
    finally:
        os.umask(previous)
    assert (tmp_path / "model").stat().st_mode & 0o777 == 0o750
    assert (tmp_path / "seg").stat().st_mode & 0o777 == 0o750
    for path in [*(tmp_path / "model").iterdir(), *(tmp_path / "seg").iterdir()]:
        assert path.stat().st_mode & 0o777 == 0o640, path


def test_segment_writes_each_image_as_it_finishes(tmp_path, tiny_model_dir, capsys):
    paths = _images(tmp_path / "in", 4)
    broken = paths[2]
    broken.write_bytes(broken.read_bytes()[:120])  # the header reads, the pixels do not
    out = tmp_path / "out"
    assert cli(["segment", str(tiny_model_dir), *map(str, paths), "--prompts", "a,b", "--out", str(out),
                "--json"]) == 1
    assert "cannot decode image file" in _error_line(capsys)
    assert sorted(p.name for p in out.iterdir()) == ["img000.labels.png", "img000.overlay.png",
                                                      "img001.labels.png", "img001.overlay.png", "legend.png"]
    for written in out.iterdir():
        Image.open(written).load()  # complete files
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in", "out"]


def test_segment_decodes_one_image_at_a_time(tmp_path, tiny_model_dir, monkeypatch):
    paths = _images(tmp_path / "in", 3)
    events = []
    load, segment = clippy_rt.images.load_image, clippy_rt.engine.Engine.segment
    def decode(source, **kwargs):
        if isinstance(source, (str, Path)):  # a file; the overlay re-reads the decoded image
            events.append("decode")
        return load(source, **kwargs)

    monkeypatch.setattr(clippy_rt.images, "load_image", decode)
    monkeypatch.setattr(clippy_rt.engine.Engine, "segment",
                        lambda self, *a, **k: events.append("segment") or segment(self, *a, **k))
    assert cli(["segment", str(tiny_model_dir), *map(str, paths), "--prompts", "a,b", "--out",
                str(tmp_path / "out"), "--json"]) == 0
    assert events[:6] == ["decode", "segment"] * 3


def test_more_than_256_classes_write_16_bit_grayscale(tmp_path, tiny_model_dir):
    image = _images(tmp_path / "in", 1)[0]
    classes = ",".join(f"class {i}" for i in range(300))
    assert cli(["segment", str(tiny_model_dir), str(image), "--prompts", classes, "--out", str(tmp_path / "out"),
                "--json"]) == 0
    written = Image.open(tmp_path / "out" / "img000.labels.png")
    assert written.mode in ("I;16", "I")  # 16-bit grayscale, no palette
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    assert "16-bit grayscale PNG for more than 256 classes" in readme
