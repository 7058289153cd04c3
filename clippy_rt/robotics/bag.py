"""Segment the images of a ROS 2 bag into a new MCAP file.

Reads a ROS 2 MCAP file or a rosbag2 folder (sqlite3 or mcap storage) with ``rosbags``
(what a damaged recording still holds with ``clippy_rt.robotics.recovery``), segments the
frames of one or more ``sensor_msgs/msg/Image`` or ``CompressedImage`` topics through a
``FrameProcessor``, and writes an MCAP file (ROS 2 profile, CDR) with, per input topic
``T`` and with ``out_topic`` (default ``{topic}/clippy_rt``) naming the outputs:

- ``T/clippy_rt/labels``: ``sensor_msgs/msg/Image``, mono8 (mono16 above 256 classes),
  pixel = class index;
- ``T/clippy_rt/overlay`` (optional): ``sensor_msgs/msg/Image``, rgb8;
- ``T/clippy_rt/classes``: ``std_msgs/msg/String``, JSON: the class names and the
  provenance (source topic, model identity, backend, precision, prompts, template, size,
  resize).

One message of each per input frame, with the input's header and its log time; each
channel carries ``offered_qos_profiles``, and a ``clippy_rt`` metadata record holds the
provenance. The file is written to a hidden sibling of the output and renamed into place
at the end, so nothing appears at the output path on failure or interrupt, and an output
that is (or links to, or lies inside) the input is refused.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

from ..errors import BackendUnavailableError, InputError
from ..formats.atomic import atomic_write
from . import messages
from .processor import FrameProcessor, outputs_for

DEFAULT_OUT_TOPIC = "{topic}/clippy_rt"
IMAGE_TYPES = (messages.IMAGE_TYPE, messages.COMPRESSED_TYPE)

# ROS 2's MCAP profile: every channel says which QoS its publisher offered (rosbag2's YAML;
# rmw enums: history 1 keep last, reliability 1 reliable, durability 1 transient local,
# 2 volatile, liveliness 1 automatic; zero durations mean "not set").
_QOS = ("- history: 1\n  depth: {depth}\n  reliability: 1\n  durability: {durability}\n"
        "  deadline:\n    sec: 0\n    nsec: 0\n  lifespan:\n    sec: 0\n    nsec: 0\n  liveliness: 1\n"
        "  liveliness_lease_duration:\n    sec: 0\n    nsec: 0\n  avoid_ros_namespace_conventions: false\n")
STREAM_QOS = _QOS.format(depth=5, durability=2)
LATCHED_QOS = _QOS.format(depth=1, durability=1)
_ROS_NAME = re.compile(r"^(/[A-Za-z_][A-Za-z0-9_]*)+$")


def import_ros_packages():
    """(rosbags.highlevel, rosbags.typesys, mcap.writer), or a clear error naming the extra."""
    try:
        import rosbags.highlevel as highlevel
        import rosbags.typesys as typesys
        from mcap import writer
    except ImportError as exc:
        raise BackendUnavailableError(f"reading and writing bags needs the 'ros' extra ({exc}); install it "
                                      f"with: pip install 'clippy-rt[ros]'") from None
    return highlevel, typesys, writer


@dataclass
class BagReport:
    out: Path
    frames: int
    skipped: int
    classes: Tuple[str, ...]
    skipped_reasons: List[str]
    recovered: Optional[str] = None          # what a damaged input still held, or None
    topics: Dict[str, str] = field(default_factory=dict)   # input topic -> output namespace


def output_namespaces(topics: Sequence[str], out_topic: str = DEFAULT_OUT_TOPIC) -> Dict[str, str]:
    """Input topic -> the namespace of its outputs (``out_topic`` with ``{topic}`` replaced).
    Distinct inputs must get distinct, valid ROS 2 names; else ``InputError``."""
    if not topics:
        raise InputError("give at least one --topic")
    if len(set(topics)) != len(topics):
        raise InputError(f"a topic is given twice: {', '.join(topics)}")
    try:
        names = {topic: out_topic.format(topic=topic.rstrip("/")) for topic in topics}
    except (KeyError, IndexError, ValueError) as exc:
        raise InputError(f"--out-topic {out_topic!r} may use only {{topic}} ({exc})") from None
    for topic, name in names.items():
        if not _ROS_NAME.match(name):
            raise InputError(f"--out-topic {out_topic!r} gives {name!r} for {topic}, not a ROS 2 topic name "
                             f"(/letters, digits and _ per level)")
    if len(set(names.values())) != len(names):
        raise InputError(f"--out-topic {out_topic!r} gives the same outputs for several topics; "
                         f"put {{topic}} in it")
    return names


def check_output(source, out, overwrite: bool) -> None:
    """Refuse an output that is a directory, exists (without ``overwrite``), or would replace
    the input: the same path, a path inside the input folder, a link (symbolic or hard) to an
    input file, or a folder holding the input."""
    source, out = Path(source), Path(out)
    if out.is_dir():
        raise InputError(f"--out {out} is a directory; give a file name such as {out / 'labels.mcap'}")
    if source.exists():
        real_source, real_out = source.resolve(), out.resolve()
        if real_out == real_source or real_source in real_out.parents or real_out in real_source.parents:
            raise InputError(f"--out {out} would overwrite the input {source}; write the labels elsewhere")
        if out.exists():
            inputs = [source] if source.is_file() else [p for p in source.rglob("*") if p.is_file()]
            for path in inputs:
                if os.path.samefile(path, out):
                    raise InputError(f"--out {out} is the same file as the input {path} (a link); "
                                     f"write the labels elsewhere")
    if out.exists() and not overwrite:
        raise InputError(f"{out} exists (pass --overwrite to replace it)")


class UnsupportedTopic(InputError):
    """Every frame of a topic so far is in an encoding clippy-rt does not read."""


class _AnyReaderSource:
    """rosbags' reader behind the interface shared with ``recovery.RecoveredBag``."""

    def __init__(self, reader) -> None:
        self.reader = reader
        self.connections = reader.connections
        self.message_count = reader.message_count

    def messages(self, topics: Sequence[str]) -> Iterator[Tuple[str, str, int, bytes]]:
        wanted = [c for c in self.reader.connections if c.topic in set(topics)]
        for connection, timestamp, raw in self.reader.messages(connections=wanted):
            yield connection.topic, connection.msgtype, timestamp, raw

    def deserialize(self, raw, msgtype):
        return self.reader.deserialize(raw, msgtype)

    def close(self) -> None:
        self.reader.close()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _open_reader(highlevel, typesys, source: Path):
    """A reader of ``source``; a recording cut short is read as far as it is readable
    (the reader's ``recovered`` says how far), anything else unreadable is an ``InputError``."""
    from .recovery import RecoveredBag

    if not source.exists():
        raise InputError(f"bag not found: {source}")
    typestore = typesys.get_typestore(typesys.Stores.ROS2_HUMBLE)
    try:
        reader = highlevel.AnyReader([source], default_typestore=typestore)
        reader.open()
        wrapped = _AnyReaderSource(reader)
        wrapped.recovered = None
        return wrapped
    except Exception as exc:  # rosbags raises its own error types and OSError/ValueError on bad files
        first = _first_line(exc)
    try:
        recovered = RecoveredBag(source, typestore)
    except Exception as exc:  # noqa: BLE001 - nothing recoverable: report rosbags' reason
        raise InputError(f"cannot read {source} as a ROS 2 bag (MCAP file or rosbag2 folder): {first}") from exc
    if recovered.message_count == 0:
        raise InputError(f"cannot read {source} as a ROS 2 bag (MCAP file or rosbag2 folder): {first}; "
                         f"no message could be recovered")
    recovered.recovered = recovered.summary()
    return recovered


