"""Bad input is refused at the boundary in one clear error: API arguments, sizes past the
limits, oversized images, NaN/Inf in pixels, weights or outputs, EXIF orientation."""

from __future__ import annotations

import json
import shutil
import struct
import time
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

import clippy_rt
from clippy_rt.config import ClippyConfig
from clippy_rt.errors import CheckpointError, ConfigError, InputError, NumericsError
from clippy_rt.images import load_image, probe_image


@pytest.fixture(scope="module")
def engine(tiny_model_dir):
    return clippy_rt.load(tiny_model_dir)


IMAGE = np.random.default_rng(0).integers(0, 256, (40, 40, 3), dtype=np.uint8)
PIXELS = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("call,message", [
    (lambda e: e.segment(IMAGE, ["a", "b"], size=0), "input size must be positive"),
    (lambda e: e.segment(PIXELS, ["a", "b"], size=0), "input size must be positive"),
    (lambda e: e.segment(PIXELS, ["a", "b"], resize="letterbx"), "resize must be one of"),
    (lambda e: e.encode_image(PIXELS, resize="cropp"), "resize must be one of"),
    (lambda e: e.segment(IMAGE, ["a", "b"], template=5), "template must be a string"),
    (lambda e: e.segment(IMAGE, ["a", "b"], template="a photo"), "has no '{}'"),
    (lambda e: e.classify(IMAGE, ["a", "b"], template="a photo"), "has no '{}'"),
    (lambda e: e.classify(IMAGE, ["a", "b"], top_k=True), "top_k must be a positive integer"),
    (lambda e: e.classify(IMAGE, ["a", "b"], top_k=0), "top_k must be a positive integer"),
    (lambda e: e.segment(IMAGE, ["a", "b"], size=100000), "above the limit of 4096"),
    (lambda e: e.segment(IMAGE, ["a", "b"], size=(8, 100000)), "above the limit of 4096"),
    (lambda e: e.segment(torch.zeros(1, 3, 8, 8000), ["a"]), "above the limit of 4096"),
    (lambda e: e.segment(PIXELS.clone().index_fill_(2, torch.tensor([3]), float("nan")), ["a"]), "NaN"),
    (lambda e: e.encode_image(PIXELS * float("inf")), "NaN or infinite"),
])
def test_api_arguments_are_checked(engine, call, message):
    with pytest.raises(InputError, match=message):
        call(engine)


def test_template_fills_prompt_sets_too(engine):
    from clippy_rt.prompts import build_prompt_set, parse_cli_prompts

    spec = parse_cli_prompts("background|sky,apple")
    filled = build_prompt_set(spec, "a photo of {article} {}")
    assert filled.prompts == ("a photo of a background", "a photo of a sky", "a photo of an apple")
    assert filled.classes == ("background", "apple")
    by_hand = engine.segment(IMAGE, {"background": ["a photo of a background", "a photo of a sky"],
                                     "apple": ["a photo of an apple"]}, template="{}")
    templated = engine.segment(IMAGE, spec, template="a photo of {article} {}")
    assert torch.equal(templated.labels, by_hand.labels)
    torch.testing.assert_close(templated.scores, by_hand.scores, rtol=0, atol=0)


@pytest.mark.parametrize("section,key,value", [
    ("image", "depth", 10_000_000),
    ("text", "depth", 1_000_000),
    ("image", "image_size", 1_000_000),
    ("image", "width", 1 << 20),
    ("text", "vocab_size", 1 << 30),
    ("text", "max_length", 1 << 20),
])
def test_config_sizes_are_bounded(section, key, value):
    data = ClippyConfig().to_dict()
    data[section][key] = value
    start = time.perf_counter()
    with pytest.raises(ConfigError, match="above the limit"):
        ClippyConfig.from_dict(data)
    assert time.perf_counter() - start < 1.0


def test_config_of_too_many_parameters_is_refused():
    data = ClippyConfig().to_dict()
    data["image"].update(depth=256, width=16384, heads=128, mlp_dim=65536)
    data["text"].update(projection_dim=16384)
    with pytest.raises(ConfigError, match="parameters"):
        ClippyConfig.from_dict(data)


