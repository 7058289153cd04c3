"""``clippy_rt.load``: one entry point for every backend (``clippy_rt.backends``)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Union

from .backends import REFERENCE, backend_for_kind, backend_record
from .engine import Engine
from .errors import InputError
from .formats.kinds import find_artifact_kind
from .text_cache import DEFAULT_MAX_ENTRIES, TextCache, enable_disk_cache
from .validate import check_positive_int


def load(path: Union[str, Path], backend: Optional[str] = None, device: Optional[str] = None,
         precision: Optional[str] = None, *, threads: Optional[int] = None,
         text_cache_dir: Optional[Union[str, Path]] = None,
         text_cache_size: int = DEFAULT_MAX_ENTRIES) -> Engine:
    """Load a model directory (torch), an ONNX directory (onnxruntime) or an engine
    directory (tensorrt) and return an ``Engine``.

    ``backend`` defaults to the one that loads the directory's kind (``clippy_rt.backends``:
    torch for a model directory, onnxruntime for an ONNX directory, tensorrt for an engine
    directory);
    ``device`` to the backend's ("cpu"; "cuda" for tensorrt); ``precision`` to "fp32" (for
    tensorrt, the precision the engine was built with). ``path`` may also be ``"demo"``:
    the small model shipped with the package. ``threads``: CPU threads, for torch (a
    process-wide setting) and for the runtime's own pools (ONNX Runtime's sessions);
    default: each library's own choice.

    Text embeddings are cached in memory, at most ``text_cache_size`` prompts (LRU). With
    ``text_cache_dir`` they are also kept on disk there, in one file per model, so a
    restarted process does not re-encode its prompts (``clippy_rt.text_cache``).
    """
    path = resolve_model_path(path)
    if backend is not None:
        record = backend_record(backend)
    else:
        # Not a directory of a known kind: the reference backend's loader says what is wrong.
        kind = find_artifact_kind(path)
        record = backend_for_kind(kind) if kind is not None else REFERENCE
    text_cache = TextCache(text_cache_size)  # validates the size before the model loads
    options = {"threads": check_positive_int("threads", threads)} if threads is not None else {}
    engine = record.load(path, device=device, precision=precision, text_cache=text_cache, **options)
    if text_cache_dir is not None:
        enable_disk_cache(engine, text_cache_dir)
    return engine


def resolve_model_path(path: Union[str, Path]) -> Path:
    """``"demo"`` -> the shipped demo model's directory; anything else -> ``Path(path)``."""
    if str(path) == "demo":
        from .formats.model_dir import demo_model_dir
        return demo_model_dir()
    if not isinstance(path, (str, Path)):
        raise InputError(f"path must be a str or Path, got {type(path).__name__}")
    return Path(path)
