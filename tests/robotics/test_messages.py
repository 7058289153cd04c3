"""ROS 2 image messages <-> frames and results."""

from __future__ import annotations

import io
import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from clippy_rt.errors import InputError
from clippy_rt.robotics import messages
from fake_messages import header, raw_image

RGB = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)


@pytest.mark.parametrize("encoding", ["rgb8", "bgr8", "rgba8", "bgra8"])
@pytest.mark.parametrize("pad", [0, 3])
def test_colour_encodings_give_rgb_and_honour_step(encoding, pad):
    message = raw_image(RGB, encoding, pad=pad)
    frame = messages.message_to_frame(message)
    assert frame.dtype == np.uint8 and frame.flags.c_contiguous
    np.testing.assert_array_equal(frame, RGB)


def test_mono8_is_replicated_to_three_channels():
    frame = messages.image_to_frame(raw_image(RGB, "mono8", pad=1))
    np.testing.assert_array_equal(frame, np.repeat(RGB[:, :, :1], 3, axis=2))


def test_data_as_array_module_or_numpy_like_rclpy_and_rosbags():
    import array
    message = raw_image(RGB, "bgr8")
    for data in (array.array("B", message.data), np.frombuffer(message.data, np.uint8), list(message.data)):
        message.data = data
        np.testing.assert_array_equal(messages.image_to_frame(message), RGB)


@pytest.mark.parametrize("change, match", [
    (dict(encoding="32FC1"), "unsupported image encoding '32FC1'.*reads Image encodings rgb8, .*bayer_rggb8"),
    (dict(encoding="16UC1"), "unsupported image encoding"),
    (dict(encoding="yuv422"), "yuv422 image needs an even width, got 7"),
    (dict(step=20), "step 20 is smaller than width x bytes per pixel = 21"),
    (dict(data=b"\x00" * 104), "holds 104 bytes"),
    (dict(height=0), "empty"),
])
def test_bad_raw_images_are_refused(change, match):
    message = raw_image(RGB, "rgb8")
    for key, value in change.items():
        setattr(message, key, value)
    with pytest.raises(InputError, match=match):
        messages.image_to_frame(message)


def _compressed(picture: Image.Image, codec: str, format_field: str):
    buffer = io.BytesIO()
    picture.save(buffer, format=codec, **({"quality": 95} if codec == "JPEG" else {}))
    return SimpleNamespace(header=header(), format=format_field, data=buffer.getvalue())


@pytest.mark.parametrize("format_field", ["png", "bgr8; png compressed bgr8"])
def test_png_compressed_images_decode_exactly(format_field):
    frame = messages.message_to_frame(_compressed(Image.fromarray(RGB), "PNG", format_field))
    np.testing.assert_array_equal(frame, RGB)


@pytest.mark.parametrize("format_field", ["jpeg", "rgb8; jpeg compressed bgr8"])
def test_jpeg_compressed_images_decode_to_rgb(format_field):
    smooth = np.zeros((32, 48, 3), np.uint8)
    smooth[..., 0] = 200                      # red: a channel swap would move it to blue
    smooth[..., 2] = np.linspace(0, 80, 48).astype(np.uint8)
    frame = messages.message_to_frame(_compressed(Image.fromarray(smooth), "JPEG", format_field))
    assert frame.shape == (32, 48, 3)
    assert np.abs(frame.astype(int) - smooth).mean() < 3


def test_bad_compressed_images_are_refused():
    with pytest.raises(InputError, match="unsupported compressed image format"):
        messages.message_to_frame(SimpleNamespace(header=header(), format="16UC1; compressedDepth", data=b"x"))
    with pytest.raises(InputError, match="cannot decode"):
        messages.message_to_frame(SimpleNamespace(header=header(), format="jpeg", data=b"not a jpeg at all"))
    with pytest.raises(InputError, match="no data"):
        messages.message_to_frame(SimpleNamespace(header=header(), format="png", data=b""))


def test_labels_message_is_mono8_with_the_input_header():
    labels = torch.tensor([[0, 1, 2], [2, 1, 0]])
    out = messages.labels_message(labels, header(7, 9, "cam_left"), n_classes=3)
    assert out["header"] == {"stamp": {"sec": 7, "nanosec": 9}, "frame_id": "cam_left"}
    assert (out["height"], out["width"], out["encoding"], out["step"], out["is_bigendian"]) == (2, 3, "mono8", 3, 0)
    assert out["data"] == bytes([0, 1, 2, 2, 1, 0])


def test_labels_above_256_classes_are_mono16_little_endian():
    labels = np.array([[0, 299], [256, 1]])
    out = messages.labels_message(labels, header(), n_classes=300)
    assert (out["encoding"], out["step"]) == ("mono16", 4)
    assert out["data"] == bytes([0, 0, 43, 1, 0, 1, 1, 0])


def test_labels_out_of_range_are_refused():
    with pytest.raises(InputError, match=r"\[0, 3\)"):
        messages.labels_message(np.array([[0, 3]]), header(), n_classes=3)


def test_overlay_message_blends_each_pixel_with_its_class_colour():
    from clippy_rt.visualize import palette

    labels = np.array([[0, 1, 1, 0, 1, 0, 0]] * 5)
    out = messages.overlay_message(RGB, labels, ["floor", "person"], header(3, 4))
    assert (out["encoding"], out["height"], out["width"], out["step"]) == ("rgb8", 5, 7, 21)
    got = np.frombuffer(out["data"], np.uint8).reshape(5, 7, 3).astype(float)
    colours = np.array(palette(2), float)
    expected = np.rint(0.5 * RGB + 0.5 * colours[labels])
    np.testing.assert_allclose(got, expected, atol=1)
    assert out["header"]["stamp"] == {"sec": 3, "nanosec": 4}


