"""Train a small CLIPpy on generated scenes: self-supervised pre-training of the image
tower, then the contrastive stage from image-level captions.

The recipe of the paper, scaled down to two CPU cores:

- the engine's own ``ClippyModel`` in a small configuration (ViT with patch 8 on
  64-pixel scenes, a T5 encoder text tower with mean pooling and a Dense projection);
- stage 1 (``--pretrain-minutes``), no captions and no labels: masked patch prediction
  on the training scenes. 2 x 2-patch blocks (about ``--mask-ratio`` of them) are set to
  the mean colour, and a linear head predicts each hidden patch's pixels from the
  tower's output token (L1). Filling in a hidden part of a star or a ring needs the rest
  of the object, which gives the patch tokens the locality prior the paper takes from
  DINO. The tower is saved as ``OUT/tower.safetensors`` (``--init`` reuses one);
- stage 2, from that initialisation: a SentencePiece vocabulary trained on the caption
  corpus and the symmetric contrastive (InfoNCE) loss with a learned logit scale:

      S = exp(t) * I @ T^T                      (I [B, D], T [B, D], both L2-normalised)
      loss = (CE(S, diag) + CE(S^T, diag)) / 2

  where I is the tower's own pooled embedding: the max over the image tokens
  (``--pooling max``, CLIPpy) or the class token (``--pooling cls``, the CLIP-style
  ablation). The image-to-text direction also ranks ``--negatives`` extra captions per
  image, each differing from the true one by one shape or background kind absent from
  the image (hard negatives: still captions, never label maps);
- plus (``--concept-weight``) a multiple-instance term that ties patches to the words of
  their caption (``concept_loss``): each concept a caption can name (a shape, a
  background kind) is embedded from a caption naming it alone; every patch must match
  one of the concepts its image's caption names, and each named concept must be the
  best match of some patch. This is still image-level supervision (which words the
  caption holds), never a label map.

Captions are composed per step from each scene's object list and background kind
(shape only or colour + shape, varied phrasings). Half of the images (``--single-object``)
come from scenes whose caption names a single object; ``--mosaic`` adds 2 x 2 mosaics of
half-size scenes captioned with the union of their contents (used in stage 1 of the
shipped model, not in stage 2). The label maps are never read during training; they are
used only by the held-out evaluation, which segments scenes from a validation range of
evaluation seeds (disjoint from the 500 reported ones) with ``eval_prompts`` and logs
zero-shot mIoU as training goes.

Every evaluation writes the current weights as a complete model directory
(``OUT/model``, and ``OUT/best`` for the best validation mIoU so far), so a usable
model exists whenever the run stops. ``--device cuda`` trains on a GPU, with bfloat16
autocast by default.

    python tools/train_clippy.py --out runs/pretrain --pretrain-minutes 10 --max-minutes 0 \
        --mosaic 0.3 --single-object 0
    python tools/train_clippy.py --out runs/max --init runs/pretrain/tower.safetensors
    python tools/train_clippy.py ship runs/max/best --to clippy_rt/data/demo

This script is not part of the runtime package and is never imported by it.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from clippy_rt.config import ClippyConfig, ImageTowerConfig, TextTowerConfig
from clippy_rt.datasets.synthetic import (
    BACKGROUND_PHRASES,
    BACKGROUNDS,
    EVAL_SEED_BASE,
    SHAPES,
    TRAIN_SEED_BASE,
    class_names,
    eval_prompts,
    generate_scene,
)
from clippy_rt.kernels.patch_pool import patch_pool_ref
from clippy_rt.model_dir import save_model_dir
from clippy_rt.models import ClippyModel
from clippy_rt.tokenizer import Tokenizer, train_sentencepiece

# Held-out seeds used for monitoring during training: evaluation-side seeds, far from
# the range the reported figures use (EVAL_SEED_BASE + [0, 500)).
VALIDATION_SEED = EVAL_SEED_BASE + 5_000_000
# Scenes are generated at the size `clippy-rt eval` uses; the engine resizes them (PIL
# bicubic) to the model's input size, and so does the training.
SCENE_SIZE = 64

# --------------------------------------------------------------------------------------
# Captions
# --------------------------------------------------------------------------------------

_COUNT_WORDS = ("zero", "one", "two", "three", "four")

# {objects}: the object phrases joined into a list; {bg}: the background phrase(s).
_TEMPLATES = (
    "{objects} on {bg}",
    "a photo of {objects} on {bg}",
    "{objects} over {bg}",
    "an image of {objects} in front of {bg}",
    "{bg} with {objects}",
    "{objects} against {bg}",
    "a picture showing {objects} on {bg}",
    "{objects} drawn on {bg}",
    "on {bg}: {objects}",
    "a drawing of {objects} with {bg} behind",
)
_OBJECT_TEMPLATES = ("{objects}", "a photo of {objects}", "an image of {objects}", "a picture showing {objects}")
_BACKGROUND_TEMPLATES = ("{bg}", "a photo of {bg}", "an image of {bg}")


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _plural(noun: str) -> str:
    return noun + "es" if noun.endswith(("s", "x", "ch", "sh")) else noun + "s"


def _listing(phrases: list) -> str:
    return phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]


def render_caption(objects, backgrounds, rng: np.random.Generator, with_colour: bool) -> str:
    """A caption naming ``objects`` ((shape, colour) pairs; colour only ``with_colour``)
    and the ``backgrounds`` kinds; either list may be empty, not both."""
    names = [f"{colour} {shape}" if with_colour else shape for shape, colour in objects]
    counts: dict = {}
    for name in names:
        counts[name] = counts.get(name, 0) + 1
    phrases = []
    for name, count in counts.items():
        if count == 1:
            phrases.append(f"{_article(name)} {name}")
        else:
            words = name.split(" ")
            phrases.append(" ".join([_COUNT_WORDS[min(count, 4)], *words[:-1], _plural(words[-1])]))
    phrases = [phrases[i] for i in rng.permutation(len(phrases))]
    backgrounds = [backgrounds[i] for i in rng.permutation(len(backgrounds))]
    bg = _listing([BACKGROUND_PHRASES[b][int(rng.integers(len(BACKGROUND_PHRASES[b])))]
                   for b in backgrounds]) if backgrounds else ""
    if not phrases:
        templates = _BACKGROUND_TEMPLATES
    elif not backgrounds:
        templates = _OBJECT_TEMPLATES
    else:
        templates = _TEMPLATES
    template = templates[int(rng.integers(len(templates)))]
    return template.format(objects=_listing(phrases) if phrases else "", bg=bg)


def describe(objects, backgrounds, rng: np.random.Generator, mosaic: bool, colour_prob: float = 0.2):
    """What one caption names: (objects, backgrounds, with_colour).

    Every caption names every object and every background kind: a caption naming one
    concept of a scene ("a circle") matches most images of a batch, so under InfoNCE it
    teaches little beyond "an image with few objects" (tried: no better than full
    captions). A mosaic's caption (up to 16 objects) names shapes only, grouped with
    counts, to stay within the text length.

    ``colour_prob`` is the fraction of (non-mosaic) captions that name colours; the
    others name shapes only, so that shapes, not colours, tell captions apart.
    """
    with_colour = (not mosaic) and rng.random() < colour_prob
    return list(objects), list(backgrounds), with_colour


def hard_negative(named_objects, named_backgrounds, objects, backgrounds, rng: np.random.Generator):
    """The named content with one shape, or one background kind, replaced by one absent
    from the image (so the negative caption is false)."""
    present_shapes = {shape for shape, _ in objects}
    absent_shapes = [s for s in SHAPES if s not in present_shapes]
    absent_backgrounds = [b for b in BACKGROUNDS if b not in backgrounds]
    swap_background = not named_objects or not absent_shapes or (named_backgrounds and rng.random() < 0.25)
    if swap_background and named_backgrounds and absent_backgrounds:
        named_backgrounds = list(named_backgrounds)
        index = int(rng.integers(len(named_backgrounds)))
        named_backgrounds[index] = absent_backgrounds[int(rng.integers(len(absent_backgrounds)))]
        return list(named_objects), named_backgrounds
    named_objects = list(named_objects)
    if not named_objects:
        return [(SHAPES[int(rng.integers(len(SHAPES)))], "red")], list(named_backgrounds)
    index = int(rng.integers(len(named_objects)))
    pool = absent_shapes or [s for s in SHAPES if s != named_objects[index][0]]
    named_objects[index] = (pool[int(rng.integers(len(pool)))], named_objects[index][1])
    return named_objects, list(named_backgrounds)


def caption_corpus(n: int, seed: int) -> list:
    """Captions for the vocabulary: composed ones, generator ones and the evaluation prompts."""
    rng = np.random.default_rng(seed)
    lines = []
    for index in range(n):
        scene = generate_scene(TRAIN_SEED_BASE + index, 16)
        lines.append(scene.caption)
        lines.append(render_caption(scene.objects, [scene.background], rng, with_colour=bool(index % 2)))
        lines.append(render_caption(scene.objects, [], rng, with_colour=bool(index % 2)))
    for prompts in eval_prompts(("{article} {shape}", "a {shape}", "{shape}")).values():
        lines.extend(prompts)
    return lines


# --------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------


def upscale(images: np.ndarray, size: int) -> np.ndarray:
    """uint8 [n, s, s, 3] -> [n, size, size, 3], PIL bicubic as the engine's ``prepare``."""
    if images.shape[1] == size:
        return images
    return np.stack([np.asarray(Image.fromarray(image).resize((size, size), Image.Resampling.BICUBIC))
                     for image in images])


