"""T5 encoder text tower (Sentence-T5): mean pooling over real tokens, bias-free Dense, L2 norm.

The T5 details that matter for parity: embeddings are not scaled, attention logits
are not divided by sqrt(d_kv), one relative-position bias table (held by the first
layer in Hugging Face's layout) is shared by every layer, the layer norm is RMS-only
with its variance in float32, and nothing has a bias.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..config import TextTowerConfig


class RMSNorm(nn.Module):
    """T5's layer norm: x / sqrt(mean(x^2) + eps) * weight, no mean subtraction, no bias."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The variance in float32: float16 squares overflow for T5's large activations.
        variance = x.float().pow(2).mean(-1, keepdim=True)
        x = (x.float() * torch.rsqrt(variance + self.eps)).to(self.weight.dtype)
        return self.weight * x


def relative_position_bucket(relative_position: torch.Tensor, num_buckets: int,
                             max_distance: int) -> torch.Tensor:
    """Bidirectional T5 bucketing of (key - query) offsets into ``num_buckets`` ids.

    Half the buckets hold positive offsets; within each half, offsets below a quarter
    of the buckets get their own bucket and larger ones share log-spaced buckets up to
    ``max_distance``.
    """
    half = num_buckets // 2
    bucket = (relative_position > 0).long() * half
    distance = relative_position.abs()
    exact = half // 2
    is_small = distance < exact
    log_ratio = torch.log(distance.float().clamp(min=1) / exact) / math.log(max_distance / exact)
    large = exact + (log_ratio * (half - exact)).long()
    large = large.clamp(max=half - 1)
    return bucket + torch.where(is_small, distance, large)


class SelfAttention(nn.Module):
    def __init__(self, cfg: TextTowerConfig) -> None:
        super().__init__()
        inner = cfg.heads * cfg.d_kv
        self.heads, self.d_kv = cfg.heads, cfg.d_kv
        self.q = nn.Linear(cfg.d_model, inner, bias=False)
        self.k = nn.Linear(cfg.d_model, inner, bias=False)
        self.v = nn.Linear(cfg.d_model, inner, bias=False)
        self.o = nn.Linear(inner, cfg.d_model, bias=False)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        batch, length, _ = x.shape

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.view(batch, length, self.heads, self.d_kv).transpose(1, 2)

        # scale=1: T5 folds 1/sqrt(d_kv) into its weights.
        out = F.scaled_dot_product_attention(heads(self.q(x)), heads(self.k(x)), heads(self.v(x)),
                                             attn_mask=bias.to(x.dtype), scale=1.0)
        return self.o(out.transpose(1, 2).reshape(batch, length, self.heads * self.d_kv))


class FeedForward(nn.Module):
    """``relu``: wo(relu(wi x)); ``gated-gelu``: wo(gelu_tanh(wi_0 x) * wi_1 x)."""

    def __init__(self, cfg: TextTowerConfig) -> None:
        super().__init__()
        self.gated = cfg.ffn == "gated-gelu"
        if self.gated:
            self.wi_0 = nn.Linear(cfg.d_model, cfg.d_ff, bias=False)
            self.wi_1 = nn.Linear(cfg.d_model, cfg.d_ff, bias=False)
        else:
            self.wi = nn.Linear(cfg.d_model, cfg.d_ff, bias=False)
        self.wo = nn.Linear(cfg.d_ff, cfg.d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gated:
            hidden = F.gelu(self.wi_0(x), approximate="tanh") * self.wi_1(x)
        else:
            hidden = F.relu(self.wi(x))
        return self.wo(hidden)


def _clamp_half(x: torch.Tensor) -> torch.Tensor:
    # T5's residual stream can exceed float16's range; clamping keeps it finite.
    if x.dtype == torch.float16:
        limit = torch.finfo(torch.float16).max - 1000
        return x.clamp(-limit, limit)
    return x


class EncoderBlock(nn.Module):
    def __init__(self, cfg: TextTowerConfig) -> None:
        super().__init__()
        self.attn_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.attn = SelfAttention(cfg)
        self.ffn_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.ffn = FeedForward(cfg)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        x = _clamp_half(x + self.attn(self.attn_norm(x), bias))
        return _clamp_half(x + self.ffn(self.ffn_norm(x)))


class TextTower(nn.Module):
    """Sentence-T5: T5 encoder, masked mean pooling, optional Dense (no bias), L2 norm."""

    def __init__(self, cfg: TextTowerConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.relative_attention_bias = nn.Embedding(cfg.relative_buckets, cfg.heads)
        self.blocks = nn.ModuleList(EncoderBlock(cfg) for _ in range(cfg.depth))
        self.final_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.projection = (nn.Linear(cfg.d_model, cfg.projection_dim, bias=False)
                           if cfg.projection else None)
        self.init_weights()

    def init_weights(self) -> None:
        nn.init.normal_(self.embed_tokens.weight, std=1.0)
        nn.init.normal_(self.relative_attention_bias.weight, std=self.cfg.d_model ** -0.5)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, std=module.in_features ** -0.5)

    def position_bias(self, length: int, attention_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """[K, heads, L, L] additive bias: relative positions plus a large negative on padding."""
        positions = torch.arange(length, device=attention_mask.device)
        relative = positions[None, :] - positions[:, None]
        buckets = relative_position_bucket(relative, self.cfg.relative_buckets,
                                           self.cfg.relative_max_distance)
        bias = self.relative_attention_bias(buckets).permute(2, 0, 1).unsqueeze(0).float()
        padding = (1.0 - attention_mask[:, None, None, :].float()) * torch.finfo(dtype).min
        return bias + padding

    def forward_features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Token ids [K, L] and mask [K, L] -> hidden states [K, L, d_model] after the final norm."""
        x = self.embed_tokens(input_ids)
        bias = self.position_bias(input_ids.shape[1], attention_mask, x.dtype)
        for block in self.blocks:
            x = block(x, bias)
        return self.final_norm(x)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Returns L2-normalised text embeddings [K, embed_dim]."""
        hidden = self.forward_features(input_ids, attention_mask)
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        if self.projection is not None:
            pooled = self.projection(pooled)
        return F.normalize(pooled.float(), dim=-1).to(hidden.dtype)
