"""Image tower parity with timm's ViT (an independent implementation) on random weights."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from clippy_rt.config import clippy_b16, tiny
from clippy_rt.convert import convert_timm_vit, infer_image_config
from clippy_rt.models import VisionTower

timm = pytest.importorskip("timm")
from timm.layers import resample_abs_pos_embed  # noqa: E402


def _timm_vit(cfg, img_size):
    return timm.models.vision_transformer.VisionTransformer(
        img_size=img_size, patch_size=cfg.patch_size, embed_dim=cfg.width, depth=cfg.depth,
        num_heads=cfg.heads, mlp_ratio=cfg.mlp_dim / cfg.width, qkv_bias=True, num_classes=0,
    ).eval()


def _reference_outputs(vit, pixels):
    tokens = vit.forward_features(pixels)
    patch = F.normalize(tokens[:, 1:], dim=-1)
    pooled = F.normalize(tokens.max(dim=1).values, dim=-1)
    return tokens, patch, pooled


def _ours_from_timm(vit, cfg):
    state, unexpected = convert_timm_vit(vit.state_dict())
    assert unexpected == []
    tower = VisionTower(infer_image_config(state, cfg, heads=cfg.heads)).eval()
    tower.load_state_dict(state)
    return tower


@pytest.mark.parametrize("make_cfg,size", [(tiny, 32), (clippy_b16, 224)])
def test_matches_timm_at_trained_size(make_cfg, size):
    torch.manual_seed(0)
    cfg = make_cfg().image
    reference = _timm_vit(cfg, size)
    ours = _ours_from_timm(reference, cfg)
    pixels = torch.randn(2, 3, size, size)
    with torch.no_grad():
        tokens, patch, pooled = _reference_outputs(reference, pixels)
        our_tokens = ours.forward_features(pixels)
        our_patch, our_pooled = ours(pixels)
    torch.testing.assert_close(our_tokens, tokens, atol=1e-4, rtol=0)
    torch.testing.assert_close(our_patch, patch, atol=1e-4, rtol=0)
    torch.testing.assert_close(our_pooled, pooled, atol=1e-4, rtol=0)


@pytest.mark.parametrize("make_cfg,size", [(tiny, (24, 56)), (clippy_b16, (160, 272))])
def test_matches_timm_at_non_square_size(make_cfg, size):
    torch.manual_seed(1)
    cfg = make_cfg().image
    trained = _timm_vit(cfg, cfg.pos_grid * cfg.patch_size)
    ours = _ours_from_timm(trained, cfg)
    grid = (size[0] // cfg.patch_size, size[1] // cfg.patch_size)
    state = trained.state_dict()
    state["pos_embed"] = resample_abs_pos_embed(state["pos_embed"], new_size=grid, num_prefix_tokens=1,
                                                interpolation="bicubic", antialias=False)
    reference = _timm_vit(cfg, size)
    reference.load_state_dict(state)
    pixels = torch.randn(1, 3, *size)
    with torch.no_grad():
        tokens, patch, pooled = _reference_outputs(reference, pixels)
        our_patch, our_pooled = ours(pixels)
    assert our_patch.shape == (1, grid[0] * grid[1], cfg.width)
    torch.testing.assert_close(our_patch, patch, atol=1e-4, rtol=0)
    torch.testing.assert_close(our_pooled, pooled, atol=1e-4, rtol=0)


def test_pooling_without_class_token_and_cls_pooling():
    torch.manual_seed(2)
    cfg = tiny().image
    reference = _timm_vit(cfg, 32)
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        tokens = reference.forward_features(pixels)
        for include_cls, pooling, expected in (
                (False, "max", tokens[:, 1:].max(dim=1).values),
                (True, "cls", tokens[:, 0])):
            from dataclasses import replace
            ours = _ours_from_timm(reference, replace(cfg, pool_include_cls=include_cls, pooling=pooling))
            ours.cfg = replace(cfg, pool_include_cls=include_cls, pooling=pooling)
            _, pooled = ours(pixels)
            torch.testing.assert_close(pooled, F.normalize(expected, dim=-1), atol=1e-4, rtol=0)


def test_resized_position_embedding_follows_new_weights():
    # The resize is cached per grid; loading other weights (or editing them in place) must
    # not serve the old one.
    cfg = tiny().image
    size = (24, 56)
    grid = (size[0] // cfg.patch_size, size[1] // cfg.patch_size)
    ours = None
    pixels = torch.randn(1, 3, *size, generator=torch.Generator().manual_seed(3))
    for seed in (4, 5):
        torch.manual_seed(seed)
        trained = _timm_vit(cfg, cfg.pos_grid * cfg.patch_size)
        if ours is None:
            ours = _ours_from_timm(trained, cfg)
        else:
            ours.load_state_dict(convert_timm_vit(trained.state_dict())[0])
        state = trained.state_dict()
        state["pos_embed"] = resample_abs_pos_embed(state["pos_embed"], new_size=grid, num_prefix_tokens=1,
                                                    interpolation="bicubic", antialias=False)
        reference = _timm_vit(cfg, size)
        reference.load_state_dict(state)
        with torch.inference_mode():
            expected = reference.forward_features(pixels)
            torch.testing.assert_close(ours.forward_features(pixels), expected, atol=1e-4, rtol=0)
            torch.testing.assert_close(ours.forward_features(pixels), expected, atol=1e-4, rtol=0)
    with torch.no_grad():
        ours.pos_embed.mul_(2.0)
        state["pos_embed"] = resample_abs_pos_embed(2.0 * trained.state_dict()["pos_embed"], new_size=grid,
                                                    num_prefix_tokens=1, interpolation="bicubic",
                                                    antialias=False)
        reference.load_state_dict(state)
        torch.testing.assert_close(ours.forward_features(pixels), reference.forward_features(pixels),
                                   atol=1e-4, rtol=0)
