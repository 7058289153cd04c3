"""``clippy_rt.load``: one entry point for every backend."""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Union

from .engine import Engine, TorchEngine, resolve_device, resolve_precision
from .errors import BackendUnavailableError, InputError, ModelDirError
from .text_cache import DEFAULT_MAX_ENTRIES, TextCache, enable_disk_cache

BACKENDS = ("torch", "onnxruntime", "tensorrt")


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
    if backend == "torch":
        return _load_torch(path, device or "cpu", precision or "fp32")
    if backend == "onnxruntime":
        try:
            from .backends.onnxruntime import load_onnxruntime
        except ImportError as exc:
            raise BackendUnavailableError(
                f"backend 'onnxruntime' needs the onnxruntime package ({exc}); "
                "install it with: pip install 'clippy-rt[onnx]'") from exc
        return load_onnxruntime(path, device=device or "cpu", precision=precision or "fp32")
    from .backends.tensorrt import load_tensorrt
    return load_tensorrt(path, device=device or "cuda", precision=precision)


def resolve_model_path(path: Union[str, Path]) -> Path:
    """``"demo"`` -> the shipped demo model's directory; anything else -> ``Path(path)``."""
    if str(path) == "demo":
        from .demo import demo_model_dir
        return demo_model_dir()
    if not isinstance(path, (str, Path)):
        raise InputError(f"path must be a str or Path, got {type(path).__name__}")
    return Path(path)


def _load_torch(path: Path, device: str, precision: str) -> TorchEngine:
    from .model_dir import load_model
    from .tokenizer import Tokenizer

    if (path / "manifest.json").is_file() and not (path / "weights.safetensors").is_file():
        raise ModelDirError(f"{path} is an ONNX directory; load it with backend='onnxruntime'")
    if (path / "engine.json").is_file() and not (path / "weights.safetensors").is_file():
        raise ModelDirError(f"{path} is a TensorRT engine directory; load it with backend='tensorrt'")
    resolved_device = resolve_device(device)
    resolve_precision(precision)
    model, info = load_model(path)
    tokenizer = load_tokenizer(info.tokenizer, info.config)
    return TorchEngine(model, info.config, tokenizer, resolved_device, precision, path)


def load_tokenizer(tokenizer_path: Path, config):
    """The tokenizer for ``config``'s text tower, checked against its vocabulary."""
    from .errors import ConfigError
    from .tokenizer import Tokenizer

    text = config.text
    tokenizer = Tokenizer.from_file(tokenizer_path, max_length=text.max_length, pad_id=text.pad_id,
                                    eos_id=text.eos_id, unk_id=text.unk_id)
    if tokenizer.vocab_size > text.vocab_size:
        raise ConfigError(f"tokenizer {tokenizer_path} has {tokenizer.vocab_size} pieces but the text "
                          f"tower's embedding holds {text.vocab_size}")
    return tokenizer
