"""Converters from the checkpoint layouts people have to this engine's state dict.

Each converter is a pure ``dict -> dict`` function driven by a swap table; the
architecture is inferred from tensor shapes where shapes determine it, and the caller
may override anything shapes cannot tell (ViT heads, T5's relative max distance).

Layouts (docs/MODEL.md):
1. the reference training checkpoint: ``{"state_dict": {...}}`` with ``visual.trunk.*``
   (timm ViT), ``text.0.auto_model.*`` (Hugging Face ``T5EncoderModel``),
   ``text.2.linear.weight`` (the Dense layer) and ``logit_scale``; keys may carry
   DDP's ``module.`` prefix;
2. a timm DINO ViT state dict plus a sentence-transformers directory.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import replace
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Tuple

import torch

from .config import ClippyConfig, ImageTowerConfig, TextTowerConfig
from .errors import CheckpointError
from .numerics import check_weights
from .validate import check_positive_int

StateDict = Dict[str, torch.Tensor]

# Hugging Face T5EncoderModel key (after "encoder.") -> this engine's text tower key.
_T5_BLOCK_SWAPS = (
    (r"block\.(\d+)\.layer\.0\.SelfAttention\.([qkvo])\.weight", r"blocks.\1.attn.\2.weight"),
    (r"block\.(\d+)\.layer\.0\.layer_norm\.weight", r"blocks.\1.attn_norm.weight"),
    (r"block\.(\d+)\.layer\.1\.DenseReluDense\.(wi|wi_0|wi_1|wo)\.weight", r"blocks.\1.ffn.\2.weight"),
    (r"block\.(\d+)\.layer\.1\.layer_norm\.weight", r"blocks.\1.ffn_norm.weight"),
    (r"block\.0\.layer\.0\.SelfAttention\.relative_attention_bias\.weight", r"relative_attention_bias.weight"),
    (r"final_layer_norm\.weight", r"final_norm.weight"),
    (r"embed_tokens\.weight", r"embed_tokens.weight"),
)

# timm ViT keys kept as they are (this engine uses timm's names); everything else in a
# timm state dict (a classifier head, fc_norm) is not part of CLIPpy's image tower.
_VIT_KEY = re.compile(
    r"^(cls_token|pos_embed|patch_embed\.proj\.(weight|bias)|norm\.(weight|bias)|"
    r"blocks\.\d+\.(norm1|norm2|attn\.qkv|attn\.proj|mlp\.fc1|mlp\.fc2)\.(weight|bias))$")
_VIT_IGNORED = re.compile(r"^(head|fc_norm|head_drop)\.")


def strip_prefix(state: Mapping[str, Any], prefix: str) -> Dict[str, Any]:
    """Keys that start with ``prefix``, with the prefix removed."""
    return {key[len(prefix):]: value for key, value in state.items() if key.startswith(prefix)}


def strip_ddp(state: Mapping[str, Any]) -> Dict[str, Any]:
    """Remove DDP's ``module.`` prefix where every key has it."""
    if state and all(key.startswith("module.") for key in state):
        return strip_prefix(state, "module.")
    return dict(state)


def convert_timm_vit(state: Mapping[str, torch.Tensor]) -> Tuple[StateDict, list]:
    """timm ViT state dict -> (image tower state dict, unexpected keys)."""
    out: StateDict = {}
    unexpected = []
    for key, value in state.items():
        if _VIT_KEY.match(key):
            out[key] = value
        elif not _VIT_IGNORED.match(key):
            unexpected.append(key)
    return out, unexpected