def test_classes_message_is_a_json_list():
    assert json.loads(messages.classes_message(("floor", "a person"))["data"]) == {"classes": ["floor", "a person"]}
    with_origin = json.loads(messages.classes_message(("a",), {"model": "abc", "classes": "ignored"})["data"])
    assert with_origin == {"model": "abc", "classes": ["a"]}


def _pairs_constant(shape, seed):
    """RGB whose pixels come in equal horizontal pairs (what 4:2:2 chroma keeps exactly)."""
    rng = np.random.default_rng(seed)
    half = rng.integers(0, 256, (shape[0], shape[1] // 2, 3), dtype=np.uint8)
    return np.repeat(half, 2, axis=1)


@pytest.mark.parametrize("encoding, order", [("yuv422", "UYVY"), ("yuv422_yuy2", "YUYV")])
def test_yuv422_frames_match_pillows_bt601_conversion(encoding, order):
    rgb = _pairs_constant((6, 10), seed=3)
    ycbcr = np.asarray(Image.fromarray(rgb).convert("YCbCr"))  # PIL: BT.601 full range, the JPEG convention
    y, u, v = ycbcr[:, 0::2, 0], ycbcr[:, 0::2, 1], ycbcr[:, 0::2, 2]
    y1 = ycbcr[:, 1::2, 0]
    planes = {"Y0": y, "U": u, "Y1": y1, "V": v}
    names = {"UYVY": ("U", "Y0", "V", "Y1"), "YUYV": ("Y0", "U", "Y1", "V")}[order]
    packed = np.stack([planes[name] for name in names], axis=2).reshape(6, 20)
    padded = np.concatenate([packed, np.zeros((6, 4), np.uint8)], axis=1)
    message = raw_image(rgb, "rgb8")
    message.encoding, message.step, message.data = encoding, 24, padded.tobytes()
    decoded = messages.image_to_frame(message).astype(int)
    assert decoded.shape == (6, 10, 3)
    assert np.abs(decoded - rgb.astype(int)).max() <= 3  # two 8-bit roundings of the colour transform


@pytest.mark.parametrize("pattern", ["rggb", "bggr", "gbrg", "grbg"])
def test_bayer_frames_give_each_cell_its_colour(pattern):
    rng = np.random.default_rng(5)
    cells = rng.integers(0, 256, (3, 4, 3), dtype=np.uint8)
    rgb = np.repeat(np.repeat(cells, 2, axis=0), 2, axis=1)  # one colour per 2x2 cell
    mosaic = np.zeros((6, 8), np.uint8)
    channel = {"r": 0, "g": 1, "b": 2}
    for index, colour in enumerate(pattern):
        row, col = divmod(index, 2)
        mosaic[row::2, col::2] = rgb[row::2, col::2, channel[colour]]
    message = raw_image(rgb, "rgb8")
    message.encoding, message.step, message.data = f"bayer_{pattern}8", 8, mosaic.tobytes()
    np.testing.assert_array_equal(messages.image_to_frame(message), rgb)


def test_unsupported_reason_lists_what_is_read():
    depth = raw_image(RGB, "rgb8")
    depth.encoding = "16UC1"
    reason = messages.unsupported_reason(depth)
    assert "'16UC1' is not supported" in reason and "yuv422" in reason and "jpeg" in reason
    assert messages.unsupported_reason(raw_image(RGB, "bgr8")) is None


def test_compressed_depth_is_refused_even_when_it_names_png():
    # image_transport's depth images say "16UC1; compressedDepth png": not a colour PNG.
    buffer = io.BytesIO()
    Image.fromarray(RGB).save(buffer, format="PNG")
    message = SimpleNamespace(header=header(), format="16UC1; compressedDepth png", data=buffer.getvalue())
    assert "compressed format" in messages.unsupported_reason(message)
    with pytest.raises(InputError, match="unsupported compressed image format"):
        messages.message_to_frame(message)


def test_an_undecodable_compressed_image_says_why():
    with pytest.raises(InputError, match=r"cannot decode the compressed image: (?!None$)\S+"):
        messages.message_to_frame(SimpleNamespace(header=header(), format="png", data=b"\x89PNG\r\n\x1a\n" + b"\x00" * 40))


def test_rgb_message_fields_and_refusals():
    out = messages.rgb_message(RGB, header(5, 6, "cam"))
    assert out == {"header": {"stamp": {"sec": 5, "nanosec": 6}, "frame_id": "cam"}, "height": 5, "width": 7,
                   "encoding": "rgb8", "is_bigendian": 0, "step": 21, "data": RGB.tobytes()}
    for bad in (np.zeros((5, 7, 4), np.uint8), np.zeros((5, 7), np.uint8), RGB.astype(np.uint16)):
        with pytest.raises(InputError, match="uint8 \\[H, W, 3\\]"):
            messages.rgb_message(bad, header())


@pytest.mark.parametrize("height, width", [(3, 4), (4, 3), (3, 3)])
def test_bayer_frames_need_an_even_width_and_height(height, width):
    message = raw_image(np.zeros((height, width, 3), np.uint8), "mono8")
    message.encoding = "bayer_rggb8"
    with pytest.raises(InputError, match="even width and height"):
        messages.image_to_frame(message)
