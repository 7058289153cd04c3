"""clippy-rt: an inference engine for CLIPpy (open-vocabulary segmentation and
classification from a max-pooled ViT and a Sentence-T5 text tower).

``import clippy_rt`` needs only torch, numpy, pillow, safetensors and the tokenizer
libraries: Triton, ONNX Runtime and TensorRT are imported when first used.

The public names below load on first use (PEP 562): ``import clippy_rt`` itself imports no
torch, so the command line can set up its handling of Ctrl-C and broken pipes before the
heavy imports.
"""

import importlib
import importlib.util

from .errors import (BackendUnavailableError, CheckpointError, ClippyError, ConfigError, InputError,
                     ModelDirError)

__version__ = "0.1.0"

# Public name -> the module that defines it.
_LAZY = {
    "load": ".api",
    "ClippyConfig": ".config", "ImageTowerConfig": ".config", "TextTowerConfig": ".config",
    "architecture": ".config",
    "Engine": ".engine",
    "ImageFeatures": ".results", "Segmentation": ".results",
}

__all__ = [
    "load", "Engine", "ImageFeatures", "Segmentation", "ClippyConfig", "ImageTowerConfig",
    "TextTowerConfig", "architecture", "ClippyError", "ConfigError", "CheckpointError",
    "ModelDirError", "InputError", "BackendUnavailableError", "__version__",
]


def __getattr__(name):
    module = _LAZY.get(name)
    if module is not None:
        value = getattr(importlib.import_module(module, __name__), name)
        globals()[name] = value
        return value
    # A submodule (``clippy_rt.images``) as an attribute, as an eager import would have left it.
    if not name.startswith("_") and importlib.util.find_spec(f"{__name__}.{name}") is not None:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'clippy_rt' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
