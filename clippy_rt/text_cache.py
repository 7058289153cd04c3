"""The text-embedding cache: a bounded in-memory LRU, optionally backed by a file on disk.

An engine encodes each prompt once; later calls with the same prompt reuse the stored
embedding. The memory cache holds at most ``max_entries`` embeddings (least recently
used evicted first). Prompts longer than ``HASH_KEY_CHARS`` characters are keyed by
their sha256, so a key never holds more than that many characters.

With a ``directory``, embeddings are also kept on disk, so a restarted process does not
re-encode its vocabulary. One SQLite file per model, named after the model's identity
(``clippy_rt.formats.identity``: the sha256 of the weight files of the loaded artifact, its
tokenizer and its config); rows are keyed by backend, precision and prompt. SQLite's
locking and journal make concurrent writers (threads or processes) and a crash in the
middle of a write safe. The file holds at most ``max_disk_entries`` rows (least recently
used deleted first). A file that cannot be read (truncated, overwritten, not a database)
is deleted and rebuilt with a warning; if even that fails, the cache carries on in
memory only. Every stored embedding carries a CRC32 and is dropped if it does not match.

Thread safety: one ``TextCache`` may be shared by any number of threads; ``clear()`` may
run while other threads look up and insert.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import threading
import time
import warnings
import zlib
from collections import OrderedDict
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Union

import numpy as np
import torch

from .errors import InputError
from .validate import check_positive_int

DEFAULT_MAX_ENTRIES = 4096
DEFAULT_MAX_DISK_ENTRIES = 65536
HASH_KEY_CHARS = 256
SCHEMA_VERSION = 1


def prompt_key(prompt: str) -> str:
    """The cache key of ``prompt``: the text itself, or ``sha256:<hex>`` for long prompts."""
    if len(prompt) <= HASH_KEY_CHARS:
        return prompt
    return "sha256:" + hashlib.sha256(prompt.encode("utf-8")).hexdigest()


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/clippy-rt/text`` (``~/.cache/clippy-rt/text`` when unset)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "clippy-rt" / "text"


class TextCache:
    """Prompt -> embedding (float32 [D] on ``device``), bounded, thread-safe.

    ``attach(directory, identity, backend, precision)`` adds the on-disk store.
    """

    def __init__(self, max_entries: int = DEFAULT_MAX_ENTRIES,
                 device: Union[str, torch.device] = "cpu") -> None:
        check_positive_int("max_entries", max_entries)
        self.max_entries = max_entries
        self.device = torch.device(device)
        self._entries: "OrderedDict[str, torch.Tensor]" = OrderedDict()
        self._lock = threading.Lock()
        self.store: Optional[DiskStore] = None

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def attach(self, directory: Union[str, os.PathLike], identity: str, backend: str, precision: str,
               max_disk_entries: int = DEFAULT_MAX_DISK_ENTRIES) -> "DiskStore":
        """Keep embeddings in ``directory/<identity>.sqlite`` as well; returns the store."""
        self.store = DiskStore(Path(directory).expanduser() / f"{identity[:40]}.sqlite", scope=f"{backend}/{precision}",
                               max_entries=max_disk_entries)
        return self.store

    def get(self, prompts: Sequence[str]) -> Dict[str, torch.Tensor]:
        """The cached embeddings among ``prompts``, as {prompt: tensor}; the others are absent.

        Prompts missing from memory are looked up on disk (when attached) and kept in memory.
        """
        found: Dict[str, torch.Tensor] = {}
        with self._lock:
            for prompt in prompts:
                key = prompt_key(prompt)
                embed = self._entries.get(key)
                if embed is not None:
                    self._entries.move_to_end(key)
                    found[prompt] = embed
        store = self.store
        if store is not None:
            wanted = [p for p in dict.fromkeys(prompts) if p not in found]
            if wanted:
                loaded = store.get([prompt_key(p) for p in wanted])
                fresh = {}
                for prompt in wanted:
                    array = loaded.get(prompt_key(prompt))
                    if array is not None:
                        fresh[prompt] = torch.from_numpy(array).to(self.device)
                self._remember(fresh)
                found.update(fresh)
        return found

    def put(self, prompts: Sequence[str], embeds: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Store one embedding per prompt (``embeds`` [K, D]); returns {prompt: stored tensor}."""
        if embeds.ndim != 2 or embeds.shape[0] != len(prompts):
            raise InputError(f"expected {len(prompts)} embeddings of shape [K, D], got {tuple(embeds.shape)}")
        # Each row is copied: a view would keep the whole batch alive after eviction.
        stored = {prompt: embed.detach().float().clone() for prompt, embed in zip(prompts, embeds)}
        self._remember(stored)
        store = self.store
        if store is not None:
            store.put({prompt_key(p): e.cpu().numpy() for p, e in stored.items()})
        return stored

    def clear(self, disk: bool = False) -> None:
        """Empty the memory cache (and, with ``disk``, the on-disk store)."""
        with self._lock:
            self._entries.clear()
        if disk and self.store is not None:
            self.store.clear()

    def _remember(self, items: Dict[str, torch.Tensor]) -> None:
        with self._lock:
            for prompt, embed in items.items():
                key = prompt_key(prompt)
                self._entries[key] = embed
                self._entries.move_to_end(key)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)


