"""``clippy_rt.load``: one entry point for every backend (``clippy_rt.backends``)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Union

from .backends import backend_record
from .engine import Engine
from .errors import InputError
from .text_cache import DEFAULT_MAX_ENTRIES, TextCache, enable_disk_cache


def load(path: Union[str, Path], backend: str = "torch", device: Optional[str] = None,
         precision: Optional[str] = None, *, text_cache_dir: Optional[Union[str, Path]] = None,
         text_cache_size: int = DEFAULT_MAX_ENTRIES) -> Engine:
    """Load a model directory (torch), an ONNX directory (onnxruntime) or an engine
    directory (tensorrt) and return an ``Engine``.

    ``device`` defaults to the backend's ("cpu"; "cuda" for tensorrt); ``precision`` to
    "fp32" (for tensorrt, the precision the engine was built with). ``path`` may also be
    ``"demo"``: the small model shipped with the package.

    Text embeddings are cached in memory, at most ``text_cache_size`` prompts (LRU). With
    ``text_cache_dir`` they are also kept on disk there, in one file per model, so a
    restarted process does not re-encode its prompts (``clippy_rt.text_cache``).
    """
    record = backend_record(backend)
    text_cache = TextCache(text_cache_size)  # validates the size before the model loads
    engine = record.load(resolve_model_path(path), device=device, precision=precision, text_cache=text_cache)
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
