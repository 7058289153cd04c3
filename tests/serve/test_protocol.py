"""The HTTP API's JSON messages: parsing, validation, and the response round trip."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
import torch
from PIL import Image

from clippy_rt.results import Segmentation
from clippy_rt.errors import InputError
from clippy_rt.serve.protocol import (RequestError, classification_from_json, classification_to_json,
                                      decode_image, encode_image_file, parse_classify, parse_segment,
                                      segmentation_from_json, segmentation_to_json)

PATCH = 8


def png_b64(array: np.ndarray, mode=None, fmt="PNG") -> str:
    buffer = io.BytesIO()
    Image.fromarray(array, mode=mode).save(buffer, format=fmt)
    return base64.b64encode(buffer.getvalue()).decode()


@pytest.fixture
def picture():
    return np.random.default_rng(0).integers(0, 256, (24, 40, 3), dtype=np.uint8)


def test_decode_image_reads_png_pixels_and_gray_as_rgb(picture):
    assert np.array_equal(np.asarray(decode_image(png_b64(picture))), picture)
    gray = picture[..., 0]
    decoded = np.asarray(decode_image(png_b64(gray)))
    assert decoded.shape == (24, 40, 3)
    assert np.array_equal(decoded[..., 2], gray)


def test_decode_image_reads_jpeg(picture):
    decoded = decode_image(png_b64(picture, fmt="JPEG"))
    assert decoded.size == (40, 24) and decoded.mode == "RGB"


@pytest.mark.parametrize("text, status, words", [
    ("%%%", 400, "not valid base64"),
    (base64.b64encode(b"hello, world").decode(), 400, "not a PNG or JPEG"),
    ("", 400, "empty"),
    (123, 400, "base64 string"),
])
def test_decode_image_rejects(text, status, words):
    with pytest.raises(RequestError, match=words) as info:
        decode_image(text)
    assert info.value.status == status


def test_decode_image_rejects_gif_and_truncated_png(picture):
    buffer = io.BytesIO()
    Image.fromarray(picture).save(buffer, format="GIF")
    with pytest.raises(RequestError, match="not a PNG or JPEG"):
        decode_image(base64.b64encode(buffer.getvalue()).decode())
    whole = base64.b64decode(png_b64(picture))
    with pytest.raises(RequestError, match="cannot be decoded"):
        decode_image(base64.b64encode(whole[: len(whole) // 2]).decode())


def test_decode_image_refuses_too_many_pixels_with_413():
    text = png_b64(np.zeros((300, 200, 3), dtype=np.uint8))
    with pytest.raises(RequestError, match="200x300 pixels, more than the limit of 59999") as info:
        decode_image(text, max_pixels=59_999)
    assert info.value.status == 413
    assert decode_image(text, max_pixels=60_000).size == (200, 300)


def test_parse_segment_fields(picture):
    request = parse_segment({"image": png_b64(picture), "prompts": {"pet": ["cat", "dog"], "tree": ["oak"]},
                             "template": "a photo of {article} {}", "size": [16, 24], "resize": "letterbox",
                             "return_scores": True}, PATCH)
    assert request.prompts.classes == ("pet", "tree")
    assert request.prompts.prompts == ("a photo of a cat", "a photo of a dog", "a photo of an oak")
    assert request.prompts.prompt_class == (0, 0, 1)
    assert request.size == (16, 24) and request.resize == "letterbox" and request.return_scores
    defaults = parse_segment({"image": png_b64(picture), "prompts": ["cat"]}, PATCH)
    assert defaults.size is None and defaults.resize == "squash" and not defaults.return_scores
    assert parse_classify({"image": png_b64(picture), "labels": ["cat"]}, PATCH).resize == "crop"


def test_repeated_prompts_follow_each_requests_template_and_order(picture):
    image = png_b64(picture)
    body = {"image": image, "prompts": {"pet": ["cat", "dog"], "tree": ["oak"]}}
    for _ in range(2):  # a second request with the same prompts gets the same answer
        assert parse_segment(body, PATCH, model_template="a {}").prompts.prompts == ("a cat", "a dog", "a oak")
    assert parse_segment(body, PATCH, model_template="the {}").prompts.prompts == ("the cat", "the dog", "the oak")
    assert parse_segment(body, PATCH).prompts.prompts == ("cat", "dog", "oak")
    assert parse_segment(dict(body, template="{} here"), PATCH, model_template="a {}").prompts.prompts == (
        "cat here", "dog here", "oak here")
    swapped = parse_segment({"image": image, "prompts": {"tree": ["oak"], "pet": ["cat", "dog"]}}, PATCH)
    assert swapped.prompts.classes == ("tree", "pet") and swapped.prompts.prompt_class == (0, 1, 1)
    for _ in range(2):  # a bad set fails every time, not only the first
        with pytest.raises(RequestError, match="duplicate class"):
            parse_segment({"image": image, "prompts": ["cat", "cat"]}, PATCH)


def test_batch_keys_group_only_compatible_requests(picture):
    image = png_b64(picture)
    base = {"image": image, "prompts": ["cat", "dog"]}
    key = parse_segment(base, PATCH).batch_key
    assert parse_segment(dict(base, image=png_b64(picture[:16])), PATCH).batch_key == key
    for change in ({"prompts": ["dog", "cat"]}, {"size": 16}, {"resize": "crop"}, {"template": "a {}"}):
        assert parse_segment(dict(base, **change), PATCH).batch_key != key, change
    assert parse_classify({"image": image, "labels": ["cat", "dog"]}, PATCH).batch_key != key


@pytest.mark.parametrize("change, words", [
    ({"prompts": []}, "empty"),
    ({"prompts": ["cat", " "]}, "prompt 1 is empty"),
    ({"prompts": "cat"}, "list of strings"),
    ({"prompts": ["cat", "cat"]}, "duplicate class"),
    ({"prompts": {"pet": 3}}, "list of strings"),
    ({"size": 30}, "multiples of the patch size 8"),
    ({"size": [16]}, "integer or \\[height, width\\]"),
    ({"size": True}, "integer or"),
    ({"size": 8192}, "in \\[8, 4096\\]"),
    ({"resize": "stretch"}, "resize"),
    ({"template": 5}, "template"),
    ({"return_scores": "yes"}, "true or false"),
    ({"colour": "red"}, "unknown field 'colour'"),
])
def test_parse_segment_rejects(picture, change, words):
    body = dict({"image": png_b64(picture), "prompts": ["cat"]}, **change)
    with pytest.raises(RequestError, match=words) as info:
        parse_segment(body, PATCH)
    assert info.value.status == 400


def test_parse_rejects_missing_fields_non_objects_and_tiny_images(picture):
    with pytest.raises(RequestError, match="missing field 'image'"):
        parse_segment({"prompts": ["cat"]}, PATCH)
    with pytest.raises(RequestError, match="JSON object, got an array"):
        parse_segment([1, 2], PATCH)
    with pytest.raises(RequestError, match="smaller than one 8x8 patch"):
        parse_segment({"image": png_b64(picture[:7]), "prompts": ["cat"]}, PATCH)
    for top_k in (0, -1, 2.5, True):
        with pytest.raises(RequestError, match="top_k"):
            parse_classify({"image": png_b64(picture), "labels": ["cat"], "top_k": top_k}, PATCH)


def test_segmentation_round_trip_and_png_pixels():
    labels = torch.tensor([[0, 1, 1, 2], [2, 2, 0, 1], [1, 1, 1, 1]])
    scores = torch.linspace(-1, 1, 12).reshape(3, 4)
    result = Segmentation(labels=labels, scores=scores, prompts=("sky", "cat", "grass"), crop_box=(1, 2, 3, 4),
                          timings_ms={"image": 1.23456})
    body = segmentation_to_json(result, return_scores=True)
    assert (body["height"], body["width"], body["classes"]) == (3, 4, ["sky", "cat", "grass"])
    assert body["fractions"] == pytest.approx({"sky": 2 / 12, "cat": 7 / 12, "grass": 3 / 12})
    assert body["timings_ms"] == {"image": 1.235}
    # The PNG's pixel values are the class indices, read back by PIL alone.
    with Image.open(io.BytesIO(base64.b64decode(body["labels_png"]))) as png:
        assert np.array_equal(np.asarray(png), labels.numpy())
    back = segmentation_from_json(body)
    assert torch.equal(back.labels, labels) and back.labels.dtype == torch.uint8  # as Engine.segment gives up to 255 classes
    assert torch.equal(back.scores, scores)
    assert back.prompts == ("sky", "cat", "grass") and back.crop_box == (1, 2, 3, 4)
    assert "scores" not in segmentation_to_json(result)
    assert segmentation_from_json(segmentation_to_json(result)).scores.shape == (0,)


def test_segmentation_round_trip_with_more_than_256_classes():
    labels = torch.tensor([[0, 299], [256, 7]])
    result = Segmentation(labels=labels, scores=torch.zeros(2, 2), prompts=tuple(f"c{i}" for i in range(300)))
    assert torch.equal(segmentation_from_json(segmentation_to_json(result)).labels, labels)


def _png_of(array) -> str:
    buffer = io.BytesIO()
    Image.fromarray(np.asarray(array, dtype=np.uint8)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def _answer(**changes):
    """A valid /v1/segment answer for 2 x 3 labels over 3 classes, with ``changes``."""
    body = {"classes": ["sky", "cat", "grass"], "height": 2, "width": 3,
            "labels_png": _png_of([[0, 1, 2], [2, 1, 0]]), "crop_box": [0, 1, 2, 3], "timings_ms": {"image": 1.5},
            "scores": base64.b64encode(np.arange(6, dtype="<f4").tobytes()).decode()}
    body.update(changes)
    return {k: v for k, v in body.items() if v is not ...}


def test_a_valid_answer_reads_back_field_by_field():
    back = segmentation_from_json(_answer())
    assert back.prompts == ("sky", "cat", "grass") and back.labels.tolist() == [[0, 1, 2], [2, 1, 0]]
    assert back.scores.tolist() == [[0, 1, 2], [3, 4, 5]] and back.scores.dtype == torch.float32
    assert back.crop_box == (0, 1, 2, 3) and back.timings_ms == {"image": 1.5}
    bare = segmentation_from_json(_answer(scores=..., crop_box=..., timings_ms=...))
    assert bare.scores.shape == (0,) and bare.crop_box is None and bare.timings_ms == {}
    assert segmentation_from_json(_answer(crop_box=None)).crop_box is None


@pytest.mark.parametrize("changes, reason", [
    ({"classes": "abc"}, "classes"),                                   # a string is not a class list
    ({"classes": ["sky", 1, "grass"]}, "classes"),
    ({"classes": ...}, "classes"),
    ({"height": 3}, "header says"),                                    # labels of another size
    ({"width": "3x"}, "invalid literal"),
    ({"labels_png": _png_of([[0, 1, 3], [2, 1, 0]])}, "past the 3 classes"),
    ({"labels_png": base64.b64encode(b"not a png").decode()}, "cannot identify"),
    ({"scores": base64.b64encode(np.arange(5, dtype="<f4").tobytes()).decode()}, "reshape"),
    ({"crop_box": [0, 1, 2]}, "not 4"),
    ({"crop_box": [0, 1, 2, "x"]}, "invalid literal"),
    ({"crop_box": 5}, "not iterable"),
    ({"timings_ms": {"image": "fast"}}, "could not convert"),
    ({"timings_ms": [1]}, "items"),
])
def test_malformed_answers_name_what_is_wrong(changes, reason):
    with pytest.raises(InputError, match="malformed segment response") as caught:
        segmentation_from_json(_answer(**changes))
    assert reason in str(caught.value) and "\n" not in str(caught.value)


def test_malformed_responses_raise_input_error():
    with pytest.raises(InputError, match="malformed segment response"):
        segmentation_from_json({"classes": ["a"], "height": 2, "width": 2, "labels_png": "!!"})
    with pytest.raises(InputError, match="malformed classify response"):
        classification_from_json({"labels": [["a"]]})
    assert classification_from_json(classification_to_json([("a", 0.75), ("b", 0.25)])) == [("a", 0.75), ("b", 0.25)]


def test_encode_image_file_passes_png_files_through(tmp_path, picture):
    path = tmp_path / "x.png"
    Image.fromarray(picture).save(path)
    assert encode_image_file(path) == path.read_bytes()
    bmp = tmp_path / "x.bmp"
    Image.fromarray(picture).save(bmp)
    with Image.open(io.BytesIO(encode_image_file(bmp))) as decoded:
        assert decoded.format == "PNG" and np.array_equal(np.asarray(decoded), picture)
    with Image.open(io.BytesIO(encode_image_file(picture))) as decoded:
        assert np.array_equal(np.asarray(decoded), picture)
    with pytest.raises(InputError, match="not found"):
        encode_image_file(tmp_path / "missing.png")
