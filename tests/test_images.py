import re
import struct
import warnings
import zlib

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile

from clippy_rt.config import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
from clippy_rt.errors import InputError
from clippy_rt import limits
from clippy_rt.images import (Prepared, ResizePlan, as_pixel_batch, check_input_size, crop_extent, fit_size,
                              load_image, plan_resize, prepare, prepare_batch, probe_image)

MEAN, STD = OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
NORM = dict(mean=MEAN, std=STD)


def random_rgb(height, width, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def normalised(rgb):
    """Hand normalisation in float64: [H, W, 3] uint8 -> [3, H, W] float32."""
    x = rgb.astype(np.float64) / 255.0
    x = (x - np.asarray(MEAN)) / np.asarray(STD)
    return torch.from_numpy(x.transpose(2, 0, 1).astype(np.float32))


def bicubic(rgb, width, height):
    return np.asarray(Image.fromarray(rgb).resize((width, height), Image.Resampling.BICUBIC))


# --- decoding ---------------------------------------------------------------------------


def test_numpy_rgb_bgr_gray_and_alpha():
    rgb = random_rgb(9, 11)
    np.testing.assert_array_equal(np.asarray(load_image(rgb)), rgb)
    bgr = np.ascontiguousarray(rgb[:, :, ::-1])
    np.testing.assert_array_equal(np.asarray(load_image(bgr, bgr=True)), rgb)
    np.testing.assert_array_equal(np.asarray(load_image(rgb[:, ::2])), rgb[:, ::2])

    gray = rgb[:, :, 0]
    for array in (gray, gray[:, :, None]):
        out = np.asarray(load_image(array))
        assert out.shape == (9, 11, 3)
        for channel in range(3):
            np.testing.assert_array_equal(out[:, :, channel], gray)

    # Alpha is dropped: a fully transparent pixel keeps its stored colour.
    alpha = np.zeros((9, 11, 1), dtype=np.uint8)
    np.testing.assert_array_equal(np.asarray(load_image(np.concatenate([rgb, alpha], axis=2))), rgb)
    bgra = np.concatenate([bgr, alpha + 255], axis=2)
    np.testing.assert_array_equal(np.asarray(load_image(bgra, bgr=True)), rgb)


def test_pil_image_is_copied_to_rgb():
    rgb = random_rgb(6, 7)
    source = Image.fromarray(rgb)
    out = load_image(source)
    assert out.mode == "RGB" and out is not source
    np.testing.assert_array_equal(np.asarray(out), rgb)


@pytest.mark.parametrize("suffix", ["png", "jpg", "bmp", "webp", "tiff"])
def test_rgb_files(tmp_path, suffix):
    rgb = random_rgb(20, 30)
    path = tmp_path / f"image.{suffix}"
    Image.fromarray(rgb).save(path)
    out = load_image(path)
    assert out.mode == "RGB" and out.size == (30, 20)
    if suffix in ("png", "bmp", "tiff"):
        np.testing.assert_array_equal(np.asarray(out), rgb)
    assert np.asarray(load_image(str(path))).shape == (20, 30, 3)


def test_grayscale_rgba_la_bilevel_files(tmp_path):
    rgb = random_rgb(8, 10)
    gray = rgb[:, :, 1]
    Image.fromarray(gray).save(tmp_path / "gray.png")
    out = np.asarray(load_image(tmp_path / "gray.png"))
    np.testing.assert_array_equal(out, np.repeat(gray[:, :, None], 3, axis=2))

    rgba = np.concatenate([rgb, rgb[:, :, :1]], axis=2)
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    assert Image.open(tmp_path / "rgba.png").mode == "RGBA"
    np.testing.assert_array_equal(np.asarray(load_image(tmp_path / "rgba.png")), rgb)

    Image.fromarray(np.stack([gray, rgb[:, :, 2]], axis=2)).save(tmp_path / "la.png")
    assert Image.open(tmp_path / "la.png").mode == "LA"
    np.testing.assert_array_equal(np.asarray(load_image(tmp_path / "la.png")),
                                  np.repeat(gray[:, :, None], 3, axis=2))

    bits = gray > 127
    Image.fromarray(bits).save(tmp_path / "bits.png")
    assert Image.open(tmp_path / "bits.png").mode == "1"
    np.testing.assert_array_equal(np.asarray(load_image(tmp_path / "bits.png"))[:, :, 0],
                                  np.where(bits, 255, 0))


def test_sixteen_bit_is_scaled_not_clipped(tmp_path):
    values = np.array([[0, 1, 128, 129, 1000], [257, 25_700, 32_896, 65_278, 65_535]], dtype=np.uint16)
    expected = np.rint(values / 257.0).astype(np.uint8)
    image16 = Image.frombytes("I;16", (5, 2), values.astype("<u2").tobytes())
    image16.save(tmp_path / "deep.png")
    reopened = Image.open(tmp_path / "deep.png")
    assert reopened.mode in ("I;16", "I")
    for source in (image16, reopened, tmp_path / "deep.png", Image.fromarray(values.astype(np.int32))):
        out = np.asarray(load_image(source))
        for channel in range(3):
            np.testing.assert_array_equal(out[:, :, channel], expected)
    big_endian = Image.frombytes("I;16B", (5, 2), values.astype(">u2").tobytes())
    np.testing.assert_array_equal(np.asarray(load_image(big_endian))[:, :, 0], expected)


def test_thirty_two_bit_values_outside_sixteen_bits_are_clipped():
    # A 32-bit grey image ('I') is read as 0..65535 like 16-bit ones: below 0 is black,
    # above 65535 white, not wrapped around.
    values = np.array([[-1000, -1, 0, 65_535, 65_536, 70_000, 32_896]], dtype=np.int32)
    out = np.asarray(load_image(Image.fromarray(values)))
    np.testing.assert_array_equal(out[:, :, 0], [[0, 0, 0, 255, 255, 255, 128]])


@pytest.mark.parametrize("transparency", [1, b"\xff\x00\x80"])
def test_palette_with_transparency(tmp_path, transparency):
    colours = [(200, 10, 30), (5, 180, 90), (17, 34, 250)]
    indices = np.array([[0, 1, 2], [2, 1, 0]], dtype=np.uint8)
    image = Image.frombytes("P", (3, 2), indices.tobytes())
    image.putpalette([c for colour in colours for c in colour])
    image.info["transparency"] = transparency
    image.save(tmp_path / "palette.png")
    assert Image.open(tmp_path / "palette.png").mode == "P"
    for source in (image, tmp_path / "palette.png"):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            out = np.asarray(load_image(source))
        np.testing.assert_array_equal(out, np.asarray(colours, dtype=np.uint8)[indices])


def test_cmyk(tmp_path):
    cmyk = np.array([[[0, 0, 0, 0], [255, 0, 0, 0], [0, 255, 0, 0], [0, 0, 255, 0], [0, 0, 0, 255]]],
                    dtype=np.uint8)
    Image.frombytes("CMYK", (5, 1), cmyk.tobytes()).save(tmp_path / "cmyk.tiff")
    assert Image.open(tmp_path / "cmyk.tiff").mode == "CMYK"
    out = np.asarray(load_image(tmp_path / "cmyk.tiff"))[0]
    np.testing.assert_array_equal(out, [[255, 255, 255], [0, 255, 255], [255, 0, 255],
                                        [255, 255, 0], [0, 0, 0]])
    Image.frombytes("CMYK", (5, 1), cmyk.tobytes()).save(tmp_path / "cmyk.jpg")
    assert load_image(tmp_path / "cmyk.jpg").mode == "RGB"


def test_missing_and_directory_paths(tmp_path):
    missing = tmp_path / "no such.png"
    with pytest.raises(InputError, match="not found") as info:
        load_image(missing)
    assert str(missing) in str(info.value)
    with pytest.raises(InputError, match="directory"):
        load_image(tmp_path)


@pytest.mark.parametrize("suffix", ["png", "jpg"])
def test_corrupt_and_truncated_files(tmp_path, suffix):
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
    garbage = tmp_path / f"garbage.{suffix}"
    garbage.write_bytes(b"definitely not an image" * 20)
    with pytest.raises(InputError) as info:
        load_image(garbage)
    assert str(garbage) in str(info.value)

    whole = tmp_path / f"whole.{suffix}"
    Image.fromarray(random_rgb(64, 64)).save(whole)
    data = whole.read_bytes()
    truncated = tmp_path / f"truncated.{suffix}"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="cannot decode") as info:
        load_image(truncated)
    assert str(truncated) in str(info.value)
    # A lazily opened PIL image of the same file fails the same way.
    with Image.open(truncated) as lazy:
        with pytest.raises(InputError, match="truncated"):
            load_image(lazy)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_files_that_are_not_images_say_why(tmp_path):
    text = tmp_path / "notes.png"
    text.write_bytes(b"definitely not an image" * 20)
    message = "^" + re.escape(f"cannot read image file {text}: cannot identify image file")
    with pytest.raises(InputError, match=message):
        probe_image(text)
    with pytest.raises(InputError, match=message):
        load_image(text)
    # A PNG cut in half opens (its header is whole) and fails while decoding.
    whole, cut = tmp_path / "whole.png", tmp_path / "cut.png"
    Image.fromarray(random_rgb(64, 64)).save(whole)
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    with pytest.raises(InputError, match="^" + re.escape(f"cannot decode image file {cut}: image file is truncated")):
        load_image(cut)


