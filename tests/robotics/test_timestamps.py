"""Stamps as robots send them (current epoch, ~1.7e9 s, with large nanosecond parts: a double
holds them only to ~240 ns) come back exactly through messages, the segmentation loop and
bags; a bag whose frames alternate between sizes (A, B, A) keeps each output with its frame."""

from __future__ import annotations

import numpy as np
import pytest

import clippy_rt
from clippy_rt.robotics import messages
from clippy_rt.robotics.processor import FrameProcessor, SegmentationLoop
from fake_messages import raw_image

# Seconds near 2023-11 and nanoseconds that a float64 of the total cannot hold.
STAMPS = [(1_700_000_000, 999_999_999), (1_700_000_001, 123_456_789), (1_799_999_999, 1),
          (2_147_483_647, 999_999_937), (1_700_000_002, 0)]
PROMPTS = "wall|brick wall,floor,person"


def _ns(sec, nanosec):
    return sec * 1_000_000_000 + nanosec


def test_a_double_loses_these_stamps():
    # What the tests below guard against: the float64 route is not exact for these stamps.
    assert any(int((sec + nanosec * 1e-9) * 1e9) != _ns(sec, nanosec) for sec, nanosec in STAMPS)


@pytest.fixture(scope="module")
def engine(tiny_model_dir):
    return clippy_rt.load(tiny_model_dir)


@pytest.mark.parametrize("sec, nanosec", STAMPS)
def test_messages_copy_stamps_exactly(sec, nanosec):
    message = raw_image(np.zeros((4, 6, 3), np.uint8), stamp=(sec, nanosec), frame_id="left")
    assert messages.stamp_ns(message.header) == _ns(sec, nanosec)
    labels = messages.labels_message(np.zeros((4, 6), np.uint8), message.header, 2)
    rgb = messages.rgb_message(np.zeros((4, 6, 3), np.uint8), message.header)
    for fields in (labels, rgb, {"header": messages.header_fields(message.header)}):
        assert fields["header"] == {"stamp": {"sec": sec, "nanosec": nanosec}, "frame_id": "left"}
        assert type(fields["header"]["stamp"]["sec"]) is int and type(fields["header"]["stamp"]["nanosec"]) is int


def test_the_loop_publishes_stamps_exactly(engine):
    published = []
    loop = SegmentationLoop(FrameProcessor(engine, PROMPTS, size=16), published.append)
    rng = np.random.default_rng(0)
    for sec, nanosec in STAMPS:
        loop.submit(raw_image(rng.integers(0, 256, (16, 24, 3), dtype=np.uint8), stamp=(sec, nanosec)))
        output = loop.step(timeout=5)
        assert output.stamp_ns == _ns(sec, nanosec)
        assert output.labels["header"]["stamp"] == {"sec": sec, "nanosec": nanosec}
    assert len(published) == len(STAMPS)


def test_a_bag_keeps_stamps_log_times_and_order(engine, tmp_path):
    pytest.importorskip("mcap_ros2.reader")
    typesys = pytest.importorskip("rosbags.typesys")
    from mcap_ros2.reader import read_ros2_messages
    from mcap_ros2.writer import Writer

    from clippy_rt.robotics.bag import process_bag

    store = typesys.get_typestore(typesys.Stores.ROS2_HUMBLE)
    rng = np.random.default_rng(1)
    shapes = [(24, 40), (32, 16), (24, 40), (32, 16), (24, 40)]
    frames = [rng.integers(0, 256, shape + (3,), dtype=np.uint8) for shape in shapes]
    stamps = sorted(STAMPS)  # logged in time order, as a recorder writes them
    source = tmp_path / "in.mcap"
    with open(source, "wb") as handle:
        writer = Writer(handle)
        schema = writer.register_msgdef(messages.IMAGE_TYPE, store.generate_msgdef(messages.IMAGE_TYPE,
                                                                                    ros_version=2)[0])
        for frame, (sec, nanosec) in zip(frames, stamps):
            message = raw_image(frame, stamp=(sec, nanosec), frame_id="cam")
            fields = dict(vars(message), header={"stamp": {"sec": sec, "nanosec": nanosec}, "frame_id": "cam"})
            # Logged 3 ns after the stamp: log time and stamp are kept apart.
            writer.write_message("/cam", schema, fields, log_time=_ns(sec, nanosec) + 3,
                                 publish_time=_ns(sec, nanosec) + 3)
        writer.finish()
    out = tmp_path / "out.mcap"
    report = process_bag(FrameProcessor(engine, PROMPTS, batch=3), source, "/cam", out)
    assert report.frames == len(frames)
    written = [(item.log_time_ns, item.ros_msg) for item in read_ros2_messages(str(out))
               if item.channel.topic == "/cam/clippy_rt/labels"]
    assert [log_time for log_time, _ in written] == [_ns(*stamp) + 3 for stamp in stamps]
    for (log_time, labels), frame, (sec, nanosec) in zip(written, frames, stamps):
        assert (labels.header.stamp.sec, labels.header.stamp.nanosec) == (sec, nanosec)
        pixels = np.frombuffer(bytes(labels.data), np.uint8).reshape(labels.height, labels.width)
        np.testing.assert_array_equal(pixels, engine.segment(frame, FrameProcessor(engine, PROMPTS).prompt_set)
                                      .labels.numpy())