def scene_pool(n: int, scene_size: int, first_seed: int, cache: Path, input_size: int):
    """Images uint8 [n, input_size, input_size, 3] (scenes of ``scene_size`` pixels,
    resized), objects and backgrounds of training seeds ``first_seed .. first_seed + n - 1``
    (cached in ``cache``)."""
    if first_seed + n > EVAL_SEED_BASE:
        raise ValueError("training scenes must come from seeds below EVAL_SEED_BASE")
    if cache.is_file():
        data = np.load(cache, allow_pickle=False)
        if len(data["images"]) >= n:
            meta = json.loads(str(data["meta"]))
            return (upscale(data["images"][:n], input_size),
                    [tuple(map(tuple, o)) for o in meta["objects"][:n]], meta["backgrounds"][:n])
    images = np.empty((n, scene_size, scene_size, 3), dtype=np.uint8)
    objects, backgrounds = [], []
    for index in range(n):
        scene = generate_scene(first_seed + index, scene_size)
        images[index] = scene.image
        objects.append(scene.objects)
        backgrounds.append(scene.background)
    cache.parent.mkdir(parents=True, exist_ok=True)
    meta = json.dumps({"objects": [list(map(list, o)) for o in objects], "backgrounds": backgrounds})
    partial = cache.with_suffix(".partial.npz")
    np.savez(partial, images=images, meta=np.array(meta))
    partial.replace(cache)
    return upscale(images, input_size), objects, backgrounds


