"""Convert a CLIPpy checkpoint into a clippy-rt model directory.

Either the reference training checkpoint plus a tokenizer file:
    clippy-rt convert --checkpoint CKPT --tokenizer spiece.model --out DIR
or a timm DINO ViT state dict plus a sentence-transformers directory:
    clippy-rt convert --vit VIT_FILE --sentence-transformer ST_DIR --out DIR
The architecture is inferred from tensor shapes; what shapes cannot tell can be set.
Pickles are read with torch.load(weights_only=True).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from .common import positive_int


def add_arguments(parser) -> None:
    parser.add_argument("--checkpoint", type=Path, help="reference training checkpoint (torch pickle)")
    parser.add_argument("--tokenizer", type=Path, help="spiece.model or tokenizer.json (with --checkpoint)")
    parser.add_argument("--vit", type=Path, help="timm ViT state dict (.pth or .safetensors)")
    parser.add_argument("--sentence-transformer", type=Path, help="sentence-transformers directory")
    parser.add_argument("--out", type=Path, required=True, help="output model directory")
    parser.add_argument("--vit-heads", type=positive_int, default=None, help="ViT attention heads (default: width/64)")
    parser.add_argument("--relative-max-distance", type=positive_int, default=None,
                        help="T5 relative attention max distance (default: from config.json, else 128)")
    parser.add_argument("--max-length", type=positive_int, default=None, help="text max length in tokens")
    parser.add_argument("--pool-exclude-cls", action="store_true",
                        help="leave the class token out of the max pooling (default: include it)")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists")


def run(args) -> int:
    from clippy_rt import convert as conv
    from clippy_rt.config import clippy_b16
    from clippy_rt.errors import InputError
    from clippy_rt.formats.model_dir import save_model_dir
    from clippy_rt.tokenizer import load_tokenizer

    reference = args.checkpoint is not None
    split = args.vit is not None or args.sentence_transformer is not None
    if reference == split:
        raise InputError("give either --checkpoint and --tokenizer, or --vit and --sentence-transformer")
    base = clippy_b16()
    if reference:
        if args.tokenizer is None:
            raise InputError("--checkpoint needs --tokenizer (spiece.model or tokenizer.json)")
        state, cfg = conv.from_reference_checkpoint(args.checkpoint, base, heads=args.vit_heads)
        tokenizer = args.tokenizer
    else:
        if args.vit is None or args.sentence_transformer is None:
            raise InputError("--vit and --sentence-transformer go together")
        state, cfg, tokenizer = conv.from_timm_and_sentence_transformer(
            args.vit, args.sentence_transformer, base, heads=args.vit_heads)
    text = cfg.text
    if args.relative_max_distance is not None:
        text = replace(text, relative_max_distance=args.relative_max_distance)
    if args.max_length is not None:
        text = replace(text, max_length=args.max_length)
    cfg = replace(cfg, text=text, image=replace(cfg.image, pool_include_cls=not args.pool_exclude_cls))
    load_tokenizer(tokenizer, cfg)
    save_model_dir(args.out, cfg, state, tokenizer, overwrite=args.overwrite)
    for line in _found(cfg, reference, args):
        print(line)
    print(f"wrote {args.out}")
    return 0


def _found(cfg, reference: bool, args) -> list:
    """What the conversion found, a line each: the source, the towers, the projection and
    whether the towers were trained together."""
    image, text = cfg.image, cfg.text
    heads = "--vit-heads" if args.vit_heads else "width / 64, set --vit-heads if that is wrong"
    lines = [f"found: {cfg.source}",
             f"image tower: ViT patch {image.patch_size}, width {image.width}, depth {image.depth}, "
             f"heads {image.heads} ({heads}), {image.pos_grid}x{image.pos_grid} position grid",
             f"text tower: T5 d_model {text.d_model}, depth {text.depth}, heads {text.heads}, ffn {text.ffn}, "
             f"vocab {text.vocab_size}, max length {text.max_length}"]
    if text.projection:
        where = "text.2.linear" if reference else "2_Dense"
        lines.append(f"projection: {text.d_model} -> {text.projection_dim} ({where})")
    else:
        lines.append(f"projection: none ({args.sentence_transformer} has no 2_Dense): text embeddings are "
                     f"the {text.d_model}-wide mean-pooled T5 states")
    if text.embed_dim != image.width:
        lines.append(f"warning: text embeddings are {text.embed_dim} wide and image features "
                     f"{image.width}: the model cannot compare them")
    if reference:
        lines.append("towers: trained together (one CLIPpy training checkpoint)")
    else:
        lines.append("towers: from two separate checkpoints, never trained together: the image and text "
                     "embeddings are not aligned until the pair is trained jointly (prompts will not find "
                     "their regions)")
    return lines
