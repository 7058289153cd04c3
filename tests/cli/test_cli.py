"""The command line on the tiny model: outputs, and one clear error line for bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clippy_rt.cli.main import main as cli


@pytest.fixture()
def images(tmp_path) -> dict:
    rng = np.random.default_rng(0)
    folder = tmp_path / "images"
    folder.mkdir()
    rgb = rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)
    paths = {}
    paths["rgb"] = folder / "rgb.png"
    Image.fromarray(rgb).save(paths["rgb"])
    paths["gray"] = folder / "gray.png"
    Image.fromarray(rgb[..., 0]).save(paths["gray"])
    paths["rgba"] = folder / "rgba.png"
    Image.fromarray(np.dstack([rgb, rgb[..., :1]])).save(paths["rgba"])
    paths["deep"] = folder / "deep.png"
    Image.fromarray((rng.integers(0, 65535, (40, 40))).astype(np.uint16)).save(paths["deep"])
    paths["palette"] = folder / "palette.png"
    Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=16).save(paths["palette"])
    paths["jpeg"] = folder / "photo.jpg"
    Image.fromarray(rgb).save(paths["jpeg"], quality=90)
    paths["truncated"] = folder / "truncated.jpg"
    paths["truncated"].write_bytes(paths["jpeg"].read_bytes()[:200])
    paths["corrupt"] = folder / "corrupt.png"
    paths["corrupt"].write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4)
    paths["tiny"] = folder / "tiny.png"
    Image.fromarray(rgb[:5, :7]).save(paths["tiny"])
    return paths


def _one_error_line(capsys) -> str:
    captured = capsys.readouterr()
    # the random-weights warning is a line of its own; the error must be one line
    lines = [line for line in captured.err.splitlines() if line.strip() and not line.startswith("warning:")]
    assert len(lines) == 1, captured.err
    assert "Traceback" not in captured.err
    return lines[0]


def test_segment_writes_pngs_for_every_image_kind(tmp_path, tiny_model_dir, images, capsys):
    out = tmp_path / "out"
    kinds = ["rgb", "gray", "rgba", "deep", "palette", "jpeg"]
    code = cli(["segment", str(tiny_model_dir), *[str(images[k]) for k in kinds],
                "--prompts", "background|sky,cat,dog", "--out", str(out), "--json"])
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    assert report["random_weights"] is True
    assert report["classes"] == ["background", "cat", "dog"]
    for kind, item in zip(kinds, report["images"]):
        labels = Image.open(out / f"{images[kind].stem}.labels.png")
        original = Image.open(images[kind])
        assert labels.mode == "P" and labels.size == original.size
        assert set(np.unique(np.asarray(labels))) <= {0, 1, 2}
        assert Image.open(out / f"{images[kind].stem}.overlay.png").size == original.size
        assert item["input_size"] == item["output_size"] == [original.height, original.width]
        assert item["crop_box"] is None
        assert item["files"] == {"labels": str(out / f"{images[kind].stem}.labels.png"),
                                 "overlay": str(out / f"{images[kind].stem}.overlay.png"), "masks": []}
        assert abs(sum(item["fractions"].values()) - 1) < 1e-6
        assert set(item["timings_ms"]) >= {"preprocess", "image", "text", "postprocess"}
    assert report["legend"] == str(out / "legend.png")
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [f"{images[k].stem}.{suffix}.png" for k in kinds for suffix in ("labels", "overlay")] + ["legend.png"])


@pytest.mark.parametrize("kind,message", [
    ("truncated", "truncated.jpg"),
    ("corrupt", "corrupt.png"),
    ("tiny", "smaller than one"),
])
def test_bad_images_fail_cleanly_and_write_nothing(tmp_path, tiny_model_dir, images, kind, message, capsys):
    out = tmp_path / "out"
    code = cli(["segment", str(tiny_model_dir), str(images["rgb"]), str(images[kind]),
                "--prompts", "a,b", "--out", str(out)])
    assert code == 1
    assert message in _one_error_line(capsys)
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_missing_image_path(tmp_path, tiny_model_dir, capsys):
    code = cli(["segment", str(tiny_model_dir), str(tmp_path / "nope.png"), "--prompts", "a,b"])
    assert code == 1
    assert "nope.png" in _one_error_line(capsys)


@pytest.mark.parametrize("prompts,message", [
    ("", "empty"),
    ("cat,,dog", "empty"),
    ("cat,dog,cat", "duplicate"),
    ("cat|,dog", "empty synonym"),
])
def test_bad_prompt_lists(tiny_model_dir, images, prompts, message, capsys):
    code = cli(["segment", str(tiny_model_dir), str(images["rgb"]), "--prompts", prompts])
    assert code == 1
    assert message in _one_error_line(capsys)


def _copy_model(tiny_model_dir, tmp_path) -> Path:
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    return model


def test_model_dir_missing_weights(tmp_path, tiny_model_dir, images, capsys):
    model = _copy_model(tiny_model_dir, tmp_path)
    (model / "weights.safetensors").unlink()
    assert cli(["segment", str(model), str(images["rgb"]), "--prompts", "a,b"]) == 1
    assert "weights.safetensors" in _one_error_line(capsys)


def test_model_dir_corrupt_weights(tmp_path, tiny_model_dir, images, capsys):
    model = _copy_model(tiny_model_dir, tmp_path)
    data = (model / "weights.safetensors").read_bytes()
    (model / "weights.safetensors").write_bytes(data[: len(data) // 2])
    assert cli(["segment", str(model), str(images["rgb"]), "--prompts", "a,b"]) == 1
    assert "corrupt" in _one_error_line(capsys)


def test_model_dir_config_does_not_match_weights(tmp_path, tiny_model_dir, images, capsys):
    model = _copy_model(tiny_model_dir, tmp_path)
    config = json.loads((model / "config.json").read_text())
    config["image"]["depth"] = 3
    config["text"]["d_ff"] = 48
    (model / "config.json").write_text(json.dumps(config))
    assert cli(["segment", str(model), str(images["rgb"]), "--prompts", "a,b"]) == 1
    line = _one_error_line(capsys)
    assert "do not match the config" in line
    assert "missing keys: visual.blocks.2" in line and "mis-shaped keys: text.blocks.0.ffn.wi.weight" in line


def test_model_dir_corrupt_config(tmp_path, tiny_model_dir, images, capsys):
    model = _copy_model(tiny_model_dir, tmp_path)
    (model / "config.json").write_text("{not json")
    assert cli(["segment", str(model), str(images["rgb"]), "--prompts", "a,b"]) == 1
    assert "not valid JSON" in _one_error_line(capsys)


def test_missing_model_dir(tmp_path, images, capsys):
    assert cli(["segment", str(tmp_path / "nowhere"), str(images["rgb"]), "--prompts", "a,b"]) == 1
    assert "not found" in _one_error_line(capsys)


def test_debug_shows_the_traceback(tmp_path, images):
    with pytest.raises(Exception):
        cli(["--debug", "segment", str(tmp_path / "nowhere"), str(images["rgb"]), "--prompts", "a,b"])


def test_classify_and_info(tiny_model_dir, images, capsys):
    assert cli(["classify", str(tiny_model_dir), str(images["rgb"]), "--labels", "cat,dog,car|automobile",
                "--top-k", "2", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    top = report["images"][0]["top"]
    assert len(top) == 2 and top[0]["probability"] >= top[1]["probability"]
    assert {t["label"] for t in top} <= {"cat", "dog", "car"}
    assert cli(["info", str(tiny_model_dir), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["random_weights"] is True and info["kind"] == "model"
    assert info["parameters"]["total"] == info["parameters"]["image"] + info["parameters"]["text"] + 1


def test_random_init_refuses_to_overwrite(tmp_path, capsys):
    out = tmp_path / "m"
    assert cli(["random-init", "--arch", "tiny", "--out", str(out)]) == 0
    capsys.readouterr()
    assert cli(["random-init", "--arch", "tiny", "--out", str(out)]) == 1
    assert "not empty" in _one_error_line(capsys)