# Mosaic tiles: half-size scenes from their own seed range.
TILE_SEED = TRAIN_SEED_BASE + 10_000_000


def mosaic(tiles: np.ndarray) -> np.ndarray:
    """Four half-size scenes uint8 [4, S/2, S/2, 3] -> one image [S, S, 3], 2 x 2.

    Its caption names the union of the four scenes' objects and backgrounds: no
    location is given, yet a max-pooled embedding can only hold four backgrounds
    and their objects if different patches carry them, which favours local features.
    """
    return np.concatenate([np.concatenate(tiles[:2], axis=1), np.concatenate(tiles[2:], axis=1)], axis=0)


def normalise(images: np.ndarray, config: ImageTowerConfig) -> torch.Tensor:
    """uint8 [B, H, W, 3] -> float32 [B, 3, H, W], (x / 255 - mean) / std, as the engine does."""
    pixels = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div(255.0)
    mean = torch.tensor(config.mean).view(1, 3, 1, 1)
    std = torch.tensor(config.std).view(1, 3, 1, 1)
    return (pixels - mean) / std


def dihedral(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Each image under a random one of the 8 flips/rotations (captions stay true)."""
    out = np.empty_like(images)
    for index, image in enumerate(images):
        k = int(rng.integers(8))
        image = np.rot90(image, k % 4)
        out[index] = image[:, ::-1] if k >= 4 else image
    return out


# --------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------


def make_config(args, vocab_size: int) -> ClippyConfig:
    image = ImageTowerConfig(
        patch_size=args.patch, width=args.width, depth=args.depth, heads=args.width // 32,
        mlp_dim=4 * args.width, pos_grid=args.image_size // args.patch, pooling=args.pooling,
        pool_include_cls=args.include_cls, image_size=args.image_size)
    text = TextTowerConfig(
        vocab_size=vocab_size, d_model=args.width, d_kv=32, d_ff=4 * args.width,
        heads=args.width // 32, depth=args.text_depth, relative_buckets=16,
        relative_max_distance=32, max_length=args.max_length, projection=True,
        projection_dim=args.width)
    return ClippyConfig(image=image, text=text, prompt_template="{article} {}",
                        arch=f"clippy-synthetic-{args.pooling}",
                        source="tools/train_clippy.py: trained on generated scenes (clippy_rt.datasets.synthetic)")


def t5_init(model: ClippyModel) -> None:
    """Re-initialise the text tower's projections as T5 does.

    T5 attention does not divide logits by sqrt(d_kv): the query weights carry that
    factor (std (d_model * d_kv) ** -0.5). The runtime's generic init (std
    in_features ** -0.5 everywhere) is right for loading checkpoints but starts training
    with logits of std ~sqrt(d_kv), i.e. saturated attention.
    """
    cfg = model.cfg.text
    with torch.no_grad():
        for block in model.text.blocks:
            block.attn.q.weight.normal_(std=(cfg.d_model * cfg.d_kv) ** -0.5)
            for layer in (block.attn.k, block.attn.v):
                layer.weight.normal_(std=cfg.d_model ** -0.5)
            block.attn.o.weight.normal_(std=(cfg.heads * cfg.d_kv) ** -0.5)
            ffn = block.ffn
            for layer in ((ffn.wi_0, ffn.wi_1) if ffn.gated else (ffn.wi,)):
                layer.weight.normal_(std=cfg.d_model ** -0.5)
            ffn.wo.weight.normal_(std=cfg.d_ff ** -0.5)


def image_embedding(model: ClippyModel, pixels: torch.Tensor):
    """(patch features [B, N, D], pooled [B, D]), both L2-normalised, by the model's tower.

    On CUDA the tower's max pooling dispatches to a Triton kernel that has no backward;
    its torch reference (the same function the CPU path runs) keeps the graph.
    """
    image = model.cfg.image
    if pixels.is_cuda and image.pooling == "max":
        return patch_pool_ref(model.visual.forward_features(pixels), include_cls=image.pool_include_cls)
    return model.encode_image(pixels)


# --------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------


class Validation:
    """Zero-shot segmentation of held-out scenes, as the engine computes it.

    Scenes of SCENE_SIZE pixels, resized to the model's input (PIL bicubic);
    logits[b, k] = bilinear upsample (align_corners=False) of <patch, text_k> to the
    scene size; a class's logit is the max over its prompts; label = argmax over classes.
    """

    def __init__(self, n: int, seed: int, config: ClippyConfig) -> None:
        scenes = [generate_scene(seed + i, SCENE_SIZE) for i in range(n)]
        images = upscale(np.stack([s.image for s in scenes]), config.image.image_size)
        self.pixels = normalise(images, config.image)
        self.targets = np.stack([s.labels for s in scenes]).astype(np.int64)
        prompts = eval_prompts()
        self.prompts = [p for name in class_names() for p in prompts[name]]
        self.owner = torch.tensor([k for k, name in enumerate(class_names()) for _ in prompts[name]])

    @torch.no_grad()
    def __call__(self, model: ClippyModel, tokenizer: Tokenizer, device: torch.device) -> dict:
        model.eval()
        ids, mask = tokenizer.encode(self.prompts)
        text = model.encode_text(ids.to(device), mask.to(device)).float()
        classes = len(class_names())
        matrix = np.zeros((classes, classes), dtype=np.int64)
        grid = model.cfg.image.image_size // model.cfg.image.patch_size
        for start in range(0, len(self.pixels), 100):
            patches, _ = image_embedding(model, self.pixels[start:start + 100].to(device))
            logits = (patches.float() @ text.T).transpose(1, 2).reshape(len(patches), -1, grid, grid)
            logits = F.interpolate(logits, size=(SCENE_SIZE, SCENE_SIZE), mode="bilinear",
                                   align_corners=False).cpu()
            per_class = torch.full((len(patches), classes, SCENE_SIZE, SCENE_SIZE), -math.inf)
            for k in range(classes):
                per_class[:, k] = logits[:, self.owner == k].max(dim=1).values
            pred = per_class.argmax(dim=1).numpy()
            target = self.targets[start:start + 100]
            matrix += np.bincount((target * classes + pred).ravel(),
                                  minlength=classes * classes).reshape(classes, classes)
        model.train()
        tp = np.diag(matrix).astype(np.float64)
        union = matrix.sum(0) + matrix.sum(1) - tp
        iou = np.where(union > 0, tp / np.maximum(union, 1), np.nan)
        return {"miou": float(np.nanmean(iou)), "shape_iou": float(np.nanmean(iou[1:])),
                "pixel_accuracy": float(tp.sum() / matrix.sum()),
                "iou": {name: round(float(v), 4) for name, v in zip(class_names(), iou)}}


# --------------------------------------------------------------------------------------
# Losses
# --------------------------------------------------------------------------------------


def learning_rate(step: int, progress: float, peak: float, warmup: int) -> float:
    """Linear warm-up to ``peak`` over ``warmup`` steps, then cosine decay to peak / 50.

    ``progress`` in [0, 1] is how much of the run is done: the larger of the step
    fraction and the time fraction, so that a run cut by its time budget still ends
    its schedule (on a busy machine the steps per minute vary several-fold).
    """
    if step < warmup:
        return peak * (step + 1) / warmup
    floor = peak / 50
    return floor + 0.5 * (peak - floor) * (1 + math.cos(math.pi * min(1.0, progress)))


def contrastive_loss(image: torch.Tensor, text: torch.Tensor, negatives: torch.Tensor,
                     logit_scale: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE; image-to-text also ranks the hard-negative captions.

    image, text: [B, D]; negatives: [M, D]; all L2-normalised. Returns a scalar.
    """
    scale = logit_scale.clamp(max=math.log(100.0)).exp()
    per_image = scale * image @ torch.cat([text, negatives]).T
    per_text = scale * text @ image.T
    target = torch.arange(len(image), device=image.device)
    return 0.5 * (F.cross_entropy(per_image, target) + F.cross_entropy(per_text, target))