def test_decoding_errors_give_their_first_line_or_their_type():
    image = Image.new("RGB", (4, 4))

    def truncated():
        raise OSError("image file is truncated\n(3 bytes not processed)")

    def bare():
        raise EOFError()

    image.load = truncated
    with pytest.raises(InputError, match=r"^cannot decode the PIL image: image file is truncated$"):
        load_image(image)
    image.load = bare
    with pytest.raises(InputError, match=r"^cannot decode the PIL image: EOFError$"):
        load_image(image)


def test_pixel_limit_is_checked_before_decoding_and_names_the_source(tmp_path, monkeypatch):
    monkeypatch.setattr(limits, "MAX_IMAGE_PIXELS", 200)
    # Exactly at the limit is fine; one row more is not (20 x 10 = 200, 20 x 11 = 220 pixels).
    assert load_image(np.zeros((10, 20), dtype=np.uint8)).size == (20, 10)
    assert load_image(np.zeros((20, 10), dtype=np.uint8)).size == (10, 20)
    with pytest.raises(InputError, match=r"^the image array is 20x11 pixels \(width x height\), more than "
                                         r"the 200 pixels clippy-rt decodes$"):
        load_image(np.zeros((11, 20), dtype=np.uint8))
    with pytest.raises(InputError, match=r"^the image array is 11x20 pixels"):
        load_image(np.zeros((20, 11), dtype=np.uint8))
    with pytest.raises(InputError, match=r"^the PIL image is 15x15 pixels"):
        load_image(Image.new("RGB", (15, 15)))
    # A 300-pixel file, by path (probed or loaded) and opened lazily by PIL: named by its path.
    path = tmp_path / "big.png"
    Image.fromarray(random_rgb(15, 20)).save(path)
    message = "^" + re.escape(f"{path} is 20x15 pixels (width x height)")
    with pytest.raises(InputError, match=message):
        probe_image(path)
    with pytest.raises(InputError, match=message):
        load_image(path)
    with Image.open(path) as lazy:
        with pytest.raises(InputError, match=message):
            load_image(lazy)