def _image_connections(reader, source: Path, topics: Sequence[str]):
    if reader.message_count == 0:
        raise InputError(f"{source} is empty: it holds no messages")
    totals = {}
    for topic in topics:
        connections = [c for c in reader.connections if c.topic == topic]
        if not connections:
            images = sorted({c.topic for c in reader.connections if c.msgtype in IMAGE_TYPES})
            hint = f"; its image topics: {', '.join(images)}" if images else "; it has no image topics"
            raise InputError(f"topic {topic} is not in {source}{hint}")
        types = {c.msgtype for c in connections}
        if not types <= set(IMAGE_TYPES):
            raise InputError(f"topic {topic} carries {', '.join(sorted(types))}, not "
                             f"{' or '.join(IMAGE_TYPES)}")
        totals[topic] = sum(c.msgcount for c in connections)
        if totals[topic] == 0:
            raise InputError(f"topic {topic} in {source} holds no messages")
    return totals


def _topics(topic: Union[str, Sequence[str]]) -> List[str]:
    return [topic] if isinstance(topic, str) else list(topic)


def _check_first_frames(reader, topics: Sequence[str]) -> None:
    """Refuse a topic whose first message has an encoding clippy-rt does not read, before
    any frame is processed."""
    pending = set(topics)
    for topic, msgtype, _, raw in reader.messages(list(pending)):
        if topic not in pending:
            continue
        pending.discard(topic)
        try:
            message = reader.deserialize(raw, msgtype)
        except Exception:  # noqa: BLE001 - a damaged frame is skipped later, with its reason
            message = None
        if message is not None:
            problem = messages.unsupported_reason(message)
            if problem:
                raise UnsupportedTopic(f"topic {topic}: {problem}")
        if not pending:
            return