# The concepts a caption can name: every shape and every background kind.
CONCEPTS = tuple(("shape", s) for s in SHAPES) + tuple(("background", b) for b in BACKGROUNDS)


def concept_captions(rng: np.random.Generator) -> list:
    """One caption per entry of CONCEPTS, naming that concept alone ("a star", "a photo
    of a striped background", ...), drawn afresh each step."""
    return [render_caption([(name, "red")], [], rng, with_colour=False) if kind == "shape"
            else render_caption([], [name], rng, with_colour=False) for kind, name in CONCEPTS]


def concept_loss(patches: torch.Tensor, concepts: torch.Tensor, named: torch.Tensor,
                 logit_scale: torch.Tensor) -> torch.Tensor:
    """Multiple-instance loss tying patches to the words of their image's caption.

    patches [B, N, D] and concepts [K, D] are L2-normalised; named bool [B, K] says which
    concepts the caption names. With p[b, n] = softmax_k(scale <patch_bn, concept_k>):

        explained = mean_{b,n} log sum_{k named in b} p[b, n, k]   (every patch shows
                    something the caption names)
        found     = mean_{b, k named in b} max_n log p[b, n, k]    (every named concept
                    is the best match of some patch)
        loss = -(explained + found)
    """
    scale = logit_scale.clamp(max=math.log(100.0)).exp()
    log_p = (scale * patches @ concepts.T).float().log_softmax(dim=-1)
    explained = torch.logsumexp(log_p.masked_fill(~named[:, None, :], -math.inf), dim=-1)
    found = log_p.amax(dim=1)[named]
    return -(explained.mean() + found.mean())