def unwrap_vit_state(data: Mapping[str, Any]) -> Tuple[Dict[str, Any], str]:
    """The ViT weights inside what a ViT file holds -> (state dict, how they were found).

    Takes a timm state dict as it is (DDP's ``module.`` removed), and unwraps the layouts
    training scripts save: a ``model`` / ``state_dict`` entry, and a DINO training
    checkpoint (``teacher`` and ``student`` entries or key prefixes, the ViT under
    ``backbone.`` beside DINO's projection ``head.``), taking the teacher as DINO's
    released backbones do. The description is "" for a plain state dict.
    """
    state, found = strip_ddp(data), []
    for wrapper in ("model", "state_dict", "teacher", "student"):
        if isinstance(state.get(wrapper), dict):
            state = strip_ddp(state[wrapper])
            found.append(f"the {wrapper!r} entry")
            break
    for role in ("teacher.", "student."):
        if any(key.startswith(role) for key in state):
            state = strip_ddp(strip_prefix(state, role))
            found.append(f"the keys under {role!r}")
            break
    if any(key.startswith("backbone.") for key in state) and not any(_VIT_KEY.match(key) for key in state):
        head = sum(1 for key in state if key.startswith("head."))
        state = strip_prefix(state, "backbone.")
        found.append("its 'backbone.'" + (f" (DINO's projection head, {head} tensors, left out)" if head else ""))
    return state, ", ".join(found)


def describe_keys(keys, limit: int = 4) -> str:
    """Keys summarised by their first two name parts: "'head.mlp.' (6 keys), 'x' (1 key)"."""
    groups: Dict[str, int] = {}
    for key in sorted(keys):
        parts = key.split(".")
        group = ".".join(parts[:2]) + "." if len(parts) > 2 else key
        groups[group] = groups.get(group, 0) + 1
    shown = [f"{group!r} ({count} key{'s' if count > 1 else ''})" for group, count in list(groups.items())[:limit]]
    more = len(groups) - limit
    return ", ".join(shown) + (f" and {more} more group{'s' if more > 1 else ''}" if more > 0 else "")


_TRAINING_HINT = ("a DINO training checkpoint keeps the ViT under 'teacher' or 'student' and 'backbone.'; "
                  "give that file as it is, or the timm state dict of its backbone")


def convert_hf_t5(state: Mapping[str, torch.Tensor]) -> Tuple[StateDict, list]:
    """Hugging Face ``T5EncoderModel`` state dict -> (text tower state dict, unexpected keys).

    ``shared.weight`` and ``encoder.embed_tokens.weight`` are the same tensor in Hugging
    Face checkpoints (tied); either one is taken.
    """
    out: StateDict = {}
    unexpected = []
    for key, value in state.items():
        if key == "shared.weight":
            out.setdefault("embed_tokens.weight", value)
            continue
        if not key.startswith("encoder."):
            unexpected.append(key)
            continue
        inner = key[len("encoder."):]
        for pattern, target in _T5_BLOCK_SWAPS:
            if re.fullmatch(pattern, inner):
                out[re.sub(pattern, target, inner)] = value
                break
        else:
            unexpected.append(key)
    return out, unexpected


def _count_blocks(state: Mapping[str, torch.Tensor], pattern: str) -> int:
    ids = {int(m.group(1)) for key in state if (m := re.match(pattern, key))}
    return max(ids) + 1 if ids else 0