def test_huge_config_fails_info_and_segment_in_one_line(tmp_path, tiny_model_dir, capsys):
    from clippy_rt.cli.main import main as cli

    model = shutil.copytree(tiny_model_dir, tmp_path / "model")
    config = json.loads((model / "config.json").read_text())
    config["image"]["depth"] = 10_000_000
    (model / "config.json").write_text(json.dumps(config))
    image = tmp_path / "x.png"
    Image.fromarray(IMAGE).save(image)
    for argv in (["info", str(model)], ["segment", str(model), str(image), "--prompts", "a,b"]):
        assert cli(argv) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "depth is 10,000,000, above the limit of 256" in err


def _png_header_only(path, width, height):
    """A PNG whose header declares width x height RGB; the pixel data is one empty block."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b""))
                     + chunk(b"IEND", b""))


def test_oversized_images_are_refused_before_decoding(tmp_path, engine):
    path = tmp_path / "huge.png"
    _png_header_only(path, 12000, 12000)
    for call in (probe_image, load_image, lambda p: engine.segment(p, ["a", "b"])):
        with pytest.raises(InputError, match=r"12000x12000 pixels .* more than the 67,108,864 pixels"):
            call(path)
    with pytest.raises(InputError, match="more than"):
        load_image(np.broadcast_to(np.zeros((1, 1), np.uint8), (9000, 9000)))


def test_nan_weights_are_refused_at_load(tmp_path, tiny_model_dir):
    from safetensors.torch import load_file, save_file

    model = shutil.copytree(tiny_model_dir, tmp_path / "model")
    for value, dtype, message in ((float("nan"), None, "NaN or infinite"), (float("inf"), None, "NaN or infinite"),
                                  (1.0, torch.int64, "int64 tensor"), (1.0, torch.bool, "bool tensor")):
        state = load_file(str(tiny_model_dir / "weights.safetensors"))
        key = "visual.blocks.1.attn.qkv.weight"
        state[key][0, 0] = value
        if dtype is not None:
            state[key] = state[key].to(dtype)
        save_file(state, str(model / "weights.safetensors"))
        with pytest.raises(CheckpointError, match=message):
            clippy_rt.load(model)


def test_non_finite_outputs_raise_per_call(tiny_model_dir):
    engine = clippy_rt.load(tiny_model_dir)
    good = engine.segment(PIXELS[0], ["a", "b"])
    assert torch.isfinite(good.scores).all()
    with torch.no_grad():
        engine.model.visual.blocks[0].mlp.fc2.bias.fill_(float("inf"))
        engine.model.text.blocks[0].ffn.wo.weight.fill_(float("nan"))
    with pytest.raises(NumericsError, match="patch features hold NaN or infinite values"):
        engine.segment(PIXELS, ["a", "b"])  # the prompts' embeddings are cached: the image fails
    with pytest.raises(NumericsError, match="text embeddings hold NaN"):
        engine.encode_text(["a prompt not seen before"])


def _exif_png(path, array, orientation):
    image = Image.fromarray(array)
    exif = image.getexif()
    exif[0x0112] = orientation
    image.save(path, exif=exif.tobytes())


@pytest.mark.parametrize("orientation,turn", [
    (1, lambda a: a),
    (3, lambda a: np.rot90(a, 2)),
    (6, lambda a: np.rot90(a, -1)),   # "rotate 90 clockwise to display" (EXIF 2.3, table 'Orientation')
    (8, lambda a: np.rot90(a, 1)),
    (2, lambda a: a[:, ::-1]),
])
def test_exif_orientation_is_applied(tmp_path, engine, orientation, turn):
    stored = np.random.default_rng(orientation).integers(0, 256, (24, 40, 3), dtype=np.uint8)
    path = tmp_path / "photo.png"
    _exif_png(path, stored, orientation)
    shown = turn(stored)
    np.testing.assert_array_equal(np.asarray(load_image(path)), shown)
    assert probe_image(path) == (shown.shape[1], shown.shape[0])
    assert engine.segment(path, ["a", "b"]).labels.shape == shown.shape[:2]


def test_readme_states_the_limits():
    from pathlib import Path

    from clippy_rt import limits

    readme = (Path(__file__).resolve().parents[1] / "docs" / "operations.md").read_text()
    for figure in (f"at most {limits.MAX_DEPTH} blocks", f"widths up to {limits.MAX_WIDTH:,}",
                   f"{limits.MAX_INPUT_SIDE:,} pixels a side", f"{limits.MAX_INPUT_PATCHES:,} patches",
                   f"8192 x 8192 pixels"):
        assert figure in readme, figure
    assert limits.MAX_IMAGE_PIXELS == 8192 * 8192
