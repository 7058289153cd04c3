"""The model directory: ``config.json`` + ``weights.safetensors`` + the tokenizer file.

Directories are written atomically: everything goes into a hidden sibling first,
which is renamed into place only when complete, so a failure leaves nothing behind.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Tuple

import torch

from ..config import ClippyConfig
from ..errors import CheckpointError, ModelDirError
from ..models import ClippyModel
from ..numerics import check_weights
from .atomic import atomic_directory

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "weights.safetensors"
# Optional: the prompts a model is meant to be used with, {class: [prompt, ...]}; export
# and build carry it into ONNX and engine directories.
VOCABULARY_FILE = "vocabulary.json"
TOKENIZER_FILES = ("spiece.model", "tokenizer.json")
# The small model shipped with the package (``clippy_rt.load("demo")``; see clippy_rt.demo).
DEMO_DIR = Path(__file__).resolve().parents[1] / "data" / "demo"


@dataclass(frozen=True)
class ModelDir:
    path: Path
    config: ClippyConfig
    weights: Path
    tokenizer: Path


def find_tokenizer(folder: Path) -> Optional[Path]:
    for name in TOKENIZER_FILES:
        if (folder / name).is_file():
            return folder / name
    return None


def read_model_dir(path: Path) -> ModelDir:
    """Check that ``path`` holds a complete model directory and read its config."""
    path = Path(path)
    if not path.exists():
        raise ModelDirError(f"model directory not found: {path}")
    if not path.is_dir():
        raise ModelDirError(f"{path} is not a directory (expected a model directory with {CONFIG_FILE}, "
                            f"{WEIGHTS_FILE} and a tokenizer file)")
    config_path = path / CONFIG_FILE
    if not config_path.is_file():
        raise ModelDirError(f"{path} has no {CONFIG_FILE}: not a clippy-rt model directory")
    config = ClippyConfig.load(config_path)
    weights = path / WEIGHTS_FILE
    if not weights.is_file():
        raise ModelDirError(f"{path} has no {WEIGHTS_FILE}")
    tokenizer = find_tokenizer(path)
    if tokenizer is None:
        raise ModelDirError(f"{path} has no tokenizer file ({' or '.join(TOKENIZER_FILES)})")
    return ModelDir(path, config, weights, tokenizer)


def check_state_dict(model: torch.nn.Module, state: Mapping[str, torch.Tensor], where: str) -> None:
    """Raise one error listing every missing, unexpected and mis-shaped key."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    misshaped = sorted(f"{key} (expected {tuple(expected[key].shape)}, got {tuple(state[key].shape)})"
                       for key in set(expected) & set(state)
                       if tuple(expected[key].shape) != tuple(state[key].shape))
    if missing or unexpected or misshaped:
        parts = []
        for title, keys in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", misshaped)):
            if keys:
                shown = ", ".join(keys[:12]) + (f", ... ({len(keys) - 12} more)" if len(keys) > 12 else "")
                parts.append(f"{title} keys: {shown}")
        raise CheckpointError(f"{where}: the weights do not match the config; " + "; ".join(parts))


def build_model(config: ClippyConfig, state: Mapping[str, torch.Tensor], where: str) -> ClippyModel:
    """A model of ``config`` holding ``state``, in eval mode; errors list every bad key."""
    check_weights(state, where)
    with torch.device("meta"):
        skeleton = ClippyModel(config)
    check_state_dict(skeleton, state, where)
    model = ClippyModel(config)
    model.load_state_dict(state, strict=True)
    return model.eval()


def load_weights(path: Path) -> Dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{path} is corrupt or not a safetensors file: {exc}") from None


def load_model(path: Path) -> Tuple[ClippyModel, ModelDir]:
    """Read a model directory -> (model in eval mode on CPU, its description)."""
    info = read_model_dir(path)
    model = build_model(info.config, load_weights(info.weights), str(info.weights))
    return model, info


def save_model_dir(out: Path, config: ClippyConfig, state: Mapping[str, torch.Tensor], tokenizer: Path,
                   *, overwrite: bool = False, extra_files: Optional[List[Path]] = None) -> Path:
    """Write ``config.json``, ``weights.safetensors`` and the tokenizer file into ``out`` atomically."""
    from safetensors.torch import save_file

    tokenizer = Path(tokenizer)
    if not tokenizer.is_file():
        raise ModelDirError(f"tokenizer file not found: {tokenizer}")
    if tokenizer.suffix not in (".model", ".json"):
        raise ModelDirError(f"tokenizer must be a SentencePiece .model or a tokenizer .json file, got {tokenizer}")
    # Validate before writing anything.
    build_model(config, state, "converted weights")
    with atomic_directory(out, overwrite=overwrite) as tmp:
        config.save(tmp / CONFIG_FILE)
        tensors = {key: value.detach().contiguous().cpu() for key, value in state.items()}
        save_file(tensors, str(tmp / WEIGHTS_FILE), metadata={"format": "pt", "arch": config.arch})
        name = "spiece.model" if tokenizer.suffix == ".model" else "tokenizer.json"
        shutil.copyfile(tokenizer, tmp / name)
        for extra in extra_files or []:
            shutil.copyfile(extra, tmp / Path(extra).name)
    return Path(out)


def demo_model_dir() -> Path:
    """The shipped model directory (config.json, weights.safetensors, spiece.model).

    Raises:
        ModelDirError: the package was installed without its model files.
    """
    missing = [name for name in (CONFIG_FILE, WEIGHTS_FILE, "spiece.model")
               if not (DEMO_DIR / name).is_file()]
    if missing:
        raise ModelDirError(
            f"the demo model is missing from this installation ({DEMO_DIR} lacks "
            f"{', '.join(missing)}); reinstall clippy-rt with its package data, or train one with "
            "tools/train_clippy.py and pass its directory instead of 'demo'")
    return DEMO_DIR
