"""The ROS 2 node run end to end through a strict rclpy stand-in (tests/robotics/rclpy_double.py,
written from rclpy's humble and jazzy sources; rclpy itself cannot be installed here)."""

from __future__ import annotations

import io
import json
import threading

import numpy as np
import pytest
from PIL import Image as PILImage

import clippy_rt
from clippy_rt.robotics import node as ros_node
from clippy_rt.robotics.processor import FrameProcessor, SegmentationLoop
import rclpy_double
from rclpy_double import Parameter, wait_for
from fake_messages import raw_image

DISTROS = ["humble", "jazzy"]


@pytest.fixture(scope="module")
def engine(tiny_model_dir):
    return clippy_rt.load(tiny_model_dir)


@pytest.fixture
def loaded(monkeypatch, engine):
    """clippy_rt.load returns the module's engine (loaded once), and records text-encoding threads."""
    threads = []
    original = engine.encode_text

    def encode_text(prompts, *args, **kwargs):
        threads.append(threading.current_thread())
        if any("explode" in p for p in prompts):
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return original(prompts, *args, **kwargs)

    monkeypatch.setattr(engine, "encode_text", encode_text)
    monkeypatch.setattr(clippy_rt, "load", lambda *args, **kwargs: engine)
    return threads


def _args(*extra, prompts="cat,dog"):
    return ["node", "--ros-args", "-p", "model:=tiny", "-p", f"prompts:={prompts}", *extra]


def _image(seed=0, stamp=(3, 4)):
    frame = np.random.default_rng(seed).integers(0, 256, (24, 40, 3), dtype=np.uint8)
    message = rclpy_double.Image()
    fields = raw_image(frame, "rgb8", stamp=stamp)
    message.header.stamp.sec, message.header.stamp.nanosec = stamp
    message.header.frame_id = "cam"
    message.height, message.width, message.encoding, message.step = 24, 40, "rgb8", fields.step
    message.data = bytes(fields.data)
    return frame, message


def _labels(message):
    return np.frombuffer(message.data.tobytes(), np.uint8).reshape(message.height, message.width)


def _classes(world, topic="/clippy_rt/classes"):
    return json.loads(world.published(topic)[-1].data)


# --- 1. the compressed topic follows the image remapping --------------------------------

