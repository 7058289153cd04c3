"""Random-weight model directories, for tests, demos before a trained model exists, and benchmarks."""

from __future__ import annotations

import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Optional

import torch

from ..config import ClippyConfig, architecture
from ..models import ClippyModel
from .model_dir import save_model_dir

CORPUS = Path(__file__).resolve().parents[1] / "data" / "corpus.txt"
# The built-in corpus is small; a larger SentencePiece vocabulary cannot be learned from it.
MAX_BUILTIN_VOCAB = 2000


def random_init(arch: str, out: Path, *, seed: int = 0, overwrite: bool = False,
                config: Optional[ClippyConfig] = None) -> Path:
    """Write a model directory of architecture ``arch`` with random weights and a
    SentencePiece tokenizer trained on the built-in corpus. Marked random in its config."""
    from ..tokenizer import train_sentencepiece

    cfg = config or architecture(arch)
    cfg = replace(cfg, random_weights=True, source=f"random-init (seed {seed})")
    torch.manual_seed(seed)
    model = ClippyModel(cfg)
    vocab = min(cfg.text.vocab_size, MAX_BUILTIN_VOCAB)
    lines = CORPUS.read_text().splitlines()
    with tempfile.TemporaryDirectory() as tmp:
        spiece = train_sentencepiece(lines, Path(tmp) / "spiece.model", vocab, seed=seed)
        return save_model_dir(out, cfg, model.state_dict(), spiece, overwrite=overwrite)
