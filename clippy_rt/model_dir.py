"""The model directory: ``config.json`` + ``weights.safetensors`` + the tokenizer file.

Directories are written atomically: everything goes into a hidden sibling first,
which is renamed into place only when complete, so a failure leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, List, Mapping, Optional, Tuple

import torch

from .config import ClippyConfig
from .errors import CheckpointError, ConfigError, ModelDirError
from .fileio import current_umask, directory_mode_from_umask
from .models import ClippyModel
from .numerics import check_weights

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "weights.safetensors"
TOKENIZER_FILES = ("spiece.model", "tokenizer.json")


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


@contextlib.contextmanager
def atomic_directory(out: Path, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling of ``out``; rename it to ``out`` only if the block succeeds."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ModelDirError(f"{out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise ModelDirError(f"{out} exists and is not empty (pass --overwrite to replace it)")
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_abandoned_staging(out)
    # The writer's process id is in the name, so that a later run can tell an abandoned
    # staging directory (its writer was killed) from one still being written.
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.{os.getpid()}.", suffix=".partial", dir=out.parent))
    try:
        directory_mode_from_umask(tmp)
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    try:
        # Some writers (safetensors) create their files 0600; give every file the mode a
        # plain open() would: 0666 less the umask.
        for written in tmp.rglob("*"):
            if written.is_file():
                os.chmod(written, 0o666 & ~current_umask())
        if overwrite and out.is_dir():
            shutil.rmtree(out)
        # rename() replaces an empty directory only: if another process finished writing
        # ``out`` meanwhile, its complete result stays and this one is discarded.
        os.rename(tmp, out)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if exc.errno in (errno.ENOTEMPTY, errno.EEXIST):
            raise ModelDirError(f"{out} was written by another process while this one ran; its result "
                                f"was kept and this one discarded") from None
        raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def remove_abandoned_staging(out: Path) -> List[Path]:
    """Remove staging directories of ``out`` whose writing process no longer exists (it was
    killed with SIGKILL, or the machine went down); returns what was removed."""
    removed = []
    prefix = f".{out.name}."
    for candidate in Path(out).parent.glob(f"{glob.escape(prefix)}*.partial"):
        # Exactly "<pid>.<random>.partial" after the prefix: ".out.v2.<pid>..." belongs to "out.v2".
        parts = candidate.name[len(prefix):].split(".")
        if len(parts) != 3 or not parts[0].isdigit():
            continue
        if candidate.is_dir() and not _process_exists(int(parts[0])):
            shutil.rmtree(candidate, ignore_errors=True)
            removed.append(candidate)
    return removed


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


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

