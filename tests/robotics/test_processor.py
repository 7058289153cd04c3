"""The node's processing loop, without ROS: latest frame, prompt changes, bad frames, timing."""

from __future__ import annotations

import json
import threading
import time

import numpy as np
import pytest
import torch

import clippy_rt
from clippy_rt.errors import InputError
from clippy_rt.robotics.processor import FrameProcessor, LatestSlot, SegmentationLoop, diagnostics_values
from fake_messages import raw_image


@pytest.fixture(scope="module")
def engine(tiny_model_dir):
    return clippy_rt.load(tiny_model_dir)


class FakeClock:
    """Returns the queued times in order (seconds)."""

    def __init__(self, *times):
        self.times = list(times)

    def __call__(self):
        return self.times.pop(0)


class SpyEngine:
    """Delegates to a real engine and records every segment call's frames and prompts."""

    def __init__(self, engine):
        self.engine, self.calls = engine, []
        self.template = engine.template

    def encode_text(self, prompts):
        return self.engine.encode_text(prompts)

    def segment(self, frames, prompts, **options):
        self.calls.append(([f.copy() for f in frames], prompts.classes))
        return self.engine.segment(frames, prompts, **options)


def _frames(count, seed=0, shape=(24, 40, 3)):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, shape, dtype=np.uint8) for _ in range(count)]


def test_only_the_latest_frame_is_processed(engine):
    spy = SpyEngine(engine)
    published = []
    loop = SegmentationLoop(FrameProcessor(spy, "cat,dog"), published.append)
    frames = _frames(3)
    for index, frame in enumerate(frames):
        loop.submit(raw_image(frame, "rgb8", stamp=(100 + index, 0)))
    output = loop.step(timeout=0)
    assert len(spy.calls) == 1 and len(spy.calls[0][0]) == 1
    np.testing.assert_array_equal(spy.calls[0][0][0], frames[2])
    assert output.stamp_ns == 102 * 10**9 and output.labels["header"]["stamp"]["sec"] == 102
    assert output.dropped == 2 and loop.dropped == 2
    assert published == [output]
    assert loop.step(timeout=0) is None              # nothing queued: nothing processed
    assert len(spy.calls) == 1


def test_labels_equal_segment_and_classes_follow_a_prompt_change(engine):
    published = []
    loop = SegmentationLoop(FrameProcessor(engine, "cat,dog", size=(16, 32)), published.append, overlay=True)
    first, second = _frames(2, seed=3)
    loop.submit(raw_image(first, "bgr8", stamp=(1, 0)))
    loop.step(timeout=0)
    loop.set_prompts("wall|brick wall,floor,person")
    loop.submit(raw_image(second, "bgr8", stamp=(2, 0)))
    loop.step(timeout=0)
    assert [json.loads(o.classes["data"])["classes"] for o in published] == [["cat", "dog"], ["wall", "floor", "person"]]
    expected_first = engine.segment(first, ["cat", "dog"], size=(16, 32)).labels
    expected_second = engine.segment(second, {"wall": ["wall", "brick wall"], "floor": ["floor"],
                                              "person": ["person"]}, size=(16, 32)).labels
    for output, expected in zip(published, (expected_first, expected_second)):
        got = np.frombuffer(output.labels["data"], np.uint8).reshape(24, 40)
        np.testing.assert_array_equal(got, expected.numpy())
        assert output.overlay["encoding"] == "rgb8" and output.overlay["height"] == 24


def test_a_bad_vocabulary_is_refused_and_the_old_one_kept(engine):
    processor = FrameProcessor(engine, "cat,dog")
    with pytest.raises(InputError):
        processor.set_prompts("cat,,dog")
    with pytest.raises(InputError):
        processor.set_prompts("cat,cat")
    assert processor.classes == ("cat", "dog")


def test_a_template_applies_to_string_prompts(engine):
    processor = FrameProcessor(engine, "sky|clouds,cat", template="a photo of {}.")
    assert processor.prompt_set.prompts == ("a photo of sky.", "a photo of clouds.", "a photo of cat.")
    assert processor.classes == ("sky", "cat")