def inspect_bag(source, topic: Union[str, Sequence[str]]) -> int:
    """Check that ``source`` is a readable bag with image messages in a supported encoding on
    every ``topic``; returns their count. Raises ``InputError`` (one line) otherwise."""
    highlevel, typesys, _ = import_ros_packages()
    source = Path(source)
    topics = _topics(topic)
    reader = _open_reader(highlevel, typesys, source)
    try:
        totals = _image_connections(reader, source, topics)
        _check_first_frames(reader, topics)
        return sum(totals.values())
    finally:
        reader.close()


def _batches(reader, topics, size: int) -> Iterator[list]:
    batch = []
    for topic, msgtype, timestamp, raw in reader.messages(topics):
        batch.append((topic, timestamp, msgtype, raw))
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def process_bag(processor: FrameProcessor, source, topic: Union[str, Sequence[str]], out, *,
                overlay: bool = False, overwrite: bool = False, out_topic: str = DEFAULT_OUT_TOPIC,
                on_progress: Optional[Callable[[int, int], None]] = None,
                log: Optional[Callable[[str], None]] = None) -> BagReport:
    """Segment every frame of ``topic`` (one topic or several) in the bag at ``source`` and
    write ``out`` (MCAP).

    A frame that cannot be decoded is skipped with a ``log`` line (and counted in the
    report); a topic whose frames so far are all in an unsupported encoding stops the run
    at its first frame. A missing topic, an empty bag or a bag that cannot be read is an
    ``InputError`` before anything is written; a damaged recording is read as far as it
    can be (one ``log`` line says how far). ``on_progress(done, total)`` is called after
    each batch.
    """
    highlevel, typesys, writer_module = import_ros_packages()
    source, out = Path(source), Path(out)
    topics = _topics(topic)
    namespaces = output_namespaces(topics, out_topic)
    check_output(source, out, overwrite)
    log = log or (lambda line: None)
    reader = _open_reader(highlevel, typesys, source)
    try:
        totals = _image_connections(reader, source, topics)
        if reader.recovered:
            log(reader.recovered)
        origin = processor.provenance()
        result = []

        def write(handle):
            report = _write(reader, topics, namespaces, sum(totals.values()), processor, handle, writer_module,
                            typesys, overlay, origin, on_progress, log)
            if report.frames == 0:
                raise InputError(f"no frame of {', '.join(topics)} could be decoded ({report.skipped} skipped: "
                                 f"{report.skipped_reasons[0] if report.skipped_reasons else 'unknown'})")
            result.append(report)

        # A temporary beside ``out``, renamed into place once complete; removed on failure or
        # interruption, and by the next write of ``out`` if this process is killed.
        atomic_write(out, write)
        report = result[0]
    finally:
        reader.close()
    report.out = out
    report.recovered = reader.recovered
    report.topics = namespaces
    return report


