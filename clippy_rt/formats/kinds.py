"""What kind of artifact a directory is, decided in one place.

A directory is a model directory if it holds ``weights.safetensors``, else an engine
directory if it holds ``engine.json``, else an ONNX directory if it holds
``manifest.json``. Every caller (loader, CLI, benchmark) asks ``artifact_kind``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Union

from ..errors import ModelDirError
from .engine_dir import SIDECAR_FILE
from .model_dir import CONFIG_FILE, WEIGHTS_FILE
from .onnx_dir import MANIFEST_FILE

MODEL = "model"
ONNX = "onnx"
ENGINE = "engine"
KINDS = (MODEL, ONNX, ENGINE)
# The file that marks each kind, in the order they are tested.
MARKERS = ((MODEL, WEIGHTS_FILE), (ENGINE, SIDECAR_FILE), (ONNX, MANIFEST_FILE))
# Each kind in words, for messages.
KIND_NAMES = {MODEL: "a model directory", ONNX: "an ONNX directory", ENGINE: "a TensorRT engine directory"}


def find_artifact_kind(path: Union[str, Path]) -> Optional[str]:
    """``"model"``, ``"engine"`` or ``"onnx"`` for a directory holding that kind's marker file,
    ``None`` for anything else (including a path that does not exist)."""
    path = Path(path)
    for kind, marker in MARKERS:
        if (path / marker).is_file():
            return kind
    return None


def artifact_kind(path: Union[str, Path]) -> str:
    """Like ``find_artifact_kind``, but ``ModelDirError`` (naming the marker files) when
    ``path`` is not a directory of a known kind."""
    path = Path(path)
    if not path.exists():
        raise ModelDirError(f"no such model, ONNX or engine directory: {path}")
    if not path.is_dir():
        raise ModelDirError(f"{path} is not a directory (expected a model, ONNX or engine directory)")
    kind = find_artifact_kind(path)
    if kind is None:
        raise ModelDirError(f"{path} is not a model, ONNX or engine directory "
                            f"(no {WEIGHTS_FILE}, {MANIFEST_FILE} or {SIDECAR_FILE})")
    return kind


def metadata_file(path: Union[str, Path], kind: str) -> Path:
    """The JSON file describing a directory of ``kind``: config.json, manifest.json or engine.json."""
    names = {MODEL: CONFIG_FILE, ONNX: MANIFEST_FILE, ENGINE: SIDECAR_FILE}
    return Path(path) / names[kind]


def artifact_config(path: Union[str, Path], kind: str):
    """The model config of a directory of ``kind`` (from config.json, else from its manifest
    or sidecar), without loading weights or graphs. ``ModelDirError`` if unreadable."""
    from ..config import ClippyConfig

    path = Path(path)
    if (path / CONFIG_FILE).is_file():
        return ClippyConfig.load(path / CONFIG_FILE)
    sidecar = metadata_file(path, ENGINE if kind == ENGINE else ONNX)
    try:
        data = json.loads(sidecar.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelDirError(f"cannot read {sidecar}: {exc}") from None
    if not isinstance(data, dict) or "config" not in data:
        raise ModelDirError(f"{sidecar} holds no model config")
    return ClippyConfig.from_dict(data["config"])
