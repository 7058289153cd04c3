"""ViT image tower in timm's ``vit_base_patch16_224`` layout (DINO ViT-B/16 for CLIPpy).

Parameter names follow timm's so that converting a timm state dict is a prefix strip.
The forward pass is split: ``forward_features`` returns every token after the final
norm, ``forward`` turns them into L2-normalised patch features and the pooled embedding.
"""

from __future__ import annotations

from typing import Dict, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ImageTowerConfig

# Grids whose resized position embedding is kept (input sizes in use at once).
_POS_CACHE_GRIDS = 8


class Attention(nn.Module):
    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width, bias=True)
        self.proj = nn.Linear(width, width, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, width = x.shape
        qkv = self.qkv(x).reshape(batch, tokens, 3, self.heads, width // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        x = F.scaled_dot_product_attention(q, k, v)
        return self.proj(x.transpose(1, 2).reshape(batch, tokens, width))


class Mlp(nn.Module):
    def __init__(self, width: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(width, hidden)
        self.fc2 = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm1(x)), then x + mlp(norm2(x))."""

    def __init__(self, cfg: ImageTowerConfig) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.width, eps=cfg.norm_eps)
        self.attn = Attention(cfg.width, cfg.heads)
        self.norm2 = nn.LayerNorm(cfg.width, eps=cfg.norm_eps)
        self.mlp = Mlp(cfg.width, cfg.mlp_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class PatchEmbed(nn.Module):
    def __init__(self, cfg: ImageTowerConfig) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, cfg.width, kernel_size=cfg.patch_size, stride=cfg.patch_size)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] -> [B, h*w, width] (row-major patch order)."""
        return self.proj(pixels).flatten(2).transpose(1, 2)


def resize_pos_embed(pos_embed: torch.Tensor, grid: Tuple[int, int], trained_grid: int) -> torch.Tensor:
    """Resize the patch part of a [1, 1 + g*g, C] position embedding to ``grid`` (h, w).

    Bicubic, ``align_corners=False``, given the target *size* (not DINO's
    ``scale_factor`` + 0.1), no antialiasing; the class token's entry is kept.
    Returns [1, 1 + h*w, C]. At the trained grid it is returned unchanged.
    """
    h, w = grid
    if (h, w) == (trained_grid, trained_grid):
        return pos_embed
    cls_pos, patch_pos = pos_embed[:, :1], pos_embed[:, 1:]
    channels = patch_pos.shape[-1]
    patch_pos = patch_pos.reshape(1, trained_grid, trained_grid, channels).permute(0, 3, 1, 2)
    patch_pos = F.interpolate(patch_pos.float(), size=(h, w), mode="bicubic", align_corners=False)
    patch_pos = patch_pos.to(pos_embed.dtype).permute(0, 2, 3, 1).reshape(1, h * w, channels)
    return torch.cat([cls_pos, patch_pos], dim=1)


def pool_tokens(tokens: torch.Tensor, include_cls: bool, pooling: str) -> Tuple[torch.Tensor, torch.Tensor]:
    """Tokens [B, 1+N, D] -> (patch features [B, N, D], pooled [B, D]), both L2-normalised.

    ``pooling="max"`` takes the max over tokens (with the class token when
    ``include_cls``); ``"cls"`` takes the class token (the CLIP-style ablation).
    """
    if pooling == "cls":
        pooled = tokens[:, 0]
        return F.normalize(tokens[:, 1:], dim=-1), F.normalize(pooled, dim=-1)
    # Imported here: clippy_rt.kernels imports this package's errors, not the models.
    from ..kernels.patch_pool import patch_pool

    impl = "torch" if (torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()) else "auto"
    return patch_pool(tokens, include_cls=include_cls, impl=impl)


class VisionTower(nn.Module):
    """CLIPpy's image tower: ViT with a class token, max-pooled embedding, no projection head."""

    def __init__(self, cfg: ImageTowerConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.patch_embed = PatchEmbed(cfg)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.width))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + cfg.pos_grid ** 2, cfg.width))
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(cfg.width, eps=cfg.norm_eps)
        # Resized position embeddings per grid, with the parameter state they came from.
        self._pos_cache: Dict[Tuple[int, int], Tuple[tuple, torch.Tensor]] = {}
        self.init_weights()

    def init_weights(self) -> None:
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)

    def grid_size(self, height: int, width: int) -> Tuple[int, int]:
        return height // self.cfg.patch_size, width // self.cfg.patch_size

    def position_embedding(self, grid: Tuple[int, int]) -> torch.Tensor:
        """``resize_pos_embed`` of the position embedding to ``grid`` (h, w): [1, 1 + h*w, D].

        Cached per grid in inference: the bicubic resize costs as much as a few transformer
        blocks on a GPU (its CUDA kernel walks the channels serially) and its result only
        changes with the parameter. The cache key holds the parameter's storage, version
        counter, dtype and device, so ``load_state_dict``, in-place edits and ``.to()`` all
        invalidate it. While the parameter takes gradients, or under tracing / export /
        compilation, the resize is recomputed so that it stays in the graph.
        """
        pos_embed = self.pos_embed
        if grid == (self.cfg.pos_grid, self.cfg.pos_grid):
            return pos_embed
        if ((torch.is_grad_enabled() and pos_embed.requires_grad) or torch.jit.is_tracing()
                or torch.onnx.is_in_onnx_export() or torch.compiler.is_compiling()):
            return resize_pos_embed(pos_embed, grid, self.cfg.pos_grid)
        key = (pos_embed.data_ptr(), pos_embed._version, pos_embed.dtype, pos_embed.device)
        cached = self._pos_cache.get(grid)
        if cached is not None and cached[0] == key:
            return cached[1]
        # A normal tensor even under inference_mode, so later autograd-free use outside it is allowed.
        with torch.inference_mode(False), torch.no_grad():
            resized = resize_pos_embed(pos_embed.detach(), grid, self.cfg.pos_grid)
        if len(self._pos_cache) >= _POS_CACHE_GRIDS:
            self._pos_cache.pop(next(iter(self._pos_cache)))
        self._pos_cache[grid] = (key, resized)
        return resized

    def forward_features(self, pixels: torch.Tensor) -> torch.Tensor:
        """Normalised pixels [B, 3, H, W] (H, W multiples of the patch) -> tokens [B, 1+N, D]."""
        grid = self.grid_size(pixels.shape[-2], pixels.shape[-1])
        x = self.patch_embed(pixels)
        cls = self.cls_token.expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1) + self.position_embedding(grid)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)

    def forward(self, pixels: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Returns (patch features [B, N, D], image embedding [B, D]), both L2-normalised."""
        tokens = self.forward_features(pixels)
        return pool_tokens(tokens, self.cfg.pool_include_cls, self.cfg.pooling)
