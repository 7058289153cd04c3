"""Text tower parity with Hugging Face's T5EncoderModel + masked mean pooling + Dense."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from clippy_rt.config import tiny, clippy_b16
from clippy_rt.convert import convert_hf_t5, infer_text_config
from clippy_rt.models import TextTower

from tolerances import TOLERANCES

transformers = pytest.importorskip("transformers")


def _hf_encoder(cfg, ffn):
    config = transformers.T5Config(
        vocab_size=cfg.vocab_size, d_model=cfg.d_model, d_kv=cfg.d_kv, d_ff=cfg.d_ff,
        num_layers=cfg.depth, num_heads=cfg.heads, relative_attention_num_buckets=cfg.relative_buckets,
        relative_attention_max_distance=cfg.relative_max_distance, feed_forward_proj=ffn,
        dropout_rate=0.0, layer_norm_epsilon=cfg.norm_eps)
    return transformers.T5EncoderModel(config).eval()


def _batch(vocab, lengths, pad=0):
    ids = torch.zeros(len(lengths), max(lengths), dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, length in enumerate(lengths):
        ids[row, :length] = torch.randint(3, vocab, (length,))
        ids[row, length - 1] = 1  # EOS
        mask[row, :length] = 1
    return ids, mask


@pytest.mark.parametrize("make_cfg,ffn", [(tiny, "relu"), (tiny, "gated-gelu"), (clippy_b16, "relu")])
def test_matches_hf_t5_with_mean_pooling_and_dense(make_cfg, ffn):
    torch.manual_seed(0)
    base = replace(make_cfg().text, ffn=ffn)
    reference = _hf_encoder(base, ffn)
    dense = torch.randn(base.projection_dim, base.d_model) * base.d_model ** -0.5
    state, unexpected = convert_hf_t5(reference.state_dict())
    assert unexpected == []
    state["projection.weight"] = dense
    cfg = infer_text_config(state, base)
    assert (cfg.ffn, cfg.heads, cfg.depth, cfg.d_ff) == (ffn, base.heads, base.depth, base.d_ff)
    ours = TextTower(cfg).eval()
    ours.load_state_dict(state)

    ids, mask = _batch(cfg.vocab_size, [7, 3, 12, 1])
    with torch.no_grad():
        hidden = reference(input_ids=ids, attention_mask=mask).last_hidden_state
        pooled = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
        expected = F.normalize(pooled @ dense.T, dim=-1)
        our_hidden = ours.forward_features(ids, mask)
        ours_out = ours(ids, mask)
    real = mask.bool()
    torch.testing.assert_close(our_hidden[real], hidden[real], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(ours_out, expected, atol=1e-4, rtol=0)


def test_padding_does_not_change_embeddings():
    torch.manual_seed(3)
    cfg = tiny().text
    tower = TextTower(cfg).eval()
    ids, mask = _batch(cfg.vocab_size, [5])
    padded_ids = torch.cat([ids, torch.zeros(1, 9, dtype=torch.long)], dim=1)
    padded_mask = torch.cat([mask, torch.zeros(1, 9, dtype=torch.long)], dim=1)
    with torch.no_grad():
        torch.testing.assert_close(tower(padded_ids, padded_mask), tower(ids, mask), atol=1e-5, rtol=0)


def test_float16_error_is_small():
    torch.manual_seed(4)
    cfg = tiny().text
    tower = TextTower(cfg).eval()
    ids, mask = _batch(cfg.vocab_size, [6, 11])
    with torch.no_grad():
        full = tower(ids, mask)
        half = tower.half()(ids, mask).float()
    assert torch.isfinite(half).all()
    torch.testing.assert_close(half, full, **TOLERANCES[torch.float16])
