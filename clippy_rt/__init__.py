"""clippy-rt: an inference engine for CLIPpy (open-vocabulary segmentation and
classification from a max-pooled ViT and a Sentence-T5 text tower).

``import clippy_rt`` needs only torch, numpy, pillow, safetensors and the tokenizer
libraries: Triton, ONNX Runtime and TensorRT are imported when first used.
"""

from .api import load
from .config import ClippyConfig, ImageTowerConfig, TextTowerConfig, architecture
from .engine import Engine
from .results import ImageFeatures, Segmentation
from .errors import (BackendUnavailableError, CheckpointError, ClippyError, ConfigError, InputError,
                     ModelDirError)

__version__ = "0.1.0"

__all__ = [
    "load", "Engine", "ImageFeatures", "Segmentation", "ClippyConfig", "ImageTowerConfig",
    "TextTowerConfig", "architecture", "ClippyError", "ConfigError", "CheckpointError",
    "ModelDirError", "InputError", "BackendUnavailableError", "__version__",
]
