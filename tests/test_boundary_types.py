"""Public arguments and message fields at their boundary: each value of a type a field does
not take (numbers as strings, floats for integers, booleans, nulls, nested lists, objects)
is an InputError naming the field, never a TypeError or ValueError from deep inside, and
never silently replaced by a default."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

import clippy_rt
from clippy_rt.errors import InputError
from clippy_rt.robotics import messages

VALUES = ["32", "", 32.5, -32, 0, float("nan"), True, False, [], [[32]], [32, "32"], [32, 32, 32], {},
          {"a": 1}]
FRAME = np.zeros((32, 48, 3), np.uint8)


@pytest.fixture(scope="module")
def engine(tiny_model_dir):
    return clippy_rt.load(tiny_model_dir)


def _bad(values, *allowed):
    return [v for v in values if not any(v is a for a in allowed)]


@pytest.mark.parametrize("value", _bad(VALUES) + [32.0])
def test_size(engine, value):
    for call in (lambda: engine.segment(FRAME, ["a", "b"], size=value),
                 lambda: engine.classify(FRAME, ["a", "b"], size=value),
                 lambda: engine.stream(["a", "b"], size=value)):
        with pytest.raises(InputError):
            call()


@pytest.mark.parametrize("value", VALUES + [None, 2.0])
def test_counts(engine, value):
    with pytest.raises(InputError, match="top_k"):
        engine.classify(FRAME, ["a", "b"], top_k=value)
    with pytest.raises(InputError, match="batch"):
        engine.stream(["a", "b"], batch=value)


@pytest.mark.parametrize("value", VALUES + [None])
def test_choices(engine, value):
    with pytest.raises(InputError, match="resize"):
        engine.segment(FRAME, ["a", "b"], resize=value)
    with pytest.raises(InputError, match="preprocess"):
        engine.segment(FRAME, ["a", "b"], preprocess=value)


@pytest.mark.parametrize("value", VALUES + [None, [None], ["a", 1], {"a": 1}, {"a": [1]}, {"a": None},
                                            {"a": [[]]}, {1: ["a"]}, {"a": {"b": "c"}}])
def test_prompts(engine, value):
    with pytest.raises(InputError):
        engine.segment(FRAME, value)
    with pytest.raises(InputError):
        engine.classify(FRAME, value)


def _image_message(**changes):
    message = SimpleNamespace(header=SimpleNamespace(stamp=SimpleNamespace(sec=1_700_000_000, nanosec=5),
                                                     frame_id="cam"),
                              height=4, width=6, encoding="rgb8", is_bigendian=0, step=18, data=bytes(72))
    for name, value in changes.items():
        setattr(message, name, value)
    return message


@pytest.mark.parametrize("field", ["height", "width", "step", "encoding", "data"])
@pytest.mark.parametrize("value", VALUES + [None, 4.0, np.float32(4)])
def test_image_message_fields(field, value):
    with pytest.raises(InputError):
        messages.message_to_frame(_image_message(**{field: value}))


@pytest.mark.parametrize("value", VALUES + [None, 5.0, "5"])
def test_stamp_fields(value):
    header = SimpleNamespace(stamp=SimpleNamespace(sec=1_700_000_000, nanosec=value), frame_id="cam")
    for call in (lambda: messages.header_fields(header), lambda: messages.stamp_ns(header)):
        if isinstance(value, int) and not isinstance(value, bool):
            call()  # integers (also negative seconds) are taken as they are
            continue
        with pytest.raises(InputError, match="nanosec"):
            call()


def test_numpy_integer_fields_are_taken():
    message = _image_message(height=np.uint32(4), width=np.int64(6), step=np.uint32(18))
    message.header.stamp.nanosec = np.uint32(999_999_999)
    assert messages.message_to_frame(message).shape == (4, 6, 3)
    assert messages.stamp_ns(message.header) == 1_700_000_000_999_999_999
