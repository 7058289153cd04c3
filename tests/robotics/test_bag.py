"""`clippy-rt bag`: round trips through MCAP files and rosbag2 folders built here."""

from __future__ import annotations

import io
import json
import signal
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import clippy_rt
from clippy_rt.cli.main import main
from clippy_rt.errors import InputError
from clippy_rt.robotics.bag import process_bag
from clippy_rt.robotics.processor import FrameProcessor
from fake_messages import raw_image

mcap_ros2_reader = pytest.importorskip("mcap_ros2.reader")
typesys = pytest.importorskip("rosbags.typesys")
TYPESTORE = typesys.get_typestore(typesys.Stores.ROS2_HUMBLE)
PROMPTS = "wall|brick wall,floor,person"
CLASSES = {"wall": ["wall", "brick wall"], "floor": ["floor"], "person": ["person"]}


@pytest.fixture(scope="module")
def engine(tiny_model_dir):
    return clippy_rt.load(tiny_model_dir)


def _frames(count=3, shape=(24, 40, 3), seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, shape, dtype=np.uint8) for _ in range(count)]


def _msgdef(msgtype):
    return TYPESTORE.generate_msgdef(msgtype, ros_version=2)[0]


def _fields(message):
    """A SimpleNamespace message -> the dict mcap_ros2 writes."""
    out = {key: value for key, value in vars(message).items() if key != "header"}
    out["header"] = {"stamp": {"sec": message.header.stamp.sec, "nanosec": message.header.stamp.nanosec},
                     "frame_id": message.header.frame_id}
    return out


def write_mcap(path, messages, topic="/camera/image_raw", msgtype="sensor_msgs/msg/Image", extra_topic=True):
    """An MCAP file with ``messages`` (log time = 1000 s + index) on ``topic``, and a chatter topic."""
    from mcap_ros2.writer import Writer

    with open(path, "wb") as handle:
        writer = Writer(handle)
        schema = writer.register_msgdef(msgtype, _msgdef(msgtype))
        chatter = writer.register_msgdef("std_msgs/msg/String", _msgdef("std_msgs/msg/String"))
        for index, message in enumerate(messages):
            log_time = (1000 + index) * 10**9 + 17
            writer.write_message(topic, schema, _fields(message), log_time=log_time, publish_time=log_time)
            if extra_topic:
                writer.write_message("/chatter", chatter, {"data": f"hello {index}"}, log_time=log_time)
        writer.finish()
    return path


def read_outputs(path):
    out = {}
    for item in mcap_ros2_reader.read_ros2_messages(str(path)):
        out.setdefault(item.channel.topic, []).append((item.log_time_ns, item.ros_msg))
    return out


def _labels(msg):
    assert msg.encoding == "mono8" and msg.step == msg.width
    return np.frombuffer(bytes(msg.data), np.uint8).reshape(msg.height, msg.width)


@pytest.mark.parametrize("encoding", ["rgb8", "bgr8"])
def test_mcap_round_trip(engine, tmp_path, encoding, capsys):
    frames = _frames()
    inputs = [raw_image(frame, encoding, pad=2 if i == 1 else 0, stamp=(50 + i, 1000 * i), frame_id="cam")
              for i, frame in enumerate(frames)]
    source = write_mcap(tmp_path / "in.mcap", inputs)
    out = tmp_path / "out" / "labels.mcap"
    code = main(["bag", str(engine.source), str(source), "--topic", "/camera/image_raw", "--prompts", PROMPTS,
                 "--out", str(out), "--overlay", "--text-cache-dir", str(tmp_path / "cache")])
    assert code == 0
    assert len(list((tmp_path / "cache").glob("*.sqlite"))) == 1
    assert f"wrote 3 frames (3 classes) to {out}" in capsys.readouterr().out
    written = read_outputs(out)
    assert sorted(written) == [f"/camera/image_raw/clippy_rt/{name}" for name in ("classes", "labels", "overlay")]
    for index, ((log_time, labels), frame) in enumerate(zip(written["/camera/image_raw/clippy_rt/labels"], frames)):
        assert log_time == (1000 + index) * 10**9 + 17
        assert (labels.header.stamp.sec, labels.header.stamp.nanosec) == (50 + index, 1000 * index)
        assert labels.header.frame_id == "cam"
        expected = engine.segment(frame, CLASSES).labels.numpy()
        np.testing.assert_array_equal(_labels(labels), expected)
    for (log_time, classes) in written["/camera/image_raw/clippy_rt/classes"]:
        assert json.loads(classes.data)["classes"] == ["wall", "floor", "person"]
    overlay_time, overlay = written["/camera/image_raw/clippy_rt/overlay"][0]
    assert overlay_time == 1000 * 10**9 + 17
    assert (overlay.encoding, overlay.height, overlay.width, overlay.step) == ("rgb8", 24, 40, 120)
    assert len(written["/camera/image_raw/clippy_rt/overlay"]) == 3


