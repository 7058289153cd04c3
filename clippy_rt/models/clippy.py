"""The whole CLIPpy model: image tower, text tower and the learned logit scale."""

from __future__ import annotations

from typing import Tuple

import torch
from torch import nn

from ..config import ClippyConfig
from .t5 import TextTower
from .vit import VisionTower


class ClippyModel(nn.Module):
    def __init__(self, cfg: ClippyConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.visual = VisionTower(cfg.image)
        self.text = TextTower(cfg.text)
        self.logit_scale = nn.Parameter(torch.tensor(float(cfg.logit_scale_init)))

    def encode_image(self, pixels: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Normalised pixels [B, 3, H, W] -> (patch features [B, N, D], embedding [B, D]), L2-normalised."""
        return self.visual(pixels)

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Token ids and mask [K, L] -> L2-normalised text embeddings [K, D]."""
        return self.text(input_ids, attention_mask)