class MaskedPatchHead(torch.nn.Module):
    """Linear map from a patch token [.., D] to the pixels of its patch [.., 3 * p * p]."""

    def __init__(self, width: int, patch: int) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(width, 3 * patch * patch)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.linear(tokens)


def patchify(pixels: torch.Tensor, patch: int) -> torch.Tensor:
    """[B, 3, H, W] -> [B, (H/p) * (W/p), 3 * p * p], row-major patches as the tower's."""
    batch, channels, height, width = pixels.shape
    grid_h, grid_w = height // patch, width // patch
    x = pixels.reshape(batch, channels, grid_h, patch, grid_w, patch)
    return x.permute(0, 2, 4, 1, 3, 5).reshape(batch, grid_h * grid_w, channels * patch * patch)


def block_mask(batch: int, grid: int, ratio: float, block: int, generator: torch.Generator) -> torch.Tensor:
    """bool [B, grid * grid]: True on masked patches, in ``block`` x ``block`` squares
    (aligned), about ``ratio`` of them."""
    cells = -(-grid // block)
    coarse = torch.rand(batch, cells, cells, generator=generator) < ratio
    fine = coarse.repeat_interleave(block, 1).repeat_interleave(block, 2)[:, :grid, :grid]
    return fine.reshape(batch, grid * grid)


def masked_patch_loss(model: ClippyModel, head: MaskedPatchHead, pixels: torch.Tensor,
                      mask: torch.Tensor) -> torch.Tensor:
    """Masked patch prediction (SimMIM-style) through the image tower.

    Masked patches of ``pixels`` [B, 3, H, W] (``mask`` bool [B, N]) are set to 0, the
    dataset mean after normalisation; the tower sees the image, and a linear head
    predicts each masked patch's pixels from its output token. Returns the mean L1 error
    over the masked patches' pixels.
    """
    patch = model.cfg.image.patch_size
    grid_h, grid_w = pixels.shape[-2] // patch, pixels.shape[-1] // patch
    keep = (~mask).to(pixels.dtype).reshape(-1, 1, grid_h, 1, grid_w, 1)
    shape = pixels.shape
    hidden = (pixels.reshape(shape[0], shape[1], grid_h, patch, grid_w, patch) * keep).reshape(shape)
    tokens = model.visual.forward_features(hidden)[:, 1:]
    prediction = head(tokens[mask]).float()
    return (prediction - patchify(pixels, patch)[mask]).abs().mean()


# --------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="run folder (log, model dirs)")
    parser.add_argument("--pooling", choices=("max", "cls"), default="max")
    parser.add_argument("--include-cls", action=argparse.BooleanOptionalAction, default=True,
                        help="max pooling: let the class token take part in the max (as the "
                             "reference training does)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None,
                        help="bfloat16 autocast for the forward passes (default: on for CUDA)")
    parser.add_argument("--pretrain-minutes", type=float, default=10.0,
                        help="stage 1: minutes of masked patch pre-training of the image tower "
                             "(0 = none; ignored with --init)")
    parser.add_argument("--pretrain-steps", type=int, default=100000,
                        help="stage 1: at most this many steps")
    parser.add_argument("--pretrain-lr", type=float, default=1.5e-3)
    parser.add_argument("--mask-ratio", type=float, default=0.5,
                        help="stage 1: fraction of the masked 2 x 2-patch blocks")
    parser.add_argument("--init", type=Path, default=None,
                        help="stage 1's result (RUN/tower.safetensors) to start stage 2 from")
    parser.add_argument("--steps", type=int, default=100000,
                        help="stage 2: at most this many steps (0 = stop after stage 1)")
    parser.add_argument("--max-minutes", type=float, default=32.0,
                        help="stage 2: at most this many minutes of training, evaluation included "
                             "(0 = stop after stage 1)")
    parser.add_argument("--concept-weight", type=float, default=2.0,
                        help="weight of the patch-to-caption-word loss (0 = contrastive loss only)")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--warmup", type=int, default=40)
    parser.add_argument("--weight-decay", type=float, default=0.05)
    parser.add_argument("--image-size", type=int, default=64,
                        help="model input size (scenes are generated at 64 px and resized)")
    parser.add_argument("--patch", type=int, default=8)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--text-depth", type=int, default=1)
    parser.add_argument("--max-length", type=int, default=40)
    parser.add_argument("--vocab", type=int, default=400)
    parser.add_argument("--pool", type=int, default=20000, help="training scenes (seeds 0..N-1)")
    parser.add_argument("--colour-prob", type=float, default=0.2,
                        help="fraction of captions that name colours (the others name shapes only)")
    parser.add_argument("--negatives", type=int, default=1,
                        help="hard-negative captions per image (one shape or background swapped)")
    parser.add_argument("--mosaic", type=float, default=0.0,
                        help="fraction of images that are 2 x 2 mosaics of half-size scenes")
    parser.add_argument("--single-object", type=float, default=0.5,
                        help="fraction of the (non-mosaic) images drawn from scenes whose caption "
                             "names one object; the others are drawn from all scenes")
    parser.add_argument("--eval-every", type=int, default=25)
    parser.add_argument("--eval-images", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (on a shared, loaded machine one thread ran a step "
                             "several times faster than two)")
    parser.add_argument("--cache", type=Path, default=Path("runs/cache"))
    args = parser.parse_args(argv)
    if args.image_size % args.patch or args.image_size % 2:
        parser.error(f"--image-size {args.image_size} must be even and a multiple of --patch {args.patch}")
    if min(args.pretrain_minutes, args.max_minutes) < 0 or min(args.pretrain_steps, args.steps) < 0:
        parser.error("minutes and steps must be >= 0")
    if not 0.0 < args.mask_ratio < 1.0:
        parser.error(f"--mask-ratio must lie in (0, 1), got {args.mask_ratio}")
    if args.width % 32:
        parser.error(f"--width must be a multiple of 32 (heads of 32), got {args.width}")
    return args


class Batches:
    """Training batches: images (uint8, input size) with their captions, hard negatives and
    the concepts each caption names."""

    def __init__(self, args, rng: np.random.Generator) -> None:
        self.args, self.rng = args, rng
        self.images, self.objects, self.backgrounds = scene_pool(
            args.pool, SCENE_SIZE, TRAIN_SEED_BASE, args.cache / f"pool-{args.pool}.npz", args.image_size)
        # Scenes whose caption names one object: there every object patch must match that
        # one shape (or the background), the clearest word-to-patch signal a caption gives.
        self.single = np.flatnonzero([len(o) == 1 for o in self.objects])
        if args.mosaic > 0:
            self.tiles, self.tile_objects, self.tile_backgrounds = scene_pool(
                args.pool, SCENE_SIZE // 2, TILE_SEED, args.cache / f"tiles-{args.pool}.npz",
                args.image_size // 2)

    def images_only(self) -> np.ndarray:
        """A batch of scenes and mosaics uint8 [B, S, S, 3], randomly flipped/rotated."""
        return self.draw(captions=False)[0]

    def draw(self, captions: bool = True):
        """(images uint8 [B, S, S, 3], captions [B], negatives [B * negatives], named bool [B, K])."""
        args, rng = self.args, self.rng
        size = args.image_size
        batch = np.empty((args.batch, size, size, 3), dtype=np.uint8)
        texts, negatives = [], []
        named = np.zeros((args.batch, len(CONCEPTS)), dtype=bool)
        for row in range(args.batch):
            if rng.random() < args.mosaic:
                picked = rng.integers(len(self.tiles), size=4)
                batch[row] = mosaic(self.tiles[picked])
                scene_objects = [o for i in picked for o in self.tile_objects[i]]
                scene_backgrounds = sorted({self.tile_backgrounds[i] for i in picked})
                is_mosaic = True
            else:
                if rng.random() < args.single_object:
                    picked = int(self.single[rng.integers(len(self.single))])
                else:
                    picked = int(rng.integers(len(self.images)))
                batch[row] = self.images[picked]
                scene_objects = list(self.objects[picked])
                scene_backgrounds = [self.backgrounds[picked]]
                is_mosaic = False
            if not captions:
                continue
            named_objects, named_backgrounds, colour = describe(scene_objects, scene_backgrounds, rng,
                                                                is_mosaic, args.colour_prob)
            texts.append(render_caption(named_objects, named_backgrounds, rng, colour))
            for _ in range(args.negatives):
                negative = hard_negative(named_objects, named_backgrounds, scene_objects,
                                         scene_backgrounds, rng)
                negatives.append(render_caption(*negative, rng, colour))
            for shape, _ in named_objects:
                named[row, CONCEPTS.index(("shape", shape))] = True
            for background in named_backgrounds:
                named[row, CONCEPTS.index(("background", background))] = True
        return dihedral(batch, rng), texts, negatives, named


def pretrain(args, model: ClippyModel, batches: Batches, device: torch.device, autocast, record) -> Path:
    """Stage 1: masked patch prediction on generated scenes (no captions, no labels).

    Trains the image tower only; writes its weights to OUT/tower.safetensors (after
    every 50 steps and at the end) and returns that path.
    """
    from safetensors.torch import save_file

    head = MaskedPatchHead(args.width, args.patch).to(device)
    params = list(model.visual.parameters()) + list(head.parameters())
    decay = [p for p in params if p.ndim >= 2]
    other = [p for p in params if p.ndim < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                                   {"params": other, "weight_decay": 0.0}], lr=args.pretrain_lr,
                                  betas=(0.9, 0.95))
    generator = torch.Generator().manual_seed(args.seed)
    grid = args.image_size // args.patch
    path = args.out / "tower.safetensors"

    def save() -> None:
        state = {k: v.detach().float().cpu().contiguous() for k, v in model.visual.state_dict().items()}
        partial = path.with_suffix(".partial")
        save_file(state, str(partial))
        partial.replace(path)

    start = time.perf_counter()
    losses = []
    step = 0
    model.train()
    while step < args.pretrain_steps:
        progress = max(step / args.pretrain_steps, (time.perf_counter() - start) / 60 / args.pretrain_minutes)
        if progress >= 1.0:
            break
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, progress, args.pretrain_lr, args.warmup)
        pixels = normalise(batches.images_only(), model.cfg.image).to(device)
        mask = block_mask(args.batch, grid, args.mask_ratio, 2, generator).to(device)
        with autocast():
            loss = masked_patch_loss(model, head, pixels, mask)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        losses.append(float(loss.detach()))
        step += 1
        if step % 10 == 0:
            record({"event": "pretrain", "step": step, "loss": round(float(np.mean(losses[-10:])), 4),
                    "minutes": round((time.perf_counter() - start) / 60, 2)})
        if step % 50 == 0:
            save()
    save()
    record({"event": "pretrain_done", "step": step, "minutes": round((time.perf_counter() - start) / 60, 2),
            "loss": round(float(np.mean(losses[-20:])), 4) if losses else None})
    return path


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("train_clippy.py: error: --device cuda but torch sees no CUDA device", file=sys.stderr)
        return 1
    use_bf16 = device.type == "cuda" if args.bf16 is None else args.bf16

    def autocast():
        return torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16)

    rng = np.random.default_rng(args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    log = (args.out / "log.jsonl").open("a")

    def record(entry: dict) -> None:
        log.write(json.dumps(entry) + "\n")
        log.flush()
        print(json.dumps(entry), flush=True)

    begin = time.perf_counter()
    spiece = args.cache / f"spiece-bpe-{args.vocab}.model"
    if not spiece.is_file():
        args.cache.mkdir(parents=True, exist_ok=True)
        # BPE: a unigram model on this small, repetitive vocabulary keeps too few pieces and
        # splits most words into letters; BPE at this size keeps every word whole.
        train_sentencepiece(caption_corpus(20000, args.seed), spiece, args.vocab, seed=args.seed,
                            model_type="bpe")
    tokenizer = Tokenizer.from_file(spiece, max_length=args.max_length)
    config = make_config(args, tokenizer.vocab_size)
    batches = Batches(args, rng)
    validation = Validation(args.eval_images, VALIDATION_SEED, config)
    record({"event": "start", "args": {k: str(v) for k, v in vars(args).items()},
            "vocab": tokenizer.vocab_size, "setup_s": round(time.perf_counter() - begin, 1),
            "device": str(device), "bf16": use_bf16, "config": config.to_dict()})

    model = ClippyModel(config)
    t5_init(model)
    model.to(device)
    if args.init is not None:
        from safetensors.torch import load_file

        model.visual.load_state_dict(load_file(str(args.init)))
        record({"event": "init", "from": str(args.init)})
    elif args.pretrain_minutes > 0:
        pretrain(args, model, batches, device, autocast, record)
    if args.max_minutes <= 0 or args.steps <= 0:
        record({"event": "done", "step": 0, "minutes": 0.0, "best_miou": None})
        return 0
    model.train()
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embed" not in n]
    other = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embed" not in n)]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                                   {"params": other, "weight_decay": 0.0}], lr=args.lr,
                                  betas=(0.9, 0.98), eps=1e-6)
    start = time.perf_counter()
    best = -1.0
    losses = []

    def checkpoint(step: int) -> None:
        nonlocal best
        result = validation(model, tokenizer, device)
        minutes = (time.perf_counter() - start) / 60
        record({"event": "eval", "step": step, "minutes": round(minutes, 2),
                "loss": round(float(np.mean(losses[-50:])), 4) if losses else None,
                "logit_scale": round(float(model.logit_scale.detach().exp()), 2), **result})
        state = {k: v.detach().float().cpu().clone() for k, v in model.state_dict().items()}
        save_model_dir(args.out / "model", config, state, spiece, overwrite=True)
        if result["miou"] > best:
            best = result["miou"]
            save_model_dir(args.out / "best", config, state, spiece, overwrite=True)

    step = 0
    while step < args.steps:
        progress = max(step / args.steps, (time.perf_counter() - start) / 60 / args.max_minutes)
        if progress >= 1.0:
            break
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, progress, args.lr, args.warmup)
        images, captions, negatives, named = batches.draw()
        pixels = normalise(images, config.image).to(device)
        ids, mask = tokenizer.encode(captions + negatives + concept_captions(rng))
        with autocast():
            patches, image = image_embedding(model, pixels)
            text = model.encode_text(ids.to(device), mask.to(device))
            concepts = text[args.batch * (1 + args.negatives):]
            loss = contrastive_loss(image.float(), text[: args.batch].float(),
                                    text[args.batch: args.batch * (1 + args.negatives)].float(),
                                    model.logit_scale)
            if args.concept_weight > 0:
                loss = loss + args.concept_weight * concept_loss(
                    patches, concepts, torch.from_numpy(named).to(device), model.logit_scale)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        losses.append(float(loss.detach()))
        step += 1
        if step % 10 == 0:
            record({"event": "train", "step": step, "loss": round(float(np.mean(losses[-10:])), 4),
                    "lr": round(optimizer.param_groups[0]["lr"], 6),
                    "minutes": round((time.perf_counter() - start) / 60, 2)})
        if step % args.eval_every == 0:
            checkpoint(step)
    if step % args.eval_every:
        checkpoint(step)
    record({"event": "done", "step": step, "minutes": round((time.perf_counter() - start) / 60, 2),
            "best_miou": best})
    return 0