class DiskStore:
    """A bounded LRU of embeddings in one SQLite file; errors never propagate.

    ``scope`` separates rows of different backends and precisions of one model.
    """

    def __init__(self, path: Path, scope: str, max_entries: int = DEFAULT_MAX_DISK_ENTRIES) -> None:
        check_positive_int("max_disk_entries", max_entries)
        self.path = Path(path)
        self.scope = scope
        self.max_entries = max_entries
        self.disabled = False
        self._lock = threading.Lock()
        self._connection: Optional[sqlite3.Connection] = None

    # -- public --------------------------------------------------------------------------
    def get(self, keys: Sequence[str]) -> Dict[str, np.ndarray]:
        """{key: float32 [D]} for the keys stored here; marks them recently used."""
        rows = self._guarded(self._select, keys) or []
        out: Dict[str, np.ndarray] = {}
        bad = []
        for key, dim, crc, blob in rows:
            array = np.frombuffer(blob, dtype="<f4")
            if array.size != dim or zlib.crc32(blob) != crc or not np.isfinite(array).all():
                bad.append(key)
                continue
            out[key] = array.astype(np.float32).copy()
        if bad:
            warnings.warn(f"text cache {self.path}: dropped {len(bad)} damaged embedding(s)", RuntimeWarning)
            self._guarded(self._delete, bad)
        return out

    def put(self, items: Dict[str, np.ndarray]) -> None:
        if items:
            self._guarded(self._insert, items)

    def clear(self) -> None:
        self._guarded(lambda connection: connection.execute("DELETE FROM embeddings"))

    def __len__(self) -> int:
        row = self._guarded(lambda c: c.execute("SELECT COUNT(*) FROM embeddings WHERE scope = ?",
                                                (self.scope,)).fetchone())
        return int(row[0]) if row else 0

    def close(self) -> None:
        with self._lock:
            if self._connection is not None:
                self._connection.close()
                self._connection = None

    # -- SQLite --------------------------------------------------------------------------
    def _open(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        connection = sqlite3.connect(str(self.path), timeout=30.0, check_same_thread=False,
                                     isolation_level=None)
        try:
            connection.execute("PRAGMA journal_mode=DELETE")
            connection.execute("PRAGMA synchronous=FULL")
            with connection:
                connection.execute("CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT)")
                connection.execute(
                    "CREATE TABLE IF NOT EXISTS embeddings (scope TEXT NOT NULL, key TEXT NOT NULL, "
                    "dim INTEGER NOT NULL, crc INTEGER NOT NULL, data BLOB NOT NULL, used INTEGER NOT NULL, "
                    "PRIMARY KEY (scope, key))")
                connection.execute("CREATE INDEX IF NOT EXISTS embeddings_used ON embeddings (used)")
                connection.execute("INSERT OR IGNORE INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
            version = connection.execute("SELECT value FROM meta WHERE name = 'schema'").fetchone()
            if version is None or version[0] != str(SCHEMA_VERSION):
                raise sqlite3.DatabaseError(f"schema version {version[0] if version else None!r}")
            # No full integrity check here (it reads the whole file at every start): a damaged
            # page raises DatabaseError when it is read, and _guarded rebuilds the file then.
        except BaseException:
            connection.close()
            raise
        return connection

    def _guarded(self, action, *args):
        """Run ``action(connection, *args)``; on a damaged file rebuild once, else go memory-only."""
        with self._lock:
            if self.disabled:
                return None
            for attempt in (0, 1):
                try:
                    if self._connection is None:
                        self._connection = self._open()
                    return action(self._connection, *args)
                except sqlite3.OperationalError as exc:
                    if "locked" in str(exc) or "busy" in str(exc):
                        # Another writer held the file past the timeout: skip this update.
                        return None
                    failure = exc
                except (sqlite3.DatabaseError, OSError) as exc:
                    failure = exc
                self._drop_connection()
                # Only a file that exists and is damaged is worth rebuilding; a folder that
                # cannot be created or written (a read-only HOME) is said once, in one line.
                damaged = (isinstance(failure, sqlite3.DatabaseError) and self.path.is_file()
                           and "unable to open" not in str(failure))
                if attempt == 0 and damaged:
                    warnings.warn(f"text cache {self.path} is unreadable ({_reason(failure)}); rebuilding it",
                                  RuntimeWarning)
                    self._remove_file()
                    continue
                warnings.warn(f"text cache {self.path} cannot be used ({_reason(failure)}); "
                              "keeping embeddings in memory only", RuntimeWarning)
                self.disabled = True
                return None
        return None

    def _drop_connection(self) -> None:
        if self._connection is not None:
            try:
                self._connection.close()
            except sqlite3.Error:
                pass
            self._connection = None

    def _remove_file(self) -> None:
        for suffix in ("", "-journal", "-wal", "-shm"):
            try:
                os.unlink(f"{self.path}{suffix}")
            except FileNotFoundError:
                pass
            except OSError:
                pass

    def _select(self, connection: sqlite3.Connection, keys: Sequence[str]) -> List[tuple]:
        rows: List[tuple] = []
        now = time.time_ns()
        with connection:
            for chunk in _chunks(list(keys), 500):
                marks = ",".join("?" * len(chunk))
                rows += connection.execute(
                    f"SELECT key, dim, crc, data FROM embeddings WHERE scope = ? AND key IN ({marks})",
                    (self.scope, *chunk)).fetchall()
                connection.execute(f"UPDATE embeddings SET used = ? WHERE scope = ? AND key IN ({marks})",
                                   (now, self.scope, *chunk))
        return rows

    def _insert(self, connection: sqlite3.Connection, items: Dict[str, np.ndarray]) -> None:
        now = time.time_ns()
        rows = []
        for key, array in items.items():
            blob = np.ascontiguousarray(array, dtype="<f4").tobytes()
            rows.append((self.scope, key, int(array.size), zlib.crc32(blob), blob, now))
        with connection:
            connection.executemany("INSERT OR REPLACE INTO embeddings VALUES (?, ?, ?, ?, ?, ?)", rows)
            count = connection.execute("SELECT COUNT(*) FROM embeddings").fetchone()[0]
            if count > self.max_entries:
                connection.execute("DELETE FROM embeddings WHERE rowid IN (SELECT rowid FROM embeddings "
                                   "ORDER BY used ASC LIMIT ?)", (count - self.max_entries,))

    def _delete(self, connection: sqlite3.Connection, keys: Sequence[str]) -> None:
        with connection:
            for chunk in _chunks(list(keys), 500):
                connection.execute(f"DELETE FROM embeddings WHERE scope = ? AND key IN ({','.join('?' * len(chunk))})",
                                   (self.scope, *chunk))


def _reason(failure: BaseException) -> str:
    """A failure in a few words on one line: an OSError's strerror and file, else its text."""
    if isinstance(failure, OSError) and failure.strerror:
        return f"{failure.strerror}: {failure.filename}" if failure.filename else failure.strerror
    text = str(failure).strip()
    return text.splitlines()[0] if text else type(failure).__name__


def _chunks(items: list, size: int) -> Iterable[list]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def enable_disk_cache(engine, directory: Optional[Union[str, os.PathLike]] = None,
                      max_disk_entries: int = DEFAULT_MAX_DISK_ENTRIES) -> Path:
    """Back ``engine``'s text cache with a file under ``directory`` (default:
    ``default_cache_dir()``); returns the file's path. Used by the bag tool, the ROS 2
    node and servers, where restarting without re-encoding the vocabulary matters."""
    directory = Path(directory).expanduser() if directory is not None else default_cache_dir()
    identity = engine.identity(memo_dir=directory)
    store = engine.text_cache.attach(directory, identity, engine.backend, engine.precision,
                                     max_disk_entries=max_disk_entries)
    return store.path
