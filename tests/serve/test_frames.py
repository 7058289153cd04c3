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
