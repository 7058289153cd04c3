"""The identity of an artifact on disk: a sha256 naming the model it serves.

Over the weight files of the artifact, its tokenizer file and its ``config.json``:

- model directory: ``weights.safetensors`` (hashed once; with ``memo_dir`` the digest is
  remembered there against the file's size, mtime and inode);
- ONNX directory: the sha256 of every file listed in ``manifest.json`` (the loader checks
  them against the files);
- engine directory: the sha256 of every plan listed in ``engine.json``.

The text-embedding cache keys its on-disk store by it, so embeddings of one model never
serve another.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import List, Optional, Tuple, Union

from ..errors import InputError, ModelDirError
from .engine_dir import SIDECAR_FILE
from .kinds import ENGINE, MODEL, ONNX
from .model_dir import CONFIG_FILE, WEIGHTS_FILE, find_tokenizer
from .onnx_dir import MANIFEST_FILE, sha256_file

# Where a digest memo is kept inside ``memo_dir``.
DIGEST_MEMO = "weight-digests.json"
# The listing of each hashed kind, and its entry holding the files.
_LISTINGS = {ONNX: (MANIFEST_FILE, "files"), ENGINE: (SIDECAR_FILE, "plans")}


def artifact_identity(source: Union[str, os.PathLike], kind: str, memo_dir: Optional[Path] = None) -> str:
    """The sha256 identity (hex) of the ``kind`` directory ``source`` ("model", "onnx",
    "engine"). ``ModelDirError`` when its files or listing cannot be read."""
    source = Path(source)
    parts: List[Tuple[str, str]] = []
    if kind == MODEL:
        parts.append((WEIGHTS_FILE, file_digest(source / WEIGHTS_FILE, memo_dir)))
        tokenizer = find_tokenizer(source)
    elif kind in _LISTINGS:
        listing, entry = _LISTINGS[kind]
        try:
            described = json.loads((source / listing).read_text())
            parts += sorted((str(name), str(item["sha256"])) for name, item in described[entry].items())
            tokenizer = source / str(described["tokenizer"])
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ModelDirError(f"{source / listing}: cannot read the file hashes ({exc})") from None
    else:
        raise InputError(f"no identity for artifact kind {kind!r}")
    if tokenizer is not None and tokenizer.is_file():
        parts.append(("tokenizer", file_digest(tokenizer, None)))
    config = source / CONFIG_FILE
    if config.is_file():
        parts.append(("config", hashlib.sha256(config.read_bytes()).hexdigest()))
    digest = hashlib.sha256()
    for name, value in parts:
        digest.update(f"{name}={value}\n".encode("utf-8"))
    return digest.hexdigest()


def file_digest(path: Path, memo_dir: Optional[Path]) -> str:
    """sha256 of ``path``; with ``memo_dir``, reused while size, mtime and inode are unchanged
    (a B/16 checkpoint takes about a second to hash, longer than encoding a vocabulary)."""
    try:
        stat = path.stat()
    except OSError as exc:
        raise ModelDirError(f"cannot read {path}: {exc}") from None
    if memo_dir is None:
        return sha256_file(path)
    memo_path = Path(memo_dir) / DIGEST_MEMO
    stamp = f"{stat.st_size}:{stat.st_mtime_ns}:{stat.st_ino}"
    name = str(path.resolve())
    try:
        memo = json.loads(memo_path.read_text())
        if not isinstance(memo, dict):
            memo = {}
    except (OSError, ValueError):
        memo = {}
    entry = memo.get(name)
    if isinstance(entry, dict) and entry.get("stamp") == stamp and isinstance(entry.get("sha256"), str):
        return entry["sha256"]
    value = sha256_file(path)
    memo[name] = {"stamp": stamp, "sha256": value}
    try:
        from .atomic import atomic_write
        atomic_write(memo_path, lambda handle: handle.write(json.dumps(memo, indent=1).encode("utf-8")))
    except OSError:
        pass  # the digest is only a shortcut; the next start hashes again
    return value
