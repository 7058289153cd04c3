"""``clippy_rt.load``: one entry point for every backend."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Optional, Union

from .backends.base import BACKENDS
from .engine import Engine
from .errors import BackendUnavailableError, InputError
from .tokenizer import load_tokenizer  # noqa: F401  (importable from here as before)
from .text_cache import DEFAULT_MAX_ENTRIES, TextCache, enable_disk_cache

# backend -> (module, loader function, the pip extra that provides its dependency, default device)
LOADERS = {
    "torch": ("clippy_rt.backends.torch", "load_torch", None, "cpu"),
    "onnxruntime": ("clippy_rt.backends.onnxruntime", "load_onnxruntime", "onnx", "cpu"),
    "tensorrt": ("clippy_rt.backends.tensorrt", "load_tensorrt", None, "cuda"),
}


def load(path: Union[str, Path], backend: str = "torch", device: Optional[str] = None,
         precision: Optional[str] = None, *, text_cache_dir: Optional[Union[str, Path]] = None,
         text_cache_size: int = DEFAULT_MAX_ENTRIES) -> Engine:
    """Load a model directory (torch), an ONNX directory (onnxruntime) or an engine
    directory (tensorrt) and return an ``Engine``.

    ``device`` defaults to "cpu" ("cuda" for tensorrt); ``precision`` to "fp32" (for
    tensorrt, the precision the engine was built with). ``path`` may also be ``"demo"``:
    the small model shipped with the package.

    Text embeddings are cached in memory, at most ``text_cache_size`` prompts (LRU). With
    ``text_cache_dir`` they are also kept on disk there, in one file per model, so a
    restarted process does not re-encode its prompts (``clippy_rt.text_cache``).
    """
    text_cache = TextCache(text_cache_size)  # validates the size before the model loads
    engine = _load(path, backend, device, precision)
    text_cache.device = engine.device
    engine.text_cache = text_cache
    if text_cache_dir is not None:
        enable_disk_cache(engine, text_cache_dir)
    return engine


def _load(path, backend: str, device: Optional[str], precision: Optional[str]) -> Engine:
    if backend not in BACKENDS:
        raise InputError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    path = resolve_model_path(path)
    module_name, function, extra, default_device = LOADERS[backend]
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        if extra is None:
            raise
        raise BackendUnavailableError(
            f"backend {backend!r} needs the {backend} package ({exc}); "
            f"install it with: pip install 'clippy-rt[{extra}]'") from exc
    return getattr(module, function)(path, device=device or default_device, precision=precision)


def resolve_model_path(path: Union[str, Path]) -> Path:
    """``"demo"`` -> the shipped demo model's directory; anything else -> ``Path(path)``."""
    if str(path) == "demo":
        from .formats.model_dir import demo_model_dir
        return demo_model_dir()
    if not isinstance(path, (str, Path)):
        raise InputError(f"path must be a str or Path, got {type(path).__name__}")
    return Path(path)
