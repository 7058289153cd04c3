"""Read what is recoverable from a ROS 2 recording that was cut short.

A recorder killed mid-write leaves an MCAP file without its summary and end magic, a
rosbag2 folder without ``metadata.yaml``, or an SQLite file whose last pages are missing.
``rosbags`` refuses all three. ``RecoveredBag`` reads them record by record (MCAP with the
``mcap`` library's stream reader; SQLite directly, as ``ros2 bag reindex`` does) up to the
first damaged record, and says how many messages it read and where each file stopped.

Messages are yielded in file order; CDR payloads are decoded with a ``rosbags`` typestore.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import struct
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

from ..errors import InputError

MCAP_MAGIC = b"\x89MCAP0\r\n"
SQLITE_MAGIC = b"SQLite format 3\x00"


@dataclass
class Connection:
    """A topic of a recovered bag: its name, message type and readable message count."""

    topic: str
    msgtype: str
    msgcount: int = 0


@dataclass
class FileStop:
    """Where reading one storage file ended."""

    path: Path
    messages: int
    complete: bool
    reason: str = ""
    offset: Optional[int] = None      # byte offset of the first unreadable record (MCAP)
    last_time: Optional[int] = None   # log time of the last message read, ns


@dataclass
class _Scan:
    connections: Dict[Tuple[str, str], Connection] = field(default_factory=dict)
    stops: List[FileStop] = field(default_factory=list)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def storage_files(source: Path) -> List[Path]:
    """The MCAP and SQLite files of a recording: the file itself, or those in a folder."""
    if source.is_file():
        return [source]
    files = []
    for path in sorted(source.iterdir()):
        if path.is_file():
            with open(path, "rb") as handle:
                head = handle.read(16)
            if head.startswith(MCAP_MAGIC) or head == SQLITE_MAGIC:
                files.append(path)
    return files


def _mcap_records(path: Path, stop: FileStop) -> Iterator[Tuple[str, str, int, bytes]]:
    """(topic, message type, log time, CDR bytes) of an MCAP file, up to its first bad record."""
    from mcap.records import Channel, DataEnd, Footer, Message, Schema
    from mcap.stream_reader import StreamReader

    schemas: Dict[int, str] = {}
    channels: Dict[int, Tuple[str, str]] = {}
    with open(path, "rb") as handle:
        reader = StreamReader(handle, skip_magic=False)
        records = iter(reader.records)
        while True:
            position = handle.tell()
            try:
                record = next(records)
            except StopIteration:
                stop.complete = True
                return
            except Exception as exc:  # noqa: BLE001 - any damage ends the readable part
                stop.reason, stop.offset = _first_line(exc) or "the file ends mid-record", position
                return
            if isinstance(record, Schema):
                schemas[record.id] = record.name
            elif isinstance(record, Channel):
                if record.message_encoding == "cdr" and record.schema_id in schemas:
                    channels[record.id] = (record.topic, schemas[record.schema_id])
            elif isinstance(record, Message):
                if record.channel_id in channels:
                    topic, msgtype = channels[record.channel_id]
                    stop.messages += 1
                    stop.last_time = record.log_time
                    yield topic, msgtype, record.log_time, record.data
            elif isinstance(record, (DataEnd, Footer)):
                stop.complete = True
                return


def _readable_sqlite_copy(path: Path, directory: Path) -> Path:
    """A copy of ``path`` that SQLite opens although its tail is missing: whole pages only,
    and a header whose page count SQLite ignores (it then counts the pages of the file)."""
    with open(path, "rb") as handle:
        header = bytearray(handle.read(100))
    if len(header) < 100 or not header.startswith(SQLITE_MAGIC):
        raise InputError(f"{path} is not an SQLite database")
    page = struct.unpack(">H", bytes(header[16:18]))[0]
    page = 65536 if page == 1 else page
    copy = directory / path.name
    shutil.copyfile(path, copy)
    with open(copy, "r+b") as handle:
        size = os.fstat(handle.fileno()).st_size
        handle.truncate(size // page * page)
        counter = struct.unpack(">I", bytes(header[24:28]))[0]
        handle.seek(92)  # "version-valid-for": a mismatch with the change counter voids the page count
        handle.write(struct.pack(">I", (counter + 1) & 0xFFFFFFFF))
    return copy


def _sqlite_records(path: Path, stop: FileStop) -> Iterator[Tuple[str, str, int, bytes]]:
    """(topic, message type, log time, CDR bytes) of a rosbag2 SQLite file, in insertion
    order, up to its first damaged page."""
    with tempfile.TemporaryDirectory(prefix="clippy-rt-recover-") as directory:
        try:
            database = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
            database.execute("SELECT count(*) FROM sqlite_master").fetchone()
        except sqlite3.DatabaseError:
            database.close()
            database = sqlite3.connect(f"file:{_readable_sqlite_copy(path, Path(directory))}?mode=ro", uri=True)
        try:
            try:
                topics = {row[0]: (row[1], row[2]) for row in database.execute(
                    "SELECT id, name, type FROM topics WHERE serialization_format = 'cdr'")}
            except sqlite3.DatabaseError as exc:
                stop.reason = f"its topic table cannot be read: {_first_line(exc)}"
                return
            try:
                for topic_id, timestamp, data in database.execute(
                        "SELECT topic_id, timestamp, data FROM messages ORDER BY id"):
                    if topic_id in topics:
                        topic, msgtype = topics[topic_id]
                        stop.messages += 1
                        stop.last_time = timestamp
                        yield topic, msgtype, int(timestamp), bytes(data)
            except sqlite3.DatabaseError as exc:
                stop.reason = _first_line(exc)
                return
            stop.complete = True
        finally:
            database.close()


def _records(path: Path, stop: FileStop):
    with open(path, "rb") as handle:
        head = handle.read(16)
    if head.startswith(MCAP_MAGIC):
        return _mcap_records(path, stop)
    if head == SQLITE_MAGIC:
        return _sqlite_records(path, stop)
    raise InputError(f"{path} is neither an MCAP file nor a rosbag2 SQLite file")


class RecoveredBag:
    """The readable part of a damaged recording (an MCAP file, or a rosbag2 folder of MCAP
    or SQLite files), with the reader interface ``clippy_rt.robotics.bag`` uses:
    ``connections``, ``message_count``, ``messages(topics)``, ``deserialize`` and ``close``."""

    def __init__(self, source: Path, typestore) -> None:
        self.source = Path(source)
        self.typestore = typestore
        self.files = storage_files(self.source)
        if not self.files:
            raise InputError(f"{source} holds no MCAP or SQLite file to recover messages from")
        scan = _Scan()
        for path in self.files:
            stop = FileStop(path=path, messages=0, complete=False)
            for topic, msgtype, _, _ in _records(path, stop):
                key = (topic, msgtype)
                scan.connections.setdefault(key, Connection(topic, msgtype)).msgcount += 1
            scan.stops.append(stop)
        self.connections: List[Connection] = list(scan.connections.values())
        self.stops = scan.stops
        self.message_count = sum(c.msgcount for c in self.connections)

    def summary(self) -> str:
        """One line: how many messages were read and where each damaged file stopped."""
        parts = []
        for stop in self.stops:
            if stop.complete:
                continue
            where = f" at byte {stop.offset}" if stop.offset is not None else ""
            last = f", after the message logged at {stop.last_time} ns" if stop.last_time is not None else ""
            parts.append(f"{stop.path.name} stops{where}{last} ({stop.reason or 'damaged'})")
        missing = "" if self.source.is_file() or (self.source / "metadata.yaml").exists() else \
            "metadata.yaml is missing (reindexed from the storage files); "
        return (f"{self.source} is incomplete: {missing}{'; '.join(parts) + '; ' if parts else ''}"
                f"read {self.message_count} messages")

    def messages(self, topics: Sequence[str]) -> Iterator[Tuple[str, str, int, bytes]]:
        wanted = set(topics)
        for path in self.files:
            stop = FileStop(path=path, messages=0, complete=False)
            for topic, msgtype, timestamp, data in _records(path, stop):
                if topic in wanted:
                    yield topic, msgtype, timestamp, data

    def deserialize(self, raw: bytes, msgtype: str):
        return self.typestore.deserialize_cdr(raw, msgtype)

    def close(self) -> None:
        pass