class _McapOut:
    """ROS 2 messages (field dicts) -> CDR records of an MCAP file, one channel per topic."""

    def __init__(self, handle, writer_module, typesys) -> None:
        from .. import __version__

        self.typestore = typesys.get_typestore(typesys.Stores.ROS2_HUMBLE)
        self.writer = writer_module.Writer(handle)
        self.writer.start(profile="ros2", library=f"clippy-rt {__version__}")
        self.schemas: Dict[str, int] = {}
        self.channels: Dict[str, int] = {}

    def channel(self, topic: str, msgtype: str, qos: str) -> int:
        if msgtype not in self.schemas:
            text = self.typestore.generate_msgdef(msgtype, ros_version=2)[0]
            self.schemas[msgtype] = self.writer.register_schema(name=msgtype, encoding="ros2msg",
                                                                data=text.encode())
        if topic not in self.channels:
            self.channels[topic] = self.writer.register_channel(
                topic=topic, message_encoding="cdr", schema_id=self.schemas[msgtype],
                metadata={"offered_qos_profiles": qos})
        return self.channels[topic]

    def _build(self, msgtype: str, fields: Dict[str, Any]):
        import numpy as np

        types = self.typestore.types
        if msgtype == messages.STRING_TYPE:
            return types[msgtype](data=fields["data"])
        header = fields["header"]
        stamp = types["builtin_interfaces/msg/Time"](sec=header["stamp"]["sec"], nanosec=header["stamp"]["nanosec"])
        return types[msgtype](header=types["std_msgs/msg/Header"](stamp=stamp, frame_id=header["frame_id"]),
                              height=fields["height"], width=fields["width"], encoding=fields["encoding"],
                              is_bigendian=fields["is_bigendian"], step=fields["step"],
                              data=np.frombuffer(fields["data"], dtype=np.uint8))

    def write(self, topic: str, msgtype: str, qos: str, fields: Dict[str, Any], log_time: int, sequence: int):
        channel = self.channel(topic, msgtype, qos)
        data = self.typestore.serialize_cdr(self._build(msgtype, fields), msgtype)
        self.writer.add_message(channel_id=channel, log_time=log_time, data=bytes(data), publish_time=log_time,
                                sequence=sequence)


def _write(reader, topics, namespaces, total, processor, handle, writer_module, typesys, overlay, origin,
           on_progress, log) -> BagReport:
    output = _McapOut(handle, writer_module, typesys)
    output.writer.add_metadata("clippy_rt", {key: value if isinstance(value, str) else json.dumps(value)
                                             for key, value in dict(origin, topics=namespaces).items()})
    done = frames = skipped = 0
    reasons: List[str] = []
    classes: Tuple[str, ...] = processor.classes
    decoded_by_topic = {topic: 0 for topic in topics}
    sequence = {topic: 0 for topic in topics}
    for batch in _batches(reader, topics, processor.batch):
        decoded = []
        for topic, timestamp, msgtype, raw in batch:
            try:
                message = reader.deserialize(raw, msgtype)
                problem = messages.unsupported_reason(message)
                if problem and decoded_by_topic[topic] == 0:
                    # Every frame of the topic so far is in an encoding clippy-rt does not read:
                    # say so now rather than after reading the whole topic.
                    raise UnsupportedTopic(f"topic {topic}: {problem}")
                decoded.append((topic, timestamp, message, messages.message_to_frame(message)))
                decoded_by_topic[topic] += 1
            except UnsupportedTopic:
                raise
            except Exception as exc:  # noqa: BLE001 - a bad frame is skipped, not fatal
                skipped += 1
                reasons.append(_first_line(exc))
                log(f"skipped the frame of {topic} logged at {timestamp} ns: {_first_line(exc)}")
        if decoded:
            results = processor.process([frame for _, _, _, frame in decoded])
            for (topic, timestamp, message, frame), segmentation in zip(decoded, results):
                labels, _, tinted = outputs_for(frame, segmentation, message.header, overlay)
                classes = segmentation.prompts
                names = messages.classes_message(classes, dict(origin, source_topic=topic))
                base, number = namespaces[topic], sequence[topic]
                output.write(f"{base}/labels", messages.IMAGE_TYPE, STREAM_QOS, labels, timestamp, number)
                if tinted is not None:
                    output.write(f"{base}/overlay", messages.IMAGE_TYPE, STREAM_QOS, tinted, timestamp, number)
                output.write(f"{base}/classes", messages.STRING_TYPE, LATCHED_QOS, names, timestamp, number)
                sequence[topic] += 1
                frames += 1
        done += len(batch)
        if on_progress is not None:
            on_progress(done, total)
    output.writer.finish()
    return BagReport(out=Path(), frames=frames, skipped=skipped, classes=tuple(classes), skipped_reasons=reasons)