def _png_header_only(path, width, height):
    """A PNG whose header declares width x height RGB pixels and which holds no pixel data."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b""))


def test_huge_headers_are_refused_before_decoding(tmp_path):
    # 10000 x 10000: above clippy-rt's limit (8192 x 8192) and PIL's warning threshold, below
    # PIL's own refusal: clippy-rt's message. 20000 x 20000: PIL refuses to open it; its reason.
    assert limits.MAX_IMAGE_PIXELS < 10_000 * 10_000 < 2 * Image.MAX_IMAGE_PIXELS < 20_000 * 20_000
    large, huge = tmp_path / "large.png", tmp_path / "huge.png"
    _png_header_only(large, 10_000, 10_000)
    _png_header_only(huge, 20_000, 20_000)
    message = "^" + re.escape(f"{large} is 10000x10000 pixels (width x height), more than the 67,108,864 pixels")
    for read in (probe_image, load_image):
        with pytest.raises(InputError, match=message):
            read(large)
        with pytest.raises(InputError, match="^" + re.escape(f"cannot read image file {huge}: Image size "
                                                             "(400000000 pixels) exceeds limit")):
            read(huge)


def test_arrays_one_pixel_wide_or_high_are_images():
    assert load_image(np.zeros((5, 1), dtype=np.uint8)).size == (1, 5)
    assert load_image(np.zeros((1, 5, 3), dtype=np.uint8)).size == (5, 1)
    with pytest.raises(InputError, match="empty"):
        load_image(np.zeros((5, 0, 3), dtype=np.uint8))


def test_unsupported_sources_name_their_type():
    with pytest.raises(TypeError, match=r"got float$"):
        load_image(2.5)
    with pytest.raises(TypeError, match=r"got a single ndarray;"):
        prepare_batch(np.zeros((16, 16, 3), dtype=np.uint8), 16, patch_size=16, **NORM)


@pytest.mark.parametrize("bad, error, message", [
    (np.zeros((4, 4, 3), dtype=np.float32), TypeError, "uint8"),
    (np.zeros((4, 4, 3), dtype=np.uint16), TypeError, "uint16"),
    (np.zeros((4, 4, 2), dtype=np.uint8), InputError, r"\(4, 4, 2\)"),
    (np.zeros((2, 4, 4, 3), dtype=np.uint8), InputError, r"\(2, 4, 4, 3\)"),
    (np.zeros((0, 4, 3), dtype=np.uint8), InputError, "empty"),
    (torch.zeros(3, 4, 4), TypeError, "as_pixel_batch"),
    (42, TypeError, "int"),
])
def test_bad_sources(bad, error, message):
    with pytest.raises(error, match=message):
        load_image(bad)


# --- prepare ----------------------------------------------------------------------------


def test_squash_matches_hand_computation():
    rgb = random_rgb(37, 53)
    prepared = prepare(rgb, (32, 48), mode="squash", patch_size=16, **NORM)
    assert isinstance(prepared, Prepared)
    assert prepared.pixels.dtype == torch.float32 and prepared.pixels.shape == (3, 32, 48)
    torch.testing.assert_close(prepared.pixels, normalised(bicubic(rgb, 48, 32)))
    assert prepared.original_size == (37, 53) and prepared.out_size == (37, 53)
    assert prepared.window is None and prepared.crop_box is None


# (224, 227) and (227, 224) crop 3 pixels: an offset of round(1.5) = 2, not 1.
@pytest.mark.parametrize("height, width", [(480, 640), (640, 480), (300, 300), (101, 333),
                                           (224, 227), (227, 224)])
def test_crop_matches_hand_computation(height, width):
    rgb = random_rgb(height, width, seed=height)
    size = 224
    # Shorter side to `size`, the longer one floored; centre crop with round() offsets.
    if height <= width:
        new_h, new_w = size, int(width * size / height)
    else:
        new_h, new_w = int(height * size / width), size
    top, left = int(round((new_h - size) / 2)), int(round((new_w - size) / 2))
    expected = bicubic(rgb, new_w, new_h)[top:top + size, left:left + size]

    prepared = prepare(rgb, size, mode="crop", patch_size=16, **NORM)
    torch.testing.assert_close(prepared.pixels, normalised(expected))
    # The crop in original pixels: the input divided by the binding side's scale (the
    # shorter side whole, a square target keeps a square), starting where the resized crop
    # starts. Not size / (new_w / width): the floored side's scale would widen it.
    scale = size / min(height, width)
    crop_h, crop_w = round(size / scale), round(size / scale)
    assert (crop_h, crop_w) == (min(height, width),) * 2
    box = (round(top * height / new_h), round(left * width / new_w), crop_h, crop_w)
    assert prepared.crop_box == box
    assert prepared.out_size == box[2:]
    assert prepared.window is None and prepared.original_size == (height, width)
    assert box[0] + box[2] <= height and box[1] + box[3] <= width


@pytest.mark.parametrize("original, size, extent", [
    # (H0, W0), input (H, W), the crop's (height, width) in original pixels, by hand
    ((480, 640), (64, 64), (480, 480)),   # the floored cover width 85 made this 480 x 482
    ((48, 64), (16, 16), (48, 48)),       # was 48 x 49
    ((640, 480), (64, 64), (480, 480)),
    ((100, 100), (32, 64), (50, 100)),    # a wide input keeps a 1:2 band of a square
    ((480, 640), (48, 64), (480, 640)),   # same aspect ratio: the whole image
    ((45, 73), (32, 32), (45, 45)),
])
def test_crop_box_has_the_input_aspect_ratio(original, size, extent):
    plan = plan_resize(original, size, "crop")
    assert plan.out_size == extent and plan.crop_box[2:] == extent
    top, left = plan.crop_box[:2]
    assert 0 <= top <= original[0] - extent[0] and 0 <= left <= original[1] - extent[1]


def test_crop_matches_torchvision_protocol():
    transforms = pytest.importorskip("torchvision.transforms")
    rgb = random_rgb(375, 500, seed=3)
    reference = transforms.Compose([
        transforms.Resize(224, interpolation=transforms.InterpolationMode.BICUBIC),
        transforms.CenterCrop(224),
        transforms.ToTensor(),
        transforms.Normalize(MEAN, STD),
    ])(Image.fromarray(rgb))
    torch.testing.assert_close(prepare(rgb, 224, mode="crop", patch_size=16, **NORM).pixels, reference)


@pytest.mark.parametrize("original, size, resized, offset, window", [
    # (H0, W0), (H, W), resized (h, w), (top, left), window (y0, x0, y1, x1)
    ((100, 50), (64, 64), (64, 32), (0, 16), (0.0, 0.25, 1.0, 0.75)),
    ((50, 200), (32, 64), (16, 64), (8, 0), (0.25, 0.0, 0.75, 1.0)),
    ((30, 70), (48, 48), (21, 48), (13, 0), (13 / 48, 0.0, 34 / 48, 1.0)),
    ((60, 60), (32, 32), (32, 32), (0, 0), None),
])
def test_letterbox_window_and_padding(original, size, resized, offset, window):
    rgb = random_rgb(*original, seed=1)
    prepared = prepare(rgb, size, mode="letterbox", patch_size=16, **NORM)
    assert prepared.window == window
    assert prepared.out_size == original and prepared.original_size == original
    assert prepared.crop_box is None
    (h, w), (top, left) = resized, offset
    inner = prepared.pixels[:, top:top + h, left:left + w]
    torch.testing.assert_close(inner, normalised(bicubic(rgb, w, h)))
    padding = torch.ones(size, dtype=torch.bool)
    padding[top:top + h, left:left + w] = False
    assert (prepared.pixels[:, padding] == 0).all()


def test_bgr_flag_in_prepare():
    rgb = random_rgb(20, 24)
    bgr = np.ascontiguousarray(rgb[:, :, ::-1])
    for mode in ("squash", "crop", "letterbox"):
        expected = prepare(rgb, 16, mode=mode, patch_size=16, **NORM).pixels
        torch.testing.assert_close(prepare(bgr, 16, mode=mode, patch_size=16, bgr=True, **NORM).pixels,
                                   expected)


def test_normalisation_of_known_values():
    rgb = np.zeros((16, 16, 3), dtype=np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 0, 128, 255
    pixels = prepare(rgb, 16, mode="squash", patch_size=16, **NORM).pixels
    for channel, value in enumerate((0, 128, 255)):
        expected = (value / 255.0 - MEAN[channel]) / STD[channel]
        torch.testing.assert_close(pixels[channel], torch.full((16, 16), expected, dtype=torch.float32))


@pytest.mark.parametrize("size, mode, message", [
    (20, "squash", "multiples of the patch size 16"),
    ((32, 40), "squash", "32x40"),
    (0, "squash", "multiples"),
    ("224", "squash", "integer"),
    ((32, 32, 32), "squash", "pair"),
    (32, "stretch", "squash, crop, letterbox"),
])
def test_bad_size_or_mode(size, mode, message):
    with pytest.raises(InputError, match=message):
        prepare(random_rgb(40, 40), size, mode=mode, patch_size=16, **NORM)


def test_input_size_checks_at_their_bounds():
    with pytest.raises(InputError, match="^patch_size must be a positive integer, got 0$"):
        check_input_size(32, 0)
    with pytest.raises(InputError, match="^patch_size must be a positive integer, got 0$"):
        as_pixel_batch(torch.zeros(1, 3, 16, 16), 0)
    assert check_input_size((1, 1), 1) == (1, 1)
    assert check_input_size((16, 48), 16) == (16, 48)
    for size in ((0, 32), (32, 0), (-16, 32), (32, -16), (24, 32), (32, 24)):
        with pytest.raises(InputError, match="positive multiples of the patch size 16"):
            check_input_size(size, 16)
    for size in ((32.0, 32), (32, 32.0), (True, 32)):
        with pytest.raises(InputError, match="an integer or a \\(height, width\\) pair of integers"):
            check_input_size(size, 16)
    # At most MAX_INPUT_SIDE a side and MAX_INPUT_PATCHES patches, both inclusive.
    side, patches = limits.MAX_INPUT_SIDE, limits.MAX_INPUT_PATCHES
    assert check_input_size((side, 16), 16) == (side, 16)
    with pytest.raises(InputError, match=f"^input size {side + 16}x16 \\(height x width\\) is above the limit of "
                                         f"{side} pixels a side$"):
        check_input_size((side + 16, 16), 16)
    # patches = (height // 16) * (width // 16): 128 x 128 = 16384 patches at 2048 x 2048.
    assert patches == 128 * 128
    assert check_input_size((2048, 2048), 16) == (2048, 2048)
    with pytest.raises(InputError, match=r"^input size 2048x2064 makes 16,512 patches of 16 pixels, above the "
                                         r"limit of 16,384$"):
        check_input_size((2048, 2064), 16)


def test_mean_and_std_that_are_not_numbers_are_named():
    with pytest.raises(InputError, match=r"^mean must be 3 numbers, got \('a', 'b', 'c'\)$"):
        prepare(random_rgb(16, 16), 16, patch_size=16, mean=("a", "b", "c"), std=STD)
    with pytest.raises(InputError, match=r"^std must be 3 numbers, got \[None, 1, 1\]$"):
        prepare(random_rgb(16, 16), 16, patch_size=16, mean=MEAN, std=[None, 1, 1])


def test_plans_hold_their_inputs():
    # Every field of the plan, worked out by hand (see the crop and letterbox tests above).
    assert plan_resize((45, 70), (32, 48), "squash") == ResizePlan((45, 70), (32, 48), "squash", (32, 48),
                                                                   (0, 0), (45, 70))
    assert plan_resize((45, 73), (32, 32), "crop") == ResizePlan((45, 73), (32, 32), "crop", (32, 51), (0, 10),
                                                                 (45, 45), crop_box=(0, 14, 45, 45))
    assert plan_resize((45, 70), (32, 32), "letterbox") == ResizePlan(
        (45, 70), (32, 32), "letterbox", (21, 32), (5, 0), (45, 70), window=(5 / 32, 0.0, 26 / 32, 1.0))
    with pytest.raises(InputError, match=r"^mode must be one of squash, crop, letterbox, got 'fit'$"):
        plan_resize((45, 70), (32, 32), "fit")


def test_extreme_aspect_ratios_keep_one_pixel():
    # A 1000:8 strip letterboxed into 16 x 16 is 16 x round(8 * 16 / 1000) = 0 -> 1 pixel.
    assert fit_size((8, 1000), (16, 16)) == (1, 16)
    assert fit_size((1000, 8), (16, 16)) == (16, 1)
    # A square cropped to a 1:200 input keeps round(100 * 16 / 3200) = 1 row (or column) of it.
    assert crop_extent((100, 100), (16, 3200)) == (1, 100)
    assert crop_extent((100, 100), (3200, 16)) == (100, 1)


def test_image_smaller_than_a_patch():
    message = r"image is 5x7 pixels \(width x height\), smaller than one 16x16 patch"
    with pytest.raises(InputError, match=message):
        prepare(random_rgb(7, 5), 32, patch_size=16, **NORM)
    with pytest.raises(InputError, match="smaller than one"):
        prepare(random_rgb(100, 15), 32, mode="letterbox", patch_size=16, **NORM)
    assert prepare(random_rgb(16, 16), 32, patch_size=16, **NORM).pixels.shape == (3, 32, 32)


def test_bad_mean_std():
    with pytest.raises(InputError, match="std"):
        prepare(random_rgb(16, 16), 16, patch_size=16, mean=MEAN, std=(1.0, 0.0, 1.0))
    with pytest.raises(InputError, match="mean"):
        prepare(random_rgb(16, 16), 16, patch_size=16, mean=(0.5, 0.5), std=STD)


def test_prepare_batch(tmp_path):
    Image.fromarray(random_rgb(40, 30, seed=2)).save(tmp_path / "a.png")
    images = [random_rgb(50, 70), tmp_path / "a.png", Image.fromarray(random_rgb(33, 33, seed=4))]
    batch, prepared = prepare_batch(images, (32, 48), mode="letterbox", patch_size=16, **NORM)
    assert batch.shape == (3, 3, 32, 48) and batch.dtype == torch.float32
    assert [p.original_size for p in prepared] == [(50, 70), (40, 30), (33, 33)]
    for k, (image, item) in enumerate(zip(images, prepared)):
        single = prepare(image, (32, 48), mode="letterbox", patch_size=16, **NORM)
        torch.testing.assert_close(batch[k], single.pixels)
        assert item.window == single.window
        assert item.pixels.data_ptr() == batch[k].data_ptr()

    frames = np.stack([random_rgb(20, 20, seed=s) for s in range(2)])
    batch, prepared = prepare_batch(frames[..., ::-1], 16, patch_size=16, bgr=True, **NORM)
    torch.testing.assert_close(batch[1], prepare(frames[1], 16, patch_size=16, **NORM).pixels)

    # crop mode: the views keep the crop box.
    batch, prepared = prepare_batch([random_rgb(40, 60), random_rgb(60, 40)], 32, mode="crop", patch_size=16, **NORM)
    assert [item.crop_box for item in prepared] == [(0, 10, 40, 40), (10, 0, 40, 40)]

    with pytest.raises(InputError, match="empty"):
        prepare_batch([], 16, patch_size=16, **NORM)
    with pytest.raises(TypeError, match="list"):
        prepare_batch(tmp_path / "a.png", 16, patch_size=16, **NORM)


# --- already normalised tensors ------------------------------------------------------


def test_as_pixel_batch_accepts_float_tensors():
    single = torch.randn(3, 32, 48)
    batch = as_pixel_batch(single, 16)
    assert batch.shape == (1, 3, 32, 48) and batch.data_ptr() == single.data_ptr()
    half = torch.randn(2, 3, 16, 16, dtype=torch.float16)
    assert as_pixel_batch(half, 16) is half


@pytest.mark.parametrize("tensor, error, message", [
    (torch.zeros(1, 3, 16, 16, dtype=torch.uint8), TypeError, "floating-point"),
    (np.zeros((1, 3, 16, 16), dtype=np.float32), TypeError, "ndarray"),
    (torch.zeros(16, 16), InputError, r"\(16, 16\)"),
    (torch.zeros(1, 1, 3, 16, 16), InputError, "B, 3, H, W"),
    (torch.zeros(1, 16, 16, 3), InputError, "channels-last"),
    (torch.zeros(1, 3, 16, 24), InputError, "16x24"),
    (torch.zeros(1, 3, 8, 8), InputError, "8x8"),
    (torch.zeros(1, 3, 24, 16), InputError, "24x16"),
    (torch.zeros(1, 3, 0, 16), InputError, "0x16"),
    (torch.zeros(1, 4, 16, 16), InputError, r"got shape \(1, 4, 16, 16\)$"),
    (torch.zeros(1, 16, 16, 3), InputError, r"got shape \(1, 16, 16, 3\) \(channels-last\? permute to "
                                            r"\[B, 3, H, W\]\)$"),
    (torch.full((1, 3, 16, 16), float("nan")), InputError, "^the pixel tensor holds NaN or infinite values$"),
    (torch.zeros(0, 3, 16, 16), InputError, "at least one"),
])
def test_as_pixel_batch_rejects(tensor, error, message):
    with pytest.raises(error, match=message):
        as_pixel_batch(tensor, 16)


@pytest.mark.parametrize("shape,size,mode,unscaled", [
    ((64, 64, 3), 64, "squash", True), ((64, 64, 3), 64, "crop", True), ((64, 64, 3), 64, "letterbox", True),
    ((48, 64, 3), (48, 64), "squash", True), ((16, 32, 3), (16, 32), "crop", True),  # one patch high
    ((32, 64, 3), 64, "letterbox", True),    # fits as it is: the padding goes around it later
    ((64, 65, 3), 64, "crop", False),        # covers at scale 1 but needs a crop
    ((32, 64, 3), 64, "crop", False), ((32, 48, 3), 64, "squash", False), ((80, 64, 3), 64, "letterbox", False),
    ((64, 64, 4), 64, "squash", False),      # RGBA: PIL drops the alpha
])
@pytest.mark.parametrize("bgr", [False, True])
def test_resize_frame_gives_resize_pictures_pixels_and_skips_pil_for_an_unscaled_frame(
        shape, size, mode, unscaled, bgr, monkeypatch):
    from clippy_rt import images as images_module
    from clippy_rt.images import resize_picture

    frame = np.random.default_rng(sum(shape)).integers(0, 256, shape, dtype=np.uint8)
    want, want_plan = resize_picture(frame, size, mode=mode, patch_size=16, bgr=bgr)
    calls = []
    monkeypatch.setattr(images_module, "resize_picture",
                        lambda *args, **kwargs: calls.append(1) or resize_picture(*args, **kwargs))
    got, plan = images_module.resize_frame(frame, size, mode=mode, patch_size=16, bgr=bgr)
    assert isinstance(got, np.ndarray) and got.dtype == np.uint8
    assert np.array_equal(got, np.asarray(want)) and plan == want_plan
    assert calls == ([] if unscaled else [1])


def test_resize_frame_refuses_what_resize_picture_refuses():
    from clippy_rt.images import resize_frame

    frame = np.random.default_rng(2).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    assert np.array_equal(resize_frame(frame, 32, patch_size=16)[0], frame)  # RGB unless told otherwise

    with pytest.raises(InputError, match="multiples of the patch size"):
        resize_frame(np.zeros((64, 64, 3), np.uint8), 60, patch_size=16)
    with pytest.raises(InputError, match="smaller than one 16x16 patch"):
        resize_frame(np.zeros((8, 64, 3), np.uint8), 64, patch_size=16)
    with pytest.raises(InputError, match="mode must be one of"):
        resize_frame(np.zeros((64, 64, 3), np.uint8), 64, mode="stretch", patch_size=16)


@pytest.mark.parametrize("bgr", [False, True])
def test_prepare_of_an_array_at_the_input_size_skips_pil_and_equals_the_pil_path(bgr, monkeypatch):
    from clippy_rt import images as images_module

    frame = np.random.default_rng(11).integers(0, 256, (32, 48, 3), dtype=np.uint8)
    frame.setflags(write=False)  # as frames parsed from a request body are
    want = prepare(Image.fromarray(frame[:, :, ::-1] if bgr else frame), (32, 48), **NORM, patch_size=16)
    calls = []
    original = images_module.resize_picture
    monkeypatch.setattr(images_module, "resize_picture",
                        lambda *args, **kwargs: calls.append(1) or original(*args, **kwargs))
    got = prepare(frame, (32, 48), **NORM, patch_size=16, bgr=bgr)
    assert calls == []
    assert torch.equal(got.pixels, want.pixels) and (got.out_size, got.window) == (want.out_size, want.window)
    prepare(frame, 16, **NORM, patch_size=16, bgr=bgr)  # another size: through PIL
    assert calls == [1]
