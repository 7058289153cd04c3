"""`clippy-rt bag` on the recordings robots leave behind: outputs that must never replace
the input, recordings cut short, several cameras, provenance, QoS metadata, checks made
before the model loads, and encodings refused at the first frame. Every input bag here is
written by rosbags or mcap-ros2-support."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

import clippy_rt
from clippy_rt.cli.main import main
from clippy_rt.errors import InputError
from clippy_rt.robotics.bag import process_bag
from clippy_rt.robotics.processor import FrameProcessor
from test_bag import read_outputs

mcap_ros2_reader = pytest.importorskip("mcap_ros2.reader")
typesys = pytest.importorskip("rosbags.typesys")
rosbag2 = pytest.importorskip("rosbags.rosbag2")
from mcap.reader import make_reader  # noqa: E402  (after the importorskip above)

TYPESTORE = typesys.get_typestore(typesys.Stores.ROS2_HUMBLE)
TYPES = TYPESTORE.types
PROMPTS = "wall|brick wall,floor,person"
CLASSES = {"wall": ["wall", "brick wall"], "floor": ["floor"], "person": ["person"]}
SHAPE = (24, 40, 3)


@pytest.fixture(scope="module")
def engine(tiny_model_dir):
    return clippy_rt.load(tiny_model_dir)


def _frames(count, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, SHAPE, dtype=np.uint8) for _ in range(count)]


def _image(frame, index, encoding="rgb8", frame_id="cam"):
    height, width, _ = frame.shape
    header = TYPES["std_msgs/msg/Header"](stamp=TYPES["builtin_interfaces/msg/Time"](sec=index, nanosec=7),
                                          frame_id=frame_id)
    if encoding == "16UC1":
        data = np.zeros(height * width * 2, np.uint8)
        return TYPES["sensor_msgs/msg/Image"](header=header, height=height, width=width, encoding=encoding,
                                              is_bigendian=0, step=width * 2, data=data)
    return TYPES["sensor_msgs/msg/Image"](header=header, height=height, width=width, encoding=encoding,
                                          is_bigendian=0, step=width * 3, data=frame.reshape(-1))


def write_rosbag2(folder, topics, storage="sqlite3", encoding="rgb8"):
    """A rosbag2 folder (rosbags' writer) with {topic: frames}, interleaved, log time 5000 + i."""
    plugin = {"sqlite3": rosbag2.StoragePlugin.SQLITE3, "mcap": rosbag2.StoragePlugin.MCAP}[storage]
    with rosbag2.Writer(folder, version=8, storage_plugin=plugin) as writer:
        connections = {topic: writer.add_connection(topic, "sensor_msgs/msg/Image", typestore=TYPESTORE)
                       for topic in topics}
        imu = writer.add_connection("/imu", "std_msgs/msg/String", typestore=TYPESTORE)
        for index in range(max(len(frames) for frames in topics.values())):
            for topic, frames in topics.items():
                if index < len(frames):
                    message = _image(frames[index], index, encoding)
                    writer.write(connections[topic], 5000 + index,
                                 TYPESTORE.serialize_cdr(message, "sensor_msgs/msg/Image"))
            writer.write(imu, 5000 + index, TYPESTORE.serialize_cdr(TYPES["std_msgs/msg/String"](data="x"),
                                                                     "std_msgs/msg/String"))
    return folder


def write_mcap(path, topics, chunk_size=1024 * 1024):
    """An MCAP file (mcap-ros2-support's writer) with {topic: frames}, log time 7000 + i."""
    from mcap_ros2.writer import Writer

    with open(path, "wb") as handle:
        writer = Writer(handle, chunk_size=chunk_size)
        schema = writer.register_msgdef("sensor_msgs/msg/Image",
                                        TYPESTORE.generate_msgdef("sensor_msgs/msg/Image", ros_version=2)[0])
        for index in range(max(len(frames) for frames in topics.values())):
            for topic, frames in topics.items():
                if index < len(frames):
                    height, width, _ = frames[index].shape
                    writer.write_message(topic, schema, {
                        "header": {"stamp": {"sec": index, "nanosec": 7}, "frame_id": "cam"},
                        "height": height, "width": width, "encoding": "rgb8", "is_bigendian": 0,
                        "step": width * 3, "data": frames[index].tobytes()}, log_time=7000 + index)
        writer.finish()
    return path


def _labels(message):
    return np.frombuffer(bytes(message.data), np.uint8).reshape(message.height, message.width)


def _expected(engine, frames):
    return [engine.segment(frame, CLASSES).labels.numpy() for frame in frames]


def _assert_labels(engine, written, frames):
    assert len(written) == len(frames)
    for (_, message), expected in zip(written, _expected(engine, frames)):
        np.testing.assert_array_equal(_labels(message), expected)


@pytest.fixture
def no_model_load(monkeypatch):
    """Fail the test if the model is loaded: the checks under test must come first."""
    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the arguments were checked")
    monkeypatch.setattr(clippy_rt, "load", refuse)


def _cli(args, capsys):
    code = main(["bag"] + [str(a) for a in args] + ["--no-text-cache", "--quiet"])
    captured = capsys.readouterr()
    return code, captured.err.strip().splitlines()


# --- 1. an output that would replace the input -------------------------------------------

def _same_path(source, tmp_path):
    return source


def _symlink(source, tmp_path):
    link = tmp_path / "link.mcap"
    link.symlink_to(source)
    return link


def _hard_link(source, tmp_path):
    link = tmp_path / "hard.mcap"
    os.link(source, link)
    return link


def _dotted(source, tmp_path):
    (tmp_path / "sub").mkdir()
    return tmp_path / "sub" / ".." / source.name


@pytest.mark.parametrize("make_out", [_same_path, _symlink, _hard_link, _dotted])
def test_an_output_that_is_the_input_file_is_refused(engine, tmp_path, capsys, no_model_load, make_out):
    source = write_mcap(tmp_path / "run.mcap", {"/cam": _frames(2)})
    before = source.read_bytes()
    out = make_out(source, tmp_path)
    code, err = _cli([engine.source, source, "--topic", "/cam", "--prompts", PROMPTS, "--out", out,
                      "--overwrite"], capsys)
    assert code == 1 and len(err) == 1 and "input" in err[0] and "elsewhere" in err[0], err
    assert source.read_bytes() == before


def test_an_output_inside_or_linked_into_a_rosbag2_folder_is_refused(engine, tmp_path):
    folder = write_rosbag2(tmp_path / "bag", {"/cam": _frames(2)})
    database = next(folder.glob("*.db3"))
    before = {path.name: path.read_bytes() for path in folder.iterdir()}
    processor = FrameProcessor(engine, PROMPTS)
    os.link(database, tmp_path / "alias.mcap")
    for out in (database, folder / "labels.mcap", tmp_path / "alias.mcap"):
        with pytest.raises(InputError, match="input"):
            process_bag(processor, folder, "/cam", out, overwrite=True)
    assert {path.name: path.read_bytes() for path in folder.iterdir()} == before


def test_a_directory_as_out_is_named_as_such_without_overwrite(engine, tmp_path, capsys, no_model_load):
    source = write_mcap(tmp_path / "run.mcap", {"/cam": _frames(1)})
    (tmp_path / "outdir").mkdir()
    code, err = _cli([engine.source, source, "--topic", "/cam", "--prompts", PROMPTS, "--out",
                      tmp_path / "outdir"], capsys)
    assert code == 1 and len(err) == 1 and "is a directory" in err[0], err


# --- 2. recordings cut short -----------------------------------------------------------------

def test_an_mcap_cut_in_half_gives_the_frames_before_the_cut(engine, tmp_path):
    frames = _frames(12, seed=1)
    whole = write_mcap(tmp_path / "whole.mcap", {"/cam": frames}, chunk_size=512)  # one chunk per frame
    with open(whole, "rb") as handle:
        summary = make_reader(handle).get_summary()
    cut = whole.stat().st_size // 2
    # The frames whose chunk lies entirely before the cut, from the intact file's chunk index.
    readable = sum(index.message_index_offsets != {} and
                   index.chunk_start_offset + index.chunk_length <= cut for index in summary.chunk_indexes)
    assert 0 < readable < len(frames)
    cut_file = tmp_path / "cut.mcap"
    cut_file.write_bytes(whole.read_bytes()[:cut])
    lines = []
    report = process_bag(FrameProcessor(engine, PROMPTS), cut_file, "/cam", tmp_path / "out.mcap",
                         log=lines.append)
    assert report.frames == readable and report.recovered
    assert len(lines) == 1 and f"read {readable} messages" in lines[0] and "stops at byte" in lines[0]
    _assert_labels(engine, read_outputs(tmp_path / "out.mcap")["/cam/clippy_rt/labels"], frames[:readable])


def test_the_cli_says_what_a_cut_mcap_still_held(engine, tmp_path, capsys):
    frames = _frames(6, seed=2)
    whole = write_mcap(tmp_path / "whole.mcap", {"/cam": frames}, chunk_size=512)
    cut_file = tmp_path / "cut.mcap"
    cut_file.write_bytes(whole.read_bytes()[: whole.stat().st_size * 2 // 3])
    code = main(["bag", str(engine.source), str(cut_file), "--topic", "/cam", "--prompts", PROMPTS,
                 "--out", str(tmp_path / "o.mcap"), "--no-text-cache", "--quiet"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "is incomplete" in captured.err and "read " in captured.err
    assert "wrote " in captured.out


@pytest.mark.parametrize("storage", ["sqlite3", "mcap"])
def test_a_rosbag2_folder_without_metadata_is_reindexed(engine, tmp_path, storage):
    frames = {"/left": _frames(3, seed=3), "/right": _frames(2, seed=4)}
    folder = write_rosbag2(tmp_path / "bag", frames, storage=storage)
    (folder / "metadata.yaml").unlink()
    lines = []
    report = process_bag(FrameProcessor(engine, PROMPTS), folder, ["/left", "/right"], tmp_path / "o.mcap",
                         log=lines.append)
    assert report.frames == 5 and "metadata.yaml is missing" in lines[0]
    written = read_outputs(tmp_path / "o.mcap")
    _assert_labels(engine, written["/left/clippy_rt/labels"], frames["/left"])
    _assert_labels(engine, written["/right/clippy_rt/labels"], frames["/right"])


def test_a_truncated_db3_gives_its_readable_frames(engine, tmp_path):
    frames = _frames(16, seed=5)
    folder = write_rosbag2(tmp_path / "bag", {"/cam": frames})
    database = next(folder.glob("*.db3"))
    import sqlite3
    with sqlite3.connect(database) as whole:      # the intact file, for the frame count to expect
        assert whole.execute("SELECT count(*) FROM messages").fetchone()[0] == 32
    database.write_bytes(database.read_bytes()[: database.stat().st_size // 2])
    lines = []
    report = process_bag(FrameProcessor(engine, PROMPTS), folder, "/cam", tmp_path / "o.mcap", log=lines.append)
    assert 0 < report.frames < len(frames) and "incomplete" in lines[0]
    # The readable frames are a prefix of the recording, in order, each labelled as the engine does.
    written = read_outputs(tmp_path / "o.mcap")["/cam/clippy_rt/labels"]
    assert [t for t, _ in written] == [5000 + i for i in range(report.frames)]
    _assert_labels(engine, written, frames[: report.frames])


def test_a_file_that_is_no_bag_at_all_is_still_refused(engine, tmp_path):
    not_a_bag = tmp_path / "notes.mcap"
    not_a_bag.write_bytes(b"\x89MCAP0\r\n" + b"\x00" * 3)
    with pytest.raises(InputError, match="cannot read"):
        process_bag(FrameProcessor(engine, PROMPTS), not_a_bag, "/cam", tmp_path / "o.mcap")
    assert not (tmp_path / "o.mcap").exists()


# --- 3. several topics, naming, provenance, QoS ---------------------------------------------

def test_two_cameras_get_their_own_outputs_with_provenance_and_qos(engine, tmp_path, capsys):
    yaml = pytest.importorskip("yaml")
    frames = {"/left/image_raw": _frames(3, seed=6), "/right/image_raw": _frames(2, seed=7)}
    source = write_mcap(tmp_path / "two.mcap", frames)
    out = tmp_path / "labels.mcap"
    code = main(["bag", str(engine.source), str(source), "--topic", "/left/image_raw", "--topic", "/right/image_raw",
                 "--prompts", PROMPTS, "--template", "a photo of {}", "--size", "32", "--resize", "letterbox",
                 "--out", str(out), "--no-text-cache", "--quiet"])
    assert code == 0, capsys.readouterr().err
    written = read_outputs(out)
    assert sorted(written) == sorted(f"{topic}/clippy_rt/{name}" for topic in frames for name in ("labels", "classes"))
    templated = {name: [f"a photo of {p}" for p in prompts] for name, prompts in CLASSES.items()}
    for topic, topic_frames in frames.items():
        labels = written[f"{topic}/clippy_rt/labels"]
        assert len(labels) == len(topic_frames)
        for (_, message), frame in zip(labels, topic_frames):
            expected = engine.segment(frame, templated, size=32, resize="letterbox",
                                      template="{}").labels.numpy()
            np.testing.assert_array_equal(_labels(message), expected)
        origin = json.loads(written[f"{topic}/clippy_rt/classes"][0][1].data)
        assert origin["classes"] == ["wall", "floor", "person"] and origin["source_topic"] == topic
        assert origin["model"] == engine.identity() and len(origin["model"]) == 64
        assert origin["prompts"] == templated and origin["template"] == "a photo of {}"
        assert (origin["size"], origin["resize"]) == (32, "letterbox")
    with open(out, "rb") as handle:
        reader = make_reader(handle)
        records = {record.name: record.metadata for record in reader.iter_metadata()}
        channels = reader.get_summary().channels.values()
    assert json.loads(records["clippy_rt"]["prompts"]) == templated
    assert records["clippy_rt"]["model"] == engine.identity()
    for channel in channels:
        (profile,) = yaml.safe_load(channel.metadata["offered_qos_profiles"])
        assert profile["reliability"] == 1 and profile["history"] == 1
        assert profile["durability"] == (1 if channel.topic.endswith("/classes") else 2)


def test_the_output_reads_back_with_rosbags(engine, tmp_path):
    from rosbags.highlevel import AnyReader

    frames = _frames(2, seed=8)
    source = write_rosbag2(tmp_path / "bag", {"/cam": frames}, storage="mcap")
    process_bag(FrameProcessor(engine, PROMPTS), source, "/cam", tmp_path / "o.mcap", out_topic="/robot{topic}/seg")
    with AnyReader([tmp_path / "o.mcap"], default_typestore=TYPESTORE) as reader:
        topics = {c.topic: c for c in reader.connections}
        assert sorted(topics) == ["/robot/cam/seg/classes", "/robot/cam/seg/labels"]
        decoded = [reader.deserialize(raw, c.msgtype) for c, _, raw in
                   reader.messages(connections=[topics["/robot/cam/seg/labels"]])]
    for message, expected in zip(decoded, _expected(engine, frames)):
        np.testing.assert_array_equal(message.data.reshape(message.height, message.width), expected)


@pytest.mark.parametrize("out_topic, match", [("/same/clippy_rt", "put {topic} in it"),
                                              ("{topic}/bad name", "not a ROS 2 topic name")])
def test_output_names_that_collide_or_are_invalid_are_refused(engine, tmp_path, capsys, no_model_load,
                                                              out_topic, match):
    source = write_mcap(tmp_path / "two.mcap", {"/a": _frames(1), "/b": _frames(1)})
    code, err = _cli([engine.source, source, "--topic", "/a", "--topic", "/b", "--prompts", PROMPTS,
                      "--out", tmp_path / "o.mcap", "--out-topic", out_topic], capsys)
    assert code == 1 and len(err) == 1 and match in err[0], err


# --- 4. arguments checked before the model loads -------------------------------------------

@pytest.mark.parametrize("extra, code, match", [
    (["--batch", "0"], 2, "expected a positive integer"),
    (["--size", "63"], 1, "multiples of the patch size 8"),
    (["--prompts", "floor,,person"], 1, "entry 1 is empty"),
])
def test_bad_arguments_are_refused_before_the_model_loads(engine, tmp_path, capsys, no_model_load, extra, code,
                                                          match):
    source = write_mcap(tmp_path / "run.mcap", {"/cam": _frames(1)})
    args = ["bag", str(engine.source), str(source), "--topic", "/cam", "--out", str(tmp_path / "o.mcap")]
    if "--prompts" not in extra:
        args += ["--prompts", PROMPTS]
    try:
        result = main(args + extra)
    except SystemExit as exit_:       # argparse refuses with exit status 2
        result = exit_.code
    assert result == code
    assert match in capsys.readouterr().err


# --- 5. unsupported encodings at the first frame ---------------------------------------------

def test_an_unsupported_encoding_is_refused_before_the_model_loads(engine, tmp_path, capsys, no_model_load):
    folder = write_rosbag2(tmp_path / "depth", {"/depth": _frames(3)}, encoding="16UC1")
    code, err = _cli([engine.source, folder, "--topic", "/depth", "--prompts", PROMPTS, "--out",
                      tmp_path / "o.mcap"], capsys)
    assert code == 1 and len(err) == 1, err
    assert "/depth" in err[0] and "'16UC1' is not supported" in err[0] and "rgb8" in err[0] and "yuv422" in err[0]


def test_an_unsupported_topic_stops_at_its_first_frame(engine, tmp_path):
    class Counting(FrameProcessor):
        calls = 0

        def process(self, frames):
            Counting.calls += 1
            return super().process(frames)

    folder = write_rosbag2(tmp_path / "depth", {"/depth": _frames(40)}, encoding="16UC1")
    lines = []
    with pytest.raises(InputError, match="'16UC1' is not supported"):
        process_bag(Counting(engine, PROMPTS), folder, "/depth", tmp_path / "o.mcap", log=lines.append)
    assert Counting.calls == 0 and lines == []    # not one line per frame of the topic
    assert not (tmp_path / "o.mcap").exists()
