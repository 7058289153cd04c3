"""The binary frame protocol without Ray: request encoding and parsing (every frame format,
bad input), answers back to Segmentations in the engine's dtypes."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

from clippy_rt.errors import InputError
from clippy_rt.results import Segmentation
from clippy_rt.serve.frames import (MAX_FRAMES, encode_frames, frame_of, parse_frames, segmentations_from_binary,
                                    segmentations_to_binary)
from clippy_rt.serve.protocol import RequestError

PATCH = 8


@pytest.fixture(scope="module")
def pictures():
    rng = np.random.default_rng(11)
    return [rng.integers(0, 256, shape, dtype=np.uint8) for shape in [(24, 32, 3), (16, 40, 3), (32, 16, 3)]]


def file_bytes(array, kind):
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=kind, **({"quality": 90} if kind == "JPEG" else {}))
    return buffer.getvalue()


def test_every_frame_format_parses_back_to_its_pixels(pictures, tmp_path):
    png = file_bytes(pictures[0], "PNG")
    jpeg = file_bytes(pictures[1], "JPEG")
    path = tmp_path / "x.png"
    path.write_bytes(png)
    frames = [frame_of(path), frame_of(jpeg), frame_of(pictures[2]), frame_of(Image.fromarray(pictures[0]))]
    assert [kind for kind, _, _ in frames] == ["png", "jpeg", "raw", "raw"]
    length, body = encode_frames(frames, {"a": ["x", "y"], "b": ["z"]}, size=[16, 24], resize="crop",
                                 template="a {}", labels="zlib")
    request = parse_frames(str(length), body, PATCH)
    assert request.prompts.classes == ("a", "b") and request.prompts.prompts == ("a x", "a y", "a z")
    assert (request.size, request.resize, request.labels) == ((16, 24), "crop", "zlib")
    assert np.array_equal(np.asarray(request.images[0]), pictures[0])
    with Image.open(io.BytesIO(jpeg)) as decoded:
        assert np.array_equal(np.asarray(request.images[1]), np.asarray(decoded.convert("RGB")))
    assert np.array_equal(request.images[2], pictures[2]) and request.images[2].shape == (32, 16, 3)
    assert np.array_equal(request.images[3], pictures[0])
    assert request.batch_key == ("segment", request.prompts, (16, 24), "crop")


def bad_request(header, payload=b"", length=None):
    head = json.dumps(header).encode()
    return parse_frames(str(len(head) if length is None else length), head + payload, PATCH, max_pixels=2000)


@pytest.mark.parametrize("case, status, message", [
    ("truncated", 400, "declares 2304 bytes, the body carries 2000"),
    ("padded", 400, "declares 2304 bytes, the body carries 2310"),
    ("no_length", 400, "Clippy-Header-Length"),
    ("length_past_body", 400, "but the body has"),
    ("header_not_json", 400, "not valid JSON"),
    ("unknown_field", 400, "unknown field 'fps'"),
    ("unknown_format", 400, "'format' must be one of"),
    ("raw_without_size", 400, "'height' and 'width'"),
    ("raw_wrong_size", 400, "is 2304 bytes, got 2400"),
    ("png_declared_jpeg", 400, "declared jpeg, its bytes are PNG"),
    ("not_an_image", 400, "not a PNG or JPEG"),
    ("too_small", 400, "smaller than one 8x8 patch"),
    ("too_many_pixels", 413, "more than the limit of 2000"),
    ("too_many_frames", 413, "more than the limit of 256"),
    ("no_frames", 400, "non-empty list"),
    ("bad_labels", 400, "'labels' must be one of raw, zlib"),
    ("empty_prompts", 400, "empty"),
])
def test_bad_binary_requests_are_refused_with_a_reason(pictures, case, status, message):
    raw = {"format": "raw", "bytes": 32 * 24 * 3, "height": 24, "width": 32}
    pixels = pictures[0].tobytes()
    png = file_bytes(pictures[0], "PNG")
    cases = {
        "truncated": lambda: bad_request({"prompts": ["a"], "frames": [raw]}, pixels[:2000]),
        "padded": lambda: bad_request({"prompts": ["a"], "frames": [raw]}, pixels + b"123456"),
        "no_length": lambda: parse_frames(None, b"{}", PATCH),
        "length_past_body": lambda: bad_request({"prompts": ["a"], "frames": [raw]}, b"", length=10_000),
        "header_not_json": lambda: parse_frames("5", b"{oops" + pixels, PATCH),
        "unknown_field": lambda: bad_request({"prompts": ["a"], "frames": [raw], "fps": 30}, pixels),
        "unknown_format": lambda: bad_request({"prompts": ["a"], "frames": [{"format": "gif", "bytes": 3}]}, b"abc"),
        "raw_without_size": lambda: bad_request({"prompts": ["a"], "frames": [{"format": "raw", "bytes": 2304}]},
                                                pixels),
        "raw_wrong_size": lambda: bad_request({"prompts": ["a"], "frames": [dict(raw, bytes=2400)]},
                                              pixels + bytes(96)),
        "png_declared_jpeg": lambda: bad_request({"prompts": ["a"], "frames": [{"format": "jpeg", "bytes": len(png)}]},
                                                 png),
        "not_an_image": lambda: bad_request({"prompts": ["a"], "frames": [{"format": "png", "bytes": 5}]}, b"hello"),
        "too_small": lambda: bad_request({"prompts": ["a"], "frames": [dict(raw, bytes=4 * 32 * 3, height=4)]},
                                         bytes(4 * 32 * 3)),
        "too_many_pixels": lambda: bad_request({"prompts": ["a"], "frames": [dict(raw, bytes=3 * 64 * 64, height=64,
                                                                                  width=64)]}, bytes(3 * 64 * 64)),
        "too_many_frames": lambda: bad_request({"prompts": ["a"], "frames": [raw] * (MAX_FRAMES + 1)}, b""),
        "no_frames": lambda: bad_request({"prompts": ["a"], "frames": []}),
        "bad_labels": lambda: bad_request({"prompts": ["a"], "frames": [raw], "labels": "png"}, pixels),
        "empty_prompts": lambda: bad_request({"prompts": [], "frames": [raw]}, pixels),
    }
    with pytest.raises(RequestError) as info:
        cases[case]()
    assert info.value.status == status
    assert message in str(info.value)


@pytest.mark.parametrize("classes, dtype", [(3, torch.uint8), (300, torch.int64)])
@pytest.mark.parametrize("encoding", ["raw", "zlib"])
def test_answers_round_trip_in_the_engines_dtype(classes, dtype, encoding):
    rng = np.random.default_rng(classes)
    names = tuple(f"class {i}" for i in range(classes))
    results = [Segmentation(labels=torch.from_numpy(rng.integers(0, classes, shape)).to(dtype),
                            scores=torch.rand(shape), prompts=names, crop_box=box, timings_ms={"image": 1.5})
               for shape, box in (((5, 7), None), ((3, 2), (1, 2, 3, 2)))]
    answer = segmentations_to_binary(results, encoding)
    header = json.loads(answer.data[:answer.header_length])
    assert [frame["dtype"] for frame in header["frames"]] == ["uint8" if classes <= 255 else "uint16"] * 2
    if encoding == "raw":
        # The label bytes are the class indices as they are, after the header.
        width = 1 if classes <= 255 else 2
        assert len(answer.data) == answer.header_length + (35 + 6) * width
    back = segmentations_from_binary(str(answer.header_length), answer.data)
    for got, want in zip(back, results):
        assert got.labels.dtype == dtype
        assert torch.equal(got.labels, want.labels)
        assert (got.prompts, got.crop_box, got.timings_ms) == (names, want.crop_box, {"image": 1.5})
        assert got.scores.shape == (0,)


def test_malformed_answers_raise_input_error():
    answer = segmentations_to_binary([Segmentation(labels=torch.zeros(4, 4, dtype=torch.uint8),
                                                   scores=torch.zeros(4, 4), prompts=("a",))])
    with pytest.raises(InputError, match="malformed binary segment answer"):
        segmentations_from_binary(str(answer.header_length), answer.data[:-1])
    with pytest.raises(InputError, match="bytes after the last frame"):
        segmentations_from_binary(str(answer.header_length), answer.data + b"x")


def _raw_request(frames, payload, **header):
    head = json.dumps(dict({"prompts": ["a"], "frames": frames}, **header)).encode()
    return len(head), head + payload


@pytest.mark.parametrize("height, width, accepted", [(8, 8, True), (8, 250, True), (7, 250, False), (250, 7, False),
                                                     (40, 50, True), (41, 50, False)])
def test_raw_frames_at_the_patch_and_pixel_limits(height, width, accepted):
    # max_pixels 2000: 40 x 50 is exactly the limit; a side of exactly one patch (8) is enough.
    entry = {"format": "raw", "bytes": height * width * 3, "height": height, "width": width}
    args = _raw_request([entry], bytes(height * width * 3))
    if accepted:
        request = parse_frames(*args, PATCH, max_pixels=2000)
        assert request.images[0].shape == (height, width, 3)
    else:
        with pytest.raises(RequestError, match="frame 0"):
            parse_frames(*args, PATCH, max_pixels=2000)


def test_every_refusal_names_the_frame_it_is_about(pictures):
    good = {"format": "raw", "bytes": 32 * 24 * 3, "height": 24, "width": 32}
    pixels = pictures[0].tobytes()
    small_png = file_bytes(np.zeros((4, 40, 3), np.uint8), "PNG")
    cases = [
        ([good, {"format": "raw", "bytes": 3, "height": 1, "width": 1}], pixels + bytes(3),
         "frame 1 is 1x1 pixels (width x height), smaller than one 8x8 patch"),
        ([good, dict(good, height=0)], pixels * 2, "frame 1: a raw frame needs positive integer 'height' and 'width'"),
        ([good, {"format": "png", "bytes": 5}], pixels + b"hello", "frame 1 is not a PNG or JPEG file"),
        ([good, {"format": "png", "bytes": len(small_png)}], pixels + small_png, "frame 1: "),
        ([good, good, {"format": "gif", "bytes": 1}], pixels * 2 + b"x",
         "frame 2: 'format' must be one of jpeg, png, raw"),
        ([good, dict(good, bytes=0)], pixels, "frame 1: 'bytes' must be a positive integer, got 0"),
        ([good, dict(good, zz=1, fps=2)], pixels * 2, "frame 1: unknown field 'fps'"),
    ]
    for frames, payload, message in cases:
        with pytest.raises(RequestError) as info:
            parse_frames(*_raw_request(frames, payload), PATCH)
        assert message in str(info.value), (message, str(info.value))


def test_a_one_byte_frame_and_exactly_max_frames_are_taken():
    entry = {"format": "raw", "bytes": 8 * 8 * 3, "height": 8, "width": 8}
    request = parse_frames(*_raw_request([entry] * MAX_FRAMES, bytes(8 * 8 * 3 * MAX_FRAMES)), PATCH)
    assert len(request.images) == MAX_FRAMES
    with pytest.raises(RequestError, match="'png', its bytes|not a PNG or JPEG"):
        parse_frames(*_raw_request([{"format": "png", "bytes": 1}], b"x"), PATCH)


@pytest.mark.parametrize("length, message", [("0", "is 0, but the body has"), ("1", "not valid JSON")])
def test_header_lengths_at_the_bottom(length, message):
    with pytest.raises(RequestError, match=message):
        parse_frames(length, b'{"prompts": ["a"]}', PATCH)


def test_frames_of_other_images_are_sent_as_raw_rgb(tmp_path):
    rng = np.random.default_rng(5)
    rgb = rng.integers(0, 256, (9, 11, 3), dtype=np.uint8)
    rgba = np.dstack([rgb, np.full((9, 11), 200, np.uint8)])
    grey = rgb[..., 0].copy()
    bmp = io.BytesIO()
    Image.fromarray(rgb).save(bmp, format="BMP")
    expectations = [
        (rgb, rgb),                                                   # as it is
        (rgba, np.asarray(Image.fromarray(rgba).convert("RGB"))),   # alpha dropped
        (grey, np.repeat(grey[..., None], 3, axis=2)),                # grey to three channels
        (bmp.getvalue(), rgb),                                        # another file format: decoded
        (Image.fromarray(rgb), rgb),
    ]
    for image, want in expectations:
        kind, data, (height, width) = frame_of(image)
        assert kind == "raw" and (height, width) == (9, 11)
        assert np.array_equal(np.frombuffer(data, np.uint8).reshape(9, 11, 3), want)


def test_answers_keep_uint8_up_to_255_classes_and_name_their_faults():
    names = tuple(f"c{i}" for i in range(255))
    result = Segmentation(labels=torch.full((2, 3), 254, dtype=torch.uint8), scores=torch.zeros(2, 3), prompts=names,
                          timings_ms={"image": 1.23456})
    answer = segmentations_to_binary([result])
    header = json.loads(answer.data[:answer.header_length])
    assert header["frames"][0]["dtype"] == "uint8" and len(answer.data) == answer.header_length + 6
    assert header["frames"][0]["timings_ms"] == {"image": 1.235}  # rounded as the JSON answer is
    empty = segmentations_to_binary([])
    assert json.loads(empty.data[:empty.header_length]) == {"classes": [], "frames": []}
    # An answer frame without timings reads back with none.
    del header["frames"][0]["timings_ms"]
    head = json.dumps(header).encode()
    (back,) = segmentations_from_binary(str(len(head)), head + answer.data[answer.header_length:])
    assert back.timings_ms == {} and back.labels.tolist() == [[254] * 3] * 2

    def rebuilt(**changes):
        frame = dict(header["frames"][0], **changes.pop("frame", {}))
        head = json.dumps(dict(header, frames=[frame], **changes)).encode()
        return str(len(head)), head + answer.data[answer.header_length:]

    for args, message in [
        (rebuilt(classes=list(names[:254])), "label 254 is past the 254 classes"),
        (rebuilt(classes="abc"), "'classes' is not a list of strings"),
        (rebuilt(frame={"crop_box": [1, 2]}), "crop_box has 2 values"),
        (rebuilt(frame={"timings_ms": [1]}), "malformed binary segment answer"),
        (rebuilt(frame={"bytes": 7}), "the answer is shorter than its header says"),
        (rebuilt(frame={"bytes": 5}), None),
    ]:
        with pytest.raises(InputError) as info:
            segmentations_from_binary(*args)
        assert str(info.value).startswith("malformed binary segment answer")
        if message is not None:
            assert message in str(info.value)
    length, body = rebuilt()
    with pytest.raises(InputError, match=r"^malformed binary segment answer: 3 bytes after the last frame$"):
        segmentations_from_binary(length, body + b"abc")


def test_only_requests_of_raw_frames_count_as_raw_only(pictures):
    from clippy_rt.serve.frames import raw_frames_only

    png = file_bytes(pictures[0], "PNG")
    raw_two = encode_frames([frame_of(pictures[1]), frame_of(pictures[2])], ["x"])
    assert raw_frames_only(str(raw_two[0]), raw_two[1]) is True
    assert raw_frames_only(raw_two[0], raw_two[1]) is True
    mixed = encode_frames([frame_of(pictures[1]), frame_of(png)], ["x"])
    assert raw_frames_only(str(mixed[0]), mixed[1]) is False
    only_png = encode_frames([frame_of(png)], ["x"])
    assert raw_frames_only(str(only_png[0]), only_png[1]) is False
    # Anything unreadable goes the long way, where parse_frames says what is wrong.
    head = json.dumps({"prompts": ["x"], "frames": []}).encode()
    for length, body in [(None, raw_two[1]), ("x", raw_two[1]), ("0", raw_two[1]),
                         (str(len(raw_two[1]) + 1), raw_two[1]), (str(raw_two[0] - 1), raw_two[1]),
                         (str(len(head)), head), ("2", b"[]"), ("4", b"\xff\xfe{}"),
                         *((str(len(text)), text) for text in (b'{"frames": ["raw", "raw"]}', b'{"frames": {"a": 1}}',
                                                               b'{"frames": [{"format": "raw"}, 3]}'))]:
        assert raw_frames_only(length, body) is False, (length, body)


def test_only_raw_frame_messages_count_as_raw():
    from clippy_rt.serve.session import LENGTH, raw_frame_message

    def message(header, data=b"\0" * 12):
        head = json.dumps(header).encode()
        return LENGTH.pack(len(head)) + head + data

    assert raw_frame_message(message({"id": 1, "format": "raw", "bytes": 12, "height": 2, "width": 2})) is True
    assert raw_frame_message(message({"id": 1, "format": "png", "bytes": 12})) is False
    assert raw_frame_message(message({"id": 1, "bytes": 12})) is False
    assert raw_frame_message(message(["raw"])) is False
    assert raw_frame_message(b"\x01\x00") is False
    assert raw_frame_message(LENGTH.pack(3) + b"{x}") is False
    assert raw_frame_message(LENGTH.pack(2) + b"\xff\xfe") is False