def test_rosbag2_folder_and_batches(engine, tmp_path):
    from rosbags.rosbag2 import Writer

    frames = _frames(5, seed=4)
    folder = tmp_path / "bag"
    types = TYPESTORE.types
    with Writer(folder, version=8) as writer:
        connection = writer.add_connection("/cam", "sensor_msgs/msg/Image", typestore=TYPESTORE)
        for index, frame in enumerate(frames):
            header = types["std_msgs/msg/Header"](stamp=types["builtin_interfaces/msg/Time"](sec=index, nanosec=5),
                                                  frame_id="left")
            message = types["sensor_msgs/msg/Image"](header=header, height=24, width=40, encoding="rgb8",
                                                     is_bigendian=0, step=120, data=frame.reshape(-1))
            writer.write(connection, 2000 + index, TYPESTORE.serialize_cdr(message, "sensor_msgs/msg/Image"))
    processor = FrameProcessor(engine, PROMPTS, batch=2)
    progress = []
    report = process_bag(processor, folder, "/cam", tmp_path / "out.mcap",
                         on_progress=lambda done, total: progress.append((done, total)))
    assert report.frames == 5 and report.skipped == 0
    assert progress == [(2, 5), (4, 5), (5, 5)]
    written = read_outputs(tmp_path / "out.mcap")["/cam/clippy_rt/labels"]
    assert [t for t, _ in written] == [2000 + i for i in range(5)]
    for (_, labels), frame in zip(written, frames):
        np.testing.assert_array_equal(_labels(labels), engine.segment(frame, CLASSES).labels.numpy())


def test_compressed_topic_and_a_bad_frame_skipped(engine, tmp_path):
    from types import SimpleNamespace

    frames = _frames(2, seed=8)
    inputs = []
    for index, frame in enumerate(frames):
        buffer = io.BytesIO()
        Image.fromarray(frame).save(buffer, format="PNG")
        inputs.append(SimpleNamespace(header=raw_image(frame, stamp=(index, 0)).header, format="png",
                                      data=buffer.getvalue()))
    inputs.insert(1, SimpleNamespace(header=inputs[0].header, format="png", data=b"broken"))
    source = write_mcap(tmp_path / "in.mcap", inputs, topic="/cam/compressed",
                        msgtype="sensor_msgs/msg/CompressedImage")
    lines = []
    report = process_bag(FrameProcessor(engine, PROMPTS), source, "/cam/compressed", tmp_path / "o.mcap",
                         log=lines.append)
    assert (report.frames, report.skipped) == (2, 1)
    assert len(lines) == 1 and "cannot decode the compressed image" in lines[0]
    written = read_outputs(tmp_path / "o.mcap")["/cam/compressed/clippy_rt/labels"]
    for (_, labels), frame in zip(written, frames):
        np.testing.assert_array_equal(_labels(labels), engine.segment(frame, CLASSES).labels.numpy())