# --------------------------------------------------------------------------------------
# Shipping: held-out figures through the engine, then the package's model directory
# --------------------------------------------------------------------------------------

# 50 further held-out scenes (evaluation-side seeds, unused above); the package's test
# re-scores the first 40 of them.
TEST_SEED = EVAL_SEED_BASE + 7_000_000
TEST_IMAGES = 50
REPORT_IMAGES = 500


def ship(argv=None) -> int:
    """Score a run's model directory through the engine and copy it into the package.

    Writes ``results.json`` (mIoU, per-class IoU, pixel accuracy and the confusion matrix
    on the 500 reported held-out scenes and on 50 further held-out scenes, plus the run's
    log summary) next to the weights in ``--to``.
    """
    import clippy_rt
    from clippy_rt.evaluate import evaluate, synthetic_set
    from clippy_rt.model_dir import load_model

    parser = argparse.ArgumentParser(prog="train_clippy.py ship", description=ship.__doc__)
    parser.add_argument("model", type=Path, help="a run's model directory (RUN/model or RUN/best)")
    parser.add_argument("--to", type=Path, required=True, help="destination model directory")
    parser.add_argument("--log", type=Path, default=None, help="the run's log.jsonl (default: next to MODEL)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    engine = clippy_rt.load(args.model)
    figures = {}
    for key, n, seed in (("eval_500", REPORT_IMAGES, EVAL_SEED_BASE), ("test_set", TEST_IMAGES, TEST_SEED)):
        result = evaluate(engine, synthetic_set(n, seed), batch_size=50)
        figures[key] = {"n": n, "seed": seed, "miou": result.miou, "pixel_accuracy": result.pixel_accuracy,
                        "iou": dict(zip(result.class_names, result.iou)),
                        # confusion[t][p]: pixels of class t labelled p
                        "confusion": [list(row) for row in result.confusion]}
        print(key, json.dumps(figures[key]), flush=True)
    log_path = args.log or args.model.parent / "log.jsonl"
    if log_path.is_file():
        entries = [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()]
        evals = [e for e in entries if e.get("event") == "eval"]
        figures["training"] = {
            "validation_curve": [{"step": e["step"], "minutes": e["minutes"], "miou": round(e["miou"], 4),
                                  "loss": e["loss"]} for e in evals],
            "steps": max((e.get("step", 0) for e in entries), default=0),
            "minutes": max((e.get("minutes", 0) for e in entries), default=0),
        }
        if evals:
            # RUN/best holds the weights of the best validation evaluation, RUN/model the last.
            chosen = max(evals, key=lambda e: e["miou"]) if args.model.name == "best" else evals[-1]
            figures["training"]["checkpoint_step"] = chosen["step"]
    model, info = load_model(args.model)
    results_path = args.model.parent / "results.json"
    results_path.write_text(json.dumps(figures, indent=2) + "\n")
    save_model_dir(args.to, info.config, model.state_dict(), info.tokenizer, overwrite=True,
                   extra_files=[results_path])
    print(f"shipped {args.model} to {args.to}")
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "ship":
        sys.exit(ship(sys.argv[2:]))
    sys.exit(main())
