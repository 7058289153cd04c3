"""The serving protocols at their boundary: every field of the JSON requests and of the binary
frames header, given each JSON type it does not take, is refused with a RequestError and a
4xx status (never a TypeError, KeyError or a 500). Also: a batch whose requests alternate
between keys and frame sizes (A, B, A) is answered in request order, and an uploaded photo
comes out as the same file given to ``load_image``. No network: the protocol and the
replica are called in process."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
from PIL import Image

import clippy_rt
from clippy_rt.errors import InputError
from clippy_rt.images import load_image
from clippy_rt.serve import frames as binary
from clippy_rt.serve import protocol
from clippy_rt.serve.protocol import RequestError
from clippy_rt.serve.replica import Replica

PATCH = 16
PROMPTS = ["a cat", "a dog", "the sky"]
# One value of each JSON type, and the near misses clients send: numbers as strings,
# floats for integers, booleans for numbers, nested lists, objects, empty containers.
VALUES = ["32", "", 32.0, 32.5, -32, 0, 10 ** 30, float("nan"), None, True, False, [], [[32]], [32, "32"],
          [32, 32, 32], {}, {"a": 1}, ["a", 1], [None], {"cat": [1]}, {"cat": None}, {"cat": [[]]}]


def _png(height=32, width=48, seed=0) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)).save(
        buffer, format="PNG")
    return buffer.getvalue()


IMAGE = base64.b64encode(_png()).decode()
SEGMENT = {"image": IMAGE, "prompts": PROMPTS, "size": 32, "resize": "squash", "template": "a photo of {}",
           "return_scores": False}
CLASSIFY = {"image": IMAGE, "labels": PROMPTS, "top_k": 2, "size": 32, "resize": "crop", "template": "{}"}


def _valid(parse, body) -> bool:
    try:
        parse(body)
    except RequestError:
        return False
    return True


def _refused(parse, body):
    with pytest.raises(RequestError) as caught:
        parse(body)
    assert 400 <= caught.value.status < 500
    assert caught.value.args[0] and "\n" not in caught.value.args[0]
    return caught.value


# Values a field takes besides its own type: the defaults (null) of optional fields, and
# lists of strings where prompts go.
ALLOWED = {"size": [None, 32], "template": [None], "top_k": [10 ** 30]}


def _cases(base):
    for field in base:
        for value in VALUES:
            if value is True and field == "return_scores":
                continue
            if value is False and field == "return_scores":
                continue
            if any(value is allowed or (type(value) is type(allowed) and value == allowed)
                   for allowed in ALLOWED.get(field, [])):
                continue
            yield field, value


@pytest.mark.parametrize("field, value", list(_cases(SEGMENT)))
def test_segment_fields_refuse_other_types(field, value):
    _refused(lambda body: protocol.parse_segment(body, PATCH), dict(SEGMENT, **{field: value}))


@pytest.mark.parametrize("field, value", list(_cases(CLASSIFY)))
def test_classify_fields_refuse_other_types(field, value):
    _refused(lambda body: protocol.parse_classify(body, PATCH), dict(CLASSIFY, **{field: value}))


@pytest.mark.parametrize("kind, base", [("segment", SEGMENT), ("classify", CLASSIFY)])
def test_the_bodies_themselves_and_missing_fields(kind, base):
    parse = getattr(protocol, f"parse_{kind}")
    assert _valid(lambda body: parse(body, PATCH), base)
    for body in VALUES + ["{}", [base]]:
        if not isinstance(body, dict):
            _refused(lambda b: parse(b, PATCH), body)
    for field in ("image", "prompts" if kind == "segment" else "labels"):
        _refused(lambda b: parse(b, PATCH), {k: v for k, v in base.items() if k != field})
    _refused(lambda b: parse(b, PATCH), dict(base, extra=1))


def _frames_body(header_changes=None, entry_changes=None, payload=None):
    data = _png()
    entry = {"format": "png", "bytes": len(data)}
    entry.update(entry_changes or {})
    header = {"prompts": PROMPTS, "size": 32, "resize": "squash", "labels": "raw", "frames": [entry]}
    header.update(header_changes or {})
    head = json.dumps(header).encode()
    return len(head), head + (data if payload is None else payload)


def test_a_valid_binary_request_parses():
    request = binary.parse_frames(*_frames_body(), PATCH)
    assert len(request.images) == 1 and request.images[0].size == (48, 32)


@pytest.mark.parametrize("field, value", [(f, v) for f in ("prompts", "template", "size", "resize", "labels", "frames")
                                          for v in VALUES
                                          if not any(v is a or (type(v) is type(a) and v == a)
                                                     for a in ALLOWED.get(f, []))])
def test_binary_header_fields_refuse_other_types(field, value):
    _refused(lambda args: binary.parse_frames(*args, PATCH), _frames_body({field: value}))


@pytest.mark.parametrize("field, value", [(f, v) for f in ("format", "bytes", "height", "width") for v in VALUES])
def test_binary_frame_entries_refuse_other_types(field, value):
    changes = {field: value}
    if field in ("height", "width"):
        # A raw frame of 32 x 48 pixels; its height or width replaced.
        raw = np.zeros((32, 48, 3), np.uint8).tobytes()
        changes = dict({"format": "raw", "bytes": len(raw), "height": 32, "width": 48}, **changes)
        body = _frames_body(entry_changes=changes, payload=raw)
    else:
        body = _frames_body(entry_changes=changes)
    _refused(lambda args: binary.parse_frames(*args, PATCH), body)


@pytest.mark.parametrize("length", [None, "", "abc", "1.5", 1.5, -1, 0, 10 ** 9, True, [3], "  "])
def test_the_header_length_refuses_other_values(length):
    _, body = _frames_body()
    _refused(lambda args: binary.parse_frames(*args, PATCH), (length, body))


@pytest.mark.parametrize("answer", [{}, {"classes": None}, {"classes": [], "height": "x"}, [],
                                    {"classes": ["a"], "height": 1, "width": 1, "labels_png": 3}])
def test_malformed_answers_are_input_errors(answer):
    with pytest.raises(InputError):
        protocol.segmentation_from_json(answer)
    with pytest.raises(InputError):
        protocol.classification_from_json(answer if isinstance(answer, dict) else {"labels": answer or None})


# ---------------------------------------------------------------------------------------
# Order and orientation through the replica


@pytest.fixture(scope="module")
def replica(tiny_model_dir):
    return Replica(clippy_rt.load(tiny_model_dir))


def test_a_batch_mixing_keys_and_sizes_answers_in_order(replica):
    """Requests A, B, A, B, A (two prompt sets) whose images alternate between two sizes, and a
    binary request holding frames of both sizes: each answer equals the request answered alone."""
    shapes = [(32, 48), (48, 32), (32, 48), (48, 32), (32, 48)]
    vocabularies = [PROMPTS, ["grass", "a road"], PROMPTS, ["grass", "a road"], PROMPTS]
    requests = []
    for index, ((height, width), prompts) in enumerate(zip(shapes, vocabularies)):
        image = base64.b64encode(_png(height, width, seed=index)).decode()
        requests.append(replica.parse("segment", {"image": image, "prompts": prompts, "size": 32}))
    frames = [("png", _png(h, w, seed=10 + i), (0, 0)) for i, (h, w) in enumerate(shapes)]
    requests.insert(2, replica.parse_binary(*binary.encode_frames(frames, PROMPTS, size=32)))
    together = replica.run_batch(requests)
    alone = [replica.run_batch([request])[0] for request in requests]
    assert [status for status, _ in together] == [200] * len(requests)
    for index, ((_, got), (_, want)) in enumerate(zip(together, alone)):
        if isinstance(got, binary.BinaryBody):
            got_frames = binary.segmentations_from_binary(got.header_length, got.data)
            want_frames = binary.segmentations_from_binary(want.header_length, want.data)
            assert [tuple(s.labels.shape) for s in got_frames] == shapes
            assert [s.labels.tolist() for s in got_frames] == [s.labels.tolist() for s in want_frames]
        else:
            assert got["classes"] == want["classes"] == list(vocabularies[index if index < 2 else index - 1])
            assert (got["height"], got["width"]) == shapes[index if index < 2 else index - 1]
            assert got["labels_png"] == want["labels_png"], f"request {index}"


def _photo(orientation: int) -> bytes:
    """A JPEG whose pixels are stored turned, with the EXIF tag that turns them back."""
    upright = np.zeros((32, 48, 3), np.uint8)
    upright[:, :, 0] = np.linspace(0, 255, 48)[None, :]
    upright[:, :, 1] = np.linspace(0, 255, 32)[:, None]
    stored = {1: upright, 3: np.rot90(upright, 2), 6: np.rot90(upright, 1), 8: np.rot90(upright, -1)}[orientation]
    picture = Image.fromarray(np.ascontiguousarray(stored))
    exif = picture.getexif()
    exif[0x0112] = orientation
    buffer = io.BytesIO()
    picture.save(buffer, format="JPEG", quality=95, exif=exif.tobytes())
    return buffer.getvalue()


@pytest.mark.parametrize("orientation", [1, 3, 6, 8])
@pytest.mark.parametrize("path", ["json", "binary"])
def test_an_uploaded_photo_decodes_as_the_file_does(tmp_path, orientation, path):
    data = _photo(orientation)
    file = tmp_path / "photo.jpg"
    file.write_bytes(data)
    expected = np.asarray(load_image(file))
    if path == "json":
        decoded = protocol.decode_image(base64.b64encode(data).decode())
    else:
        decoded = binary.parse_frames(*binary.encode_frames([("jpeg", data, (0, 0))], PROMPTS), PATCH).images[0]
    np.testing.assert_array_equal(np.asarray(decoded), expected)