@pytest.mark.parametrize("distro", DISTROS)
def test_compressed_subscribes_beside_the_remapped_image_topic(monkeypatch, loaded, engine, distro):
    world = rclpy_double.install(monkeypatch, distro)
    frame = np.random.default_rng(1).integers(0, 256, (24, 40, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    PILImage.fromarray(frame).save(buffer, format="PNG")
    message = rclpy_double.CompressedImage(format="png", data=buffer.getvalue())
    message.header.frame_id = "cam"

    def play(world, node):
        assert [s.topic for s in node.subscriptions] == ["/camera/image_raw/compressed"]
        node.deliver("/camera/image_raw/compressed", message)
        wait_for(lambda: world.published("/clippy_rt/labels"))
        world.signal("SIGTERM")

    world.play = play
    assert ros_node.main(_args("-p", "compressed:=true", "-r", "image:=/camera/image_raw")) == 0
    (labels,) = world.published("/clippy_rt/labels")
    np.testing.assert_array_equal(_labels(labels), engine.segment(frame, ["cat", "dog"]).labels.numpy())
    assert labels.header.frame_id == "cam"


# --- 2. SIGTERM and load errors end cleanly ---------------------------------------------------

@pytest.mark.parametrize("distro", DISTROS)
@pytest.mark.parametrize("signal_name", ["SIGTERM", "SIGINT"])
def test_a_signal_ends_the_node_with_status_0(monkeypatch, loaded, distro, signal_name):
    world = rclpy_double.install(monkeypatch, distro)
    world.play = lambda world, node: world.signal(signal_name)
    assert ros_node.main(_args()) == 0
    assert world.nodes[0].destroyed and not world.initialized
    assert not [line for level, line in world.logs if level == "error"]


@pytest.mark.parametrize("distro", DISTROS)
def test_any_load_error_is_one_log_line_and_status_1(monkeypatch, distro):
    world = rclpy_double.install(monkeypatch, distro)

    def fail(*args, **kwargs):
        raise RuntimeError("CUDA driver version is insufficient for CUDA runtime version\nmore detail")

    monkeypatch.setattr(clippy_rt, "load", fail)
    assert ros_node.main(_args()) == 1
    assert world.logs[-1] == ("error", "CUDA driver version is insufficient for CUDA runtime version")
    assert world.nodes[0].destroyed and not world.initialized


# --- 3. typed parameters refused with a reason ------------------------------------------------

@pytest.mark.parametrize("distro", DISTROS)
@pytest.mark.parametrize("override, reason", [
    ("size:=224.0", "'size'.*expecting type 'INTEGER'"),
    ("size:=-8", "'size'.*out of range"),
    ("prompts:=1", "'prompts'.*expecting type 'STRING'"),
    ("device:=0", "'device'.*expecting type 'STRING'"),
    ("overlay:=yes", "'overlay'.*expecting type 'BOOL'"),
])
def test_a_parameter_of_the_wrong_type_or_range_is_refused_with_its_reason(monkeypatch, loaded, distro, override,
                                                                          reason):
    import re

    world = rclpy_double.install(monkeypatch, distro)
    assert ros_node.main(_args("-p", override)) == 1
    errors = [line for level, line in world.logs if level == "error"]
    assert len(errors) == 1 and re.search(reason, errors[0]), errors
    assert world.nodes[0].destroyed and not world.initialized


# --- 4. prompts: checked when set, encoded off the executor, used once accepted ---------------

@pytest.mark.parametrize("distro", DISTROS)
def test_prompt_changes_are_validated_then_applied_after_acceptance(monkeypatch, loaded, engine, distro):
    world = rclpy_double.install(monkeypatch, distro)
    results = {}

    def play(world, node):
        _, message = _image(seed=2)
        node.deliver("/image", message)
        wait_for(lambda: world.published("/clippy_rt/labels"))
        before = len(loaded)
        # an atomic change with a read-only parameter is refused as a whole: the vocabulary stays
        results["atomic"] = node.set_parameters_atomically([Parameter("prompts", value="wall,floor"),
                                                            Parameter("overlay", value=True)])
        # a bad vocabulary is refused with its reason
        (results["bad"],) = node.set_parameters([Parameter("prompts", value="wall,,floor")])
        # a good one is accepted at once; it is encoded on another thread
        (results["good"],) = node.set_parameters([Parameter("prompts", value="sky|blue sky,grass")])
        wait_for(lambda: any("prompts set to 'sky|blue sky,grass'" in line for _, line in world.logs))
        results["threads"] = loaded[before:]
        node.deliver("/image", _image(seed=3, stamp=(9, 0))[1])
        wait_for(lambda: world.published("/clippy_rt/labels")[-1].header.stamp.sec == 9)
        # a failure inside the text tower is logged; the node and the vocabulary carry on
        (results["explode"],) = node.set_parameters([Parameter("prompts", value="explode,x")])
        wait_for(lambda: any("could not be encoded" in line for _, line in world.logs))
        node.deliver("/image", _image(seed=4, stamp=(11, 0))[1])
        wait_for(lambda: world.published("/clippy_rt/labels")[-1].header.stamp.sec == 11)
        results["node"] = node
        world.signal("SIGTERM")

    world.play = play
    assert ros_node.main(_args()) == 0
    assert not results["atomic"].successful and "read-only" in results["atomic"].reason
    assert not results["bad"].successful and "entry 1 is empty" in results["bad"].reason
    assert results["good"].successful
    assert results["threads"] and threading.main_thread() not in results["threads"]
    assert results["node"].get_parameter("prompts").value == "explode,x"
    published = [json.loads(m.data)["classes"] for m in world.published("/clippy_rt/classes")]
    assert published == [["cat", "dog"], ["sky", "grass"]]     # never ["wall", "floor"]
    assert not any("wall" in line for _, line in world.logs if "prompts set" in line)


def test_humble_waits_for_acceptance_before_using_a_vocabulary(engine):
    """Without post-set callbacks, a change refused by a later callback is never used."""
    processor = FrameProcessor(engine, "cat,dog")
    lines = []
    updater = ros_node.VocabularyUpdater(processor, lines.append, lines.append, wait_s=0.2)
    try:
        assert updater.apply("wall,floor", accepted=lambda: False) is False
        assert processor.classes == ("cat", "dog")
        assert updater.apply("wall,floor", accepted=lambda: True) is True
        assert processor.classes == ("wall", "floor")
    finally:
        updater.stop()


# --- 5. diagnostics at 1 Hz under the node's own name, overlay only when asked, clean stop ---

@pytest.mark.parametrize("distro", DISTROS)
def test_diagnostics_come_from_a_timer_under_the_node_name(monkeypatch, loaded, distro):
    world = rclpy_double.install(monkeypatch, distro)
    seen = {}

    def play(world, node):
        for index in range(3):
            node.deliver("/cams/left/image", _image(seed=index, stamp=(index, 0))[1])
            wait_for(lambda: len(world.published("/cams/left/clippy_rt/labels")) == index + 1)
        seen["before_timer"] = len(world.published("/diagnostics"))
        (timer,) = node.timers
        seen["period_ns"] = timer.timer_period_ns
        node.fire_timers()
        seen["topics"] = world.topics()
        world.signal("SIGTERM")

    world.play = play
    assert ros_node.main(_args("-r", "__ns:=/cams/left")) == 0
    assert seen["before_timer"] == 0 and seen["period_ns"] == 1_000_000_000
    (report,) = world.published("/diagnostics")
    (status,) = report.status
    assert status.name == "/cams/left/clippy_rt: segmentation"
    assert dict((kv.key, kv.value) for kv in status.values)["processed_frames"] == "3"
    assert "/cams/left/clippy_rt/overlay" not in seen["topics"]
    origin = _classes(world, "/cams/left/clippy_rt/classes")
    assert origin["source_topic"] == "/cams/left/image" and origin["classes"] == ["cat", "dog"]


def test_overlay_publisher_exists_only_with_overlay(monkeypatch, loaded):
    world = rclpy_double.install(monkeypatch, "jazzy")

    def play(world, node):
        node.deliver("/image", _image()[1])
        wait_for(lambda: world.published("/clippy_rt/overlay"))
        world.signal("SIGTERM")

    world.play = play
    assert ros_node.main(_args("-p", "overlay:=true")) == 0
    assert world.published("/clippy_rt/overlay")[0].encoding == "rgb8"


def test_nothing_is_published_once_stop_returns(engine):
    """A frame still being segmented when the node stops is dropped, not published."""
    release, started = threading.Event(), threading.Event()

    class Slow(FrameProcessor):
        def process(self, frames):
            started.set()
            release.wait(10)
            return super().process(frames)

    published, stopped = [], threading.Event()
    late = []

    def publish(output):
        (late if stopped.is_set() else published).append(output)

    loop = SegmentationLoop(Slow(engine, "cat,dog"), publish)
    loop.start()
    loop.submit(raw_image(np.zeros((24, 40, 3), np.uint8)))
    assert started.wait(10)
    finished = loop.stop(timeout=0.05)
    stopped.set()
    release.set()
    loop._thread.join(10)
    assert finished is False and late == [] and published == []