@pytest.mark.parametrize("bad", ["encoding", "tiny", "short"])
def test_a_bad_frame_is_skipped_with_a_log_line_and_the_loop_lives_on(engine, bad):
    lines, published = [], []
    loop = SegmentationLoop(FrameProcessor(engine, "cat,dog"), published.append, log=lines.append)
    if bad == "encoding":
        message = raw_image(_frames(1)[0], "16UC1", stamp=(5, 6))
        message.encoding = "16UC1"
    elif bad == "tiny":
        message = raw_image(_frames(1, shape=(2, 3, 3))[0], "rgb8", stamp=(5, 6))   # smaller than a patch
    else:
        message = raw_image(_frames(1)[0], "rgb8", stamp=(5, 6))
        message.data = message.data[:10]
    loop.submit(message)
    assert loop.step(timeout=0) is None
    assert len(lines) == 1 and lines[0].startswith("skipped frame stamp 5000000006 ns: ")
    assert "\n" not in lines[0] and loop.skipped == 1 and published == []
    loop.submit(raw_image(_frames(1, seed=9)[0], "rgb8", stamp=(7, 0)))
    assert loop.step(timeout=0).stamp_ns == 7 * 10**9
    assert len(published) == 1 and loop.processed == 1


def test_latency_is_measured_on_the_injected_clock(engine):
    published = []
    # submit at 10.0 s; processing starts at 10.5 s, ends at 10.75 s
    loop = SegmentationLoop(FrameProcessor(engine, "cat,dog"), published.append, clock=FakeClock(10.0, 10.5, 10.75))
    loop.submit(raw_image(_frames(1)[0], "rgb8"))
    output = loop.step(timeout=0)
    assert output.latency_ms == pytest.approx(750.0)
    assert output.processing_ms == pytest.approx(250.0)
    values = dict(diagnostics_values(output, loop))
    assert values["latency_ms"] == "750.000" and values["processing_ms"] == "250.000"
    assert values["processed_frames"] == "1" and values["dropped_frames"] == "0"
    assert "stream_ms" in values  # the engine's own timings (the stream path's) are passed on


def test_threaded_loop_never_queues_more_than_one_frame():
    class SlowProcessor:
        classes = ("a",)

        def __init__(self):
            self.seen = []

        def process(self, frames):
            self.seen.append(frames[0][0, 0, 0])
            time.sleep(0.02)
            return [type("S", (), {"labels": torch.zeros(4, 4, dtype=torch.long), "prompts": ("a",),
                                   "timings_ms": {}})()]

    processor = SlowProcessor()
    published = []
    loop = SegmentationLoop(processor, published.append)
    loop.start()
    for index in range(60):
        loop.submit(raw_image(np.full((4, 4, 3), index, np.uint8), "rgb8", stamp=(index, 0)))
        time.sleep(0.002)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and (not published or published[-1].stamp_ns != 59 * 10**9):
        time.sleep(0.01)
    loop.stop()
    assert published[-1].stamp_ns == 59 * 10**9           # the last frame is always served
    assert loop.processed + loop.dropped == 60 and loop.dropped > 0
    assert processor.seen == sorted(processor.seen)        # never an older frame after a newer one


def test_latest_slot_take_times_out_and_close_wakes_it():
    slot = LatestSlot()
    assert slot.take(timeout=0.01) is None
    slot.put("a")
    slot.put("b")
    assert slot.take(timeout=0) == ("b", 1)
    woken = []
    waiter = threading.Thread(target=lambda: woken.append(slot.take(timeout=10)))
    waiter.start()
    slot.close()
    waiter.join(2)
    assert woken == [None]


def test_the_engine_stream_path_is_used_when_the_engine_has_one():
    class Stream:
        def __init__(self, prompts, **options):
            self.prompts, self.options, self.changes = prompts, options, []

        def set_prompts(self, prompts):
            self.changes.append(prompts.classes)

        def __call__(self, frames):
            return [f"result {i}" for i, _ in enumerate(frames)]

    class StreamEngine:
        template = "{}"

        def encode_text(self, prompts):
            return torch.zeros(len(prompts), 4)

        def stream(self, prompts, **options):
            self.opened = Stream(prompts, **options)
            return self.opened

        def segment(self, *args, **kwargs):
            raise AssertionError("segment must not run when the engine has a stream path")

    engine = StreamEngine()
    processor = FrameProcessor(engine, "a,b", size=64, resize="letterbox", batch=4)
    assert engine.opened.options == {"size": 64, "resize": "letterbox", "batch": 4, "bgr": False}
    assert processor.process(_frames(2)) == ["result 0", "result 1"]
    processor.set_prompts("c")
    assert engine.opened.changes == [("c",)]


def test_crop_resize_and_bad_batch_are_refused(engine):
    with pytest.raises(InputError, match="resize"):
        FrameProcessor(engine, "a", resize="crop")
    with pytest.raises(InputError, match="batch"):
        FrameProcessor(engine, "a", batch=0)