def _run_cli(engine, source, out, topic, capsys):
    code = main(["bag", str(engine.source), str(source), "--topic", topic, "--prompts", PROMPTS,
                 "--out", str(out), "--no-text-cache", "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    return code, err


def test_missing_topic_is_a_one_line_error(engine, tmp_path, capsys):
    source = write_mcap(tmp_path / "in.mcap", [raw_image(f) for f in _frames(1)])
    code, err = _run_cli(engine, source, tmp_path / "out.mcap", "/nope", capsys)
    assert code == 1 and len(err) == 1
    assert err[0] == (f"clippy-rt bag: error: topic /nope is not in {source}; "
                      f"its image topics: /camera/image_raw")
    assert list(tmp_path.iterdir()) == [source]


def test_empty_bag_and_non_image_topic_are_one_line_errors(engine, tmp_path, capsys):
    empty = write_mcap(tmp_path / "empty.mcap", [], extra_topic=False)
    code, err = _run_cli(engine, empty, tmp_path / "out.mcap", "/camera/image_raw", capsys)
    assert code == 1 and err == [f"clippy-rt bag: error: {empty} is empty: it holds no messages"]
    chatty = write_mcap(tmp_path / "chatty.mcap", [raw_image(f) for f in _frames(1)])
    code, err = _run_cli(engine, chatty, tmp_path / "out.mcap", "/chatter", capsys)
    assert code == 1 and len(err) == 1 and "carries std_msgs/msg/String" in err[0]
    not_a_bag = tmp_path / "notes.mcap"
    not_a_bag.write_text("hello")
    code, err = _run_cli(engine, not_a_bag, tmp_path / "out.mcap", "/camera/image_raw", capsys)
    assert code == 1 and len(err) == 1 and "cannot read" in err[0]
    assert not (tmp_path / "out.mcap").exists()


def test_interrupt_leaves_nothing_at_out(engine, tmp_path):
    class InterruptingProcessor(FrameProcessor):
        def process(self, frames):
            if getattr(self, "calls", 0) == 1:
                raise KeyboardInterrupt
            self.calls = getattr(self, "calls", 0) + 1
            return super().process(frames)

    source = write_mcap(tmp_path / "in.mcap", [raw_image(f) for f in _frames(3)])
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    with pytest.raises(KeyboardInterrupt):
        process_bag(InterruptingProcessor(engine, PROMPTS), source, "/camera/image_raw", out_dir / "x.mcap")
    assert list(out_dir.iterdir()) == []


def test_existing_out_needs_overwrite(engine, tmp_path):
    source = write_mcap(tmp_path / "in.mcap", [raw_image(f) for f in _frames(1)])
    out = tmp_path / "out.mcap"
    out.write_bytes(b"keep me")
    with pytest.raises(InputError, match="--overwrite"):
        process_bag(FrameProcessor(engine, PROMPTS), source, "/camera/image_raw", out)
    assert out.read_bytes() == b"keep me"
    process_bag(FrameProcessor(engine, PROMPTS), source, "/camera/image_raw", out, overwrite=True)
    assert len(read_outputs(out)["/camera/image_raw/clippy_rt/labels"]) == 1


@pytest.mark.parametrize("signum, code, line", [(signal.SIGINT, 130, "clippy-rt: interrupted"),
                                                (signal.SIGTERM, 143, "clippy-rt: terminated")])
def test_signal_mid_run_leaves_nothing_at_out(engine, tmp_path, signum, code, line):
    source = write_mcap(tmp_path / "in.mcap", [raw_image(f) for f in _frames(200)],
                        extra_topic=False)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    process = subprocess.Popen(
        [sys.executable, "-m", "clippy_rt", "bag", str(engine.source), str(source), "--topic", "/camera/image_raw",
         "--prompts", PROMPTS, "--out", str(out_dir / "labels.mcap"), "--no-text-cache", "--overlay"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for progress in process.stderr:           # wait until frames are being written
            if progress.startswith("bag: "):
                break
        assert len(list(out_dir.iterdir())) == 1  # the temporary being written
        process.send_signal(signum)
        _, err = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == code, err
    assert err.strip().splitlines()[-1] == line and "Traceback" not in err, err
    assert list(out_dir.iterdir()) == []


def test_temporary_of_a_killed_run_is_removed_by_the_next(engine, tmp_path):
    source = write_mcap(tmp_path / "in.mcap", [raw_image(f) for f in _frames(2)])
    out = tmp_path / "labels.mcap"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # its process id names no process now, as for a run killed with SIGKILL
    stray = tmp_path / f".labels.mcap.{dead.pid}.0123456789ab.tmp"
    stray.write_bytes(b"half a bag")
    process_bag(FrameProcessor(engine, PROMPTS), source, "/camera/image_raw", out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.mcap", "labels.mcap"]
    assert len(read_outputs(out)["/camera/image_raw/clippy_rt/labels"]) == 2