def infer_image_config(vit: Mapping[str, torch.Tensor], base: ImageTowerConfig,
                       heads: Optional[int] = None) -> ImageTowerConfig:
    """Image tower config from converted ViT weights; heads default to width / 64."""
    try:
        width = vit["cls_token"].shape[-1]
        patch = vit["patch_embed.proj.weight"].shape[-1]
        positions = vit["pos_embed"].shape[1] - 1
        mlp = vit["blocks.0.mlp.fc1.weight"].shape[0]
    except KeyError as exc:
        raise CheckpointError(f"image tower weights lack {exc.args[0]!r}: not a timm ViT state dict") from None
    if heads is not None:
        check_positive_int("ViT heads", heads, error=CheckpointError)
    grid = math.isqrt(positions)
    if grid * grid != positions:
        raise CheckpointError(f"pos_embed has {positions} patch positions, not a square grid")
    return replace(base, patch_size=patch, width=width, depth=_count_blocks(vit, r"blocks\.(\d+)\."),
                   heads=max(1, width // 64) if heads is None else heads, mlp_dim=mlp, pos_grid=grid)


def infer_text_config(text: Mapping[str, torch.Tensor], base: TextTowerConfig) -> TextTowerConfig:
    """Text tower config from converted T5 weights (heads from the relative-bias table)."""
    try:
        vocab, d_model = text["embed_tokens.weight"].shape
        buckets, heads = text["relative_attention_bias.weight"].shape
        inner = text["blocks.0.attn.q.weight"].shape[0]
    except KeyError as exc:
        raise CheckpointError(f"text tower weights lack {exc.args[0]!r}: not a T5 encoder state dict") from None
    gated = "blocks.0.ffn.wi_0.weight" in text
    d_ff = text["blocks.0.ffn.wi_0.weight" if gated else "blocks.0.ffn.wi.weight"].shape[0] \
        if ("blocks.0.ffn.wi_0.weight" in text or "blocks.0.ffn.wi.weight" in text) else base.d_ff
    projection = "projection.weight" in text
    projection_dim = text["projection.weight"].shape[0] if projection else base.projection_dim
    return replace(base, vocab_size=vocab, d_model=d_model, d_kv=inner // heads, d_ff=d_ff,
                   heads=heads, depth=_count_blocks(text, r"blocks\.(\d+)\."),
                   ffn="gated-gelu" if gated else "relu", relative_buckets=buckets,
                   projection=projection, projection_dim=projection_dim if projection else d_model)


def assemble(vit: StateDict, text: StateDict, logit_scale: Optional[torch.Tensor]) -> StateDict:
    """Prefix the tower dicts into the whole model's state dict."""
    state = {f"visual.{k}": v for k, v in vit.items()}
    state.update({f"text.{k}": v for k, v in text.items()})
    state["logit_scale"] = (logit_scale.detach().reshape(()).float() if logit_scale is not None
                            else torch.tensor(ClippyConfig().logit_scale_init))
    return state


def load_torch_file(path: Path) -> Dict[str, Any]:
    """Load a ``.pt``/``.pth``/``.bin`` pickle safely (``weights_only``) or a ``.safetensors`` file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"weight file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file
        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as exc:
            raise CheckpointError(f"{path} is not a valid safetensors file: {exc}") from None
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many types for a bad pickle
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CheckpointError(f"cannot load {path} as a weights-only torch checkpoint: {reason}") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} holds a {type(data).__name__}, expected a dict of tensors")
    return data


def from_reference_checkpoint(path: Path, base: ClippyConfig, *, heads: Optional[int] = None
                              ) -> Tuple[StateDict, ClippyConfig]:
    """The reference training checkpoint -> (state dict, inferred config)."""
    data = load_torch_file(path)
    state = data.get("state_dict", data)
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: 'state_dict' is a {type(state).__name__}, expected a dict")
    state = strip_ddp(state)
    vit_raw = strip_prefix(state, "visual.trunk.")
    t5_raw = strip_prefix(state, "text.0.auto_model.")
    if not vit_raw or not t5_raw:
        dino = any(key.split(".")[0] in ("teacher", "student", "backbone") for key in state) or \
            any(isinstance(data.get(name), dict) for name in ("teacher", "student"))
        if dino:
            raise CheckpointError(
                f"{path} is a DINO training checkpoint ({describe_keys(state, limit=2)}), not a CLIPpy one: "
                f"give it with --vit (the teacher's backbone is taken) and --sentence-transformer")
        raise CheckpointError(
            f"{path} is not a CLIPpy reference checkpoint: expected keys under 'visual.trunk.' and "
            f"'text.0.auto_model.', found {len(vit_raw)} and {len(t5_raw)} (it holds "
            f"{describe_keys(state, limit=3)})")
    vit, bad_vit = convert_timm_vit(vit_raw)
    text, bad_t5 = convert_hf_t5(t5_raw)
    if "text.2.linear.weight" in state:
        text["projection.weight"] = state["text.2.linear.weight"]
    check_weights({**vit, **text}, str(path))
    if "logit_scale" in state:
        check_weights({"logit_scale": state["logit_scale"]}, str(path))
    known = ("visual.trunk.", "text.0.auto_model.", "text.2.linear.weight", "logit_scale")
    unexpected = ([f"visual.trunk.{k}" for k in bad_vit] + [f"text.0.auto_model.{k}" for k in bad_t5]
                  + [k for k in state if not k.startswith(known)])
    if unexpected:
        raise CheckpointError(f"{path}: {len(unexpected)} unexpected keys: {describe_keys(unexpected)}")
    cfg = replace(base, image=infer_image_config(vit, base.image, heads),
                  text=infer_text_config(text, base.text), source=f"reference checkpoint {Path(path).name}")
    return assemble(vit, text, state.get("logit_scale")), cfg


def _read_json(path: Path) -> Dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"missing file: {path}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path} is not valid JSON: {exc}") from None


def _first_existing(folder: Path, names: Tuple[str, ...], what: str) -> Path:
    for name in names:
        if (folder / name).is_file():
            return folder / name
    raise CheckpointError(f"{folder} has no {what} (looked for {', '.join(names)})")


def from_timm_and_sentence_transformer(vit_path: Path, st_dir: Path, base: ClippyConfig, *,
                                       heads: Optional[int] = None
                                       ) -> Tuple[StateDict, ClippyConfig, Path]:
    """A timm ViT state dict and a sentence-transformers directory -> (state, config, tokenizer)."""
    st_dir = Path(st_dir)
    if not st_dir.is_dir():
        raise CheckpointError(f"sentence-transformers directory not found: {st_dir}")
    vit_state, unwrapped = unwrap_vit_state(load_torch_file(vit_path))
    vit, bad_vit = convert_timm_vit(vit_state)
    if bad_vit:
        hint = f"; {_TRAINING_HINT}" if not vit else ""
        raise CheckpointError(f"{vit_path}: {len(bad_vit)} keys a timm ViT does not have: "
                              f"{describe_keys(bad_vit)}{hint}")

    hf_config = _read_json(st_dir / "config.json")
    t5_file = _first_existing(st_dir, ("model.safetensors", "pytorch_model.bin"), "T5 weights")
    t5_state = strip_ddp(load_torch_file(t5_file))
    text, bad_t5 = convert_hf_t5(t5_state)
    if bad_t5:
        raise CheckpointError(f"{t5_file}: unexpected keys for a T5 encoder: {', '.join(sorted(bad_t5)[:20])}")
    dense_dir = st_dir / "2_Dense"
    if dense_dir.is_dir():
        dense_file = _first_existing(dense_dir, ("model.safetensors", "pytorch_model.bin"), "Dense weights")
        dense = load_torch_file(dense_file)
        if "linear.weight" not in dense:
            raise CheckpointError(f"{dense_file} has no 'linear.weight'")
        if "linear.bias" in dense:
            raise CheckpointError(f"{dense_file} has a bias; Sentence-T5's Dense layer has none")
        text["projection.weight"] = dense["linear.weight"]
    check_weights(vit, str(vit_path))
    check_weights(text, str(st_dir))

    text_base = base.text
    ffn = str(hf_config.get("feed_forward_proj", "relu"))
    text_base = replace(
        text_base,
        relative_max_distance=int(hf_config.get("relative_attention_max_distance", text_base.relative_max_distance)),
        norm_eps=float(hf_config.get("layer_norm_epsilon", text_base.norm_eps)),
        pad_id=int(hf_config.get("pad_token_id", text_base.pad_id)),
        eos_id=int(hf_config.get("eos_token_id", text_base.eos_id)),
    )
    st_config = st_dir / "sentence_bert_config.json"
    if st_config.is_file():
        max_len = _read_json(st_config).get("max_seq_length")
        if max_len:
            text_base = replace(text_base, max_length=int(max_len))
    text_cfg = infer_text_config(text, text_base)
    expected_ffn = "gated-gelu" if "gated" in ffn else "relu"
    if text_cfg.ffn != expected_ffn:
        raise CheckpointError(f"{st_dir}/config.json says feed_forward_proj={ffn!r} but the weights are "
                              f"{text_cfg.ffn!r}")
    tokenizer = _first_existing(st_dir, ("spiece.model", "tokenizer.json"), "tokenizer file")
    taken = f" ({unwrapped})" if unwrapped else ""
    cfg = replace(base, image=infer_image_config(vit, base.image, heads), text=text_cfg,
                  source=f"timm {Path(vit_path).name}{taken} + sentence-transformers {st_dir.name}")
    return assemble(vit, text, None), cfg, tokenizer
