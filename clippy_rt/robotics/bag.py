"""Segment the images of a ROS 2 bag into a new MCAP file.

Reads a ROS 2 MCAP file or a rosbag2 folder (sqlite3 or mcap storage) with ``rosbags``,
segments the frames of one ``sensor_msgs/msg/Image`` or ``CompressedImage`` topic through
a ``FrameProcessor``, and writes with ``mcap-ros2-support``:

- ``/clippy_rt/labels``: ``sensor_msgs/msg/Image``, mono8 (mono16 above 256 classes),
  pixel = class index;
- ``/clippy_rt/overlay`` (optional): ``sensor_msgs/msg/Image``, rgb8;
- ``/clippy_rt/classes``: ``std_msgs/msg/String``, the class names as a JSON list.

One message of each per input frame, with the input's header and its log time. The file
is written to a hidden sibling of the output and renamed into place at the end, so
nothing appears at the output path on failure or interrupt.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, List, Optional, Tuple

from ..errors import BackendUnavailableError, InputError
from ..formats.atomic import atomic_write
from . import messages
from .processor import FrameProcessor, outputs_for

LABELS_TOPIC = "/clippy_rt/labels"
OVERLAY_TOPIC = "/clippy_rt/overlay"
CLASSES_TOPIC = "/clippy_rt/classes"
IMAGE_TYPES = (messages.IMAGE_TYPE, messages.COMPRESSED_TYPE)


def import_ros_packages():
    """(rosbags.highlevel, rosbags.typesys, mcap_ros2.writer), or a clear error naming the extra."""
    try:
        import rosbags.highlevel as highlevel
        import rosbags.typesys as typesys
        from mcap_ros2 import writer
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


def _open_reader(highlevel, typesys, source: Path):
    if not source.exists():
        raise InputError(f"bag not found: {source}")
    typestore = typesys.get_typestore(typesys.Stores.ROS2_HUMBLE)
    try:
        reader = highlevel.AnyReader([source], default_typestore=typestore)
        reader.open()
    except Exception as exc:  # rosbags raises its own error types and OSError/ValueError on bad files
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"cannot read {source} as a ROS 2 bag (MCAP file or rosbag2 folder): {first}") from None
    return reader


def _image_connections(reader, source: Path, topic: str):
    if reader.message_count == 0:
        raise InputError(f"{source} is empty: it holds no messages")
    connections = [c for c in reader.connections if c.topic == topic]
    if not connections:
        images = sorted({c.topic for c in reader.connections if c.msgtype in IMAGE_TYPES})
        hint = f"; its image topics: {', '.join(images)}" if images else "; it has no image topics"
        raise InputError(f"topic {topic} is not in {source}{hint}")
    types = {c.msgtype for c in connections}
    if not types <= set(IMAGE_TYPES):
        raise InputError(f"topic {topic} carries {', '.join(sorted(types))}, not "
                         f"{' or '.join(IMAGE_TYPES)}")
    total = sum(c.msgcount for c in connections)
    if total == 0:
        raise InputError(f"topic {topic} in {source} holds no messages")
    return connections, total


def inspect_bag(source, topic: str) -> int:
    """Check that ``source`` is a readable bag with image messages on ``topic``; returns
    their count. Raises ``InputError`` (one line) otherwise."""
    highlevel, typesys, _ = import_ros_packages()
    source = Path(source)
    reader = _open_reader(highlevel, typesys, source)
    try:
        return _image_connections(reader, source, topic)[1]
    finally:
        reader.close()


def _batches(reader, connections, size: int) -> Iterator[list]:
    batch = []
    for connection, timestamp, raw in reader.messages(connections=connections):
        batch.append((timestamp, connection.msgtype, raw))
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def process_bag(processor: FrameProcessor, source, topic: str, out, *, overlay: bool = False,
                overwrite: bool = False, on_progress: Optional[Callable[[int, int], None]] = None,
                log: Optional[Callable[[str], None]] = None) -> BagReport:
    """Segment every frame of ``topic`` in the bag at ``source`` and write ``out`` (MCAP).

    A frame that cannot be decoded is skipped with a ``log`` line (and counted in the
    report); a missing topic, an empty bag or a bag that cannot be read is an
    ``InputError`` before anything is written. ``on_progress(done, total)`` is called
    after each batch.
    """
    highlevel, typesys, writer_module = import_ros_packages()
    source, out = Path(source), Path(out)
    if out.is_dir():
        raise InputError(f"--out {out} is a directory; give a file name such as {out / 'labels.mcap'}")
    if out.exists() and not overwrite:
        raise InputError(f"{out} exists (pass --overwrite to replace it)")
    log = log or (lambda line: None)
    reader = _open_reader(highlevel, typesys, source)
    try:
        connections, total = _image_connections(reader, source, topic)
        result = []

        def write(handle):
            report = _write(reader, connections, total, processor, handle, writer_module, typesys, overlay,
                            on_progress, log)
            if report.frames == 0:
                raise InputError(f"no frame of {topic} could be decoded ({report.skipped} skipped: "
                                 f"{report.skipped_reasons[0] if report.skipped_reasons else 'unknown'})")
            result.append(report)

        # A temporary beside ``out``, renamed into place once complete; removed on failure or
        # interruption, and by the next write of ``out`` if this process is killed.
        atomic_write(out, write)
        report = result[0]
    finally:
        reader.close()
    report.out = out
    return report


def _write(reader, connections, total, processor, handle, writer_module, typesys, overlay, on_progress,
           log) -> BagReport:
    typestore = typesys.get_typestore(typesys.Stores.ROS2_HUMBLE)
    writer = writer_module.Writer(handle)
    image_schema = writer.register_msgdef(messages.IMAGE_TYPE,
                                          typestore.generate_msgdef(messages.IMAGE_TYPE, ros_version=2)[0])
    string_schema = writer.register_msgdef(messages.STRING_TYPE,
                                           typestore.generate_msgdef(messages.STRING_TYPE, ros_version=2)[0])
    done = frames = skipped = 0
    reasons: List[str] = []
    classes: Tuple[str, ...] = processor.classes
    sequence = 0
    for batch in _batches(reader, connections, processor.batch):
        decoded = []
        for timestamp, msgtype, raw in batch:
            try:
                message = reader.deserialize(raw, msgtype)
                decoded.append((timestamp, message, messages.message_to_frame(message)))
            except Exception as exc:  # noqa: BLE001 - a bad frame is skipped, not fatal
                skipped += 1
                reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                reasons.append(reason)
                log(f"skipped the frame logged at {timestamp} ns: {reason}")
        if decoded:
            results = processor.process([frame for _, _, frame in decoded])
            for (timestamp, message, frame), segmentation in zip(decoded, results):
                labels, names, tinted = outputs_for(frame, segmentation, message.header, overlay)
                classes = segmentation.prompts
                writer.write_message(LABELS_TOPIC, image_schema, labels, log_time=timestamp,
                                     publish_time=timestamp, sequence=sequence)
                if tinted is not None:
                    writer.write_message(OVERLAY_TOPIC, image_schema, tinted, log_time=timestamp,
                                         publish_time=timestamp, sequence=sequence)
                writer.write_message(CLASSES_TOPIC, string_schema, names, log_time=timestamp,
                                     publish_time=timestamp, sequence=sequence)
                sequence += 1
                frames += 1
        done += len(batch)
        if on_progress is not None:
            on_progress(done, total)
    writer.finish()
    return BagReport(out=Path(), frames=frames, skipped=skipped, classes=tuple(classes), skipped_reasons=reasons)
