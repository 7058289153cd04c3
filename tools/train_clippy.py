"""Train a small CLIPpy on generated scenes from image-level captions.

The contrastive recipe of the paper, scaled down to two CPU cores:

- the engine's own ``ClippyModel`` in a small configuration (ViT with patch 8 on
  64-pixel scenes, a T5 encoder text tower with mean pooling and a Dense projection),
  trained from scratch in one stage (a masked-patch pre-training stage of the image
  tower, tried before, showed no measurable gain and was dropped);
- a SentencePiece vocabulary trained on the caption corpus and the symmetric
  contrastive (InfoNCE) loss with a learned logit scale:

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

Every step draws fresh scenes (``--style``: patterned by default, see
``clippy_rt.datasets.synthetic``) from the training seeds, never reusing one: a fixed
pool of 20 000 scenes was memorised (training loss falling while the validation mIoU
stayed flat). Captions are composed per step from each scene's object list and
background kind (shape only or colour + shape, varied phrasings); they never name the
fill pattern. Half of the images (``--single-object``) come from scenes whose caption
names a single object. The label maps are never read during training; they are used
only by the held-out evaluation, which segments scenes from a validation range of
evaluation seeds (disjoint from the 500 reported ones) with ``eval_prompts`` and logs
zero-shot mIoU as training goes.

Every evaluation writes the current weights as a complete model directory
(``OUT/model``, and ``OUT/best`` for the best validation mIoU so far), so a usable
model exists whenever the run stops. ``--device cuda`` trains on a GPU, with bfloat16
autocast by default.

    python tools/train_clippy.py --out runs/demo
    python tools/train_clippy.py ship runs/demo/best --to clippy_rt/data/demo

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
    STYLES,
    TRAIN_SEED_BASE,
    class_names,
    eval_prompts,
    generate_scene,
)
from clippy_rt.kernels.patch_pool import patch_pool_ref
from clippy_rt.formats.model_dir import save_model_dir
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


def describe(objects, backgrounds, rng: np.random.Generator, colour_prob: float = 0.2):
    """What one caption names: (objects, backgrounds, with_colour).

    Every caption names every object and every background kind: a caption naming one
    concept of a scene ("a circle") matches most images of a batch, so under InfoNCE it
    teaches little beyond "an image with few objects" (tried: no better than full
    captions).

    ``colour_prob`` is the fraction of captions that name colours; the others name
    shapes only, so that shapes, not colours, tell captions apart.
    """
    with_colour = rng.random() < colour_prob
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
    parser.add_argument("--steps", type=int, default=100000,
                        help="at most this many steps")
    parser.add_argument("--max-minutes", type=float, default=32.0,
                        help="at most this many minutes of training, evaluation included")
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
    parser.add_argument("--style", choices=STYLES, default="patterned",
                        help="training scenes: patterned (each shape class has its own fill "
                             "pattern) or plain (flat fills)")
    parser.add_argument("--first-seed", type=int, default=TRAIN_SEED_BASE,
                        help="the first training seed; each step takes the next unused ones")
    parser.add_argument("--colour-prob", type=float, default=0.2,
                        help="fraction of captions that name colours (the others name shapes only)")
    parser.add_argument("--negatives", type=int, default=1,
                        help="hard-negative captions per image (one shape or background swapped)")
    parser.add_argument("--single-object", type=float, default=0.5,
                        help="fraction of the images drawn from scenes whose caption "
                             "names one object; the others are drawn from all scenes")
    parser.add_argument("--eval-every", type=int, default=25)
    parser.add_argument("--eval-images", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (on a shared, loaded machine one thread ran a step "
                             "several times faster than two)")
    parser.add_argument("--cache", type=Path, default=Path("runs/cache"),
                        help="where the SentencePiece vocabulary is kept between runs")
    args = parser.parse_args(argv)
    if args.image_size % args.patch or args.image_size % 2:
        parser.error(f"--image-size {args.image_size} must be even and a multiple of --patch {args.patch}")
    if args.max_minutes <= 0 or args.steps <= 0:
        parser.error("--max-minutes and --steps must be > 0")
    if not TRAIN_SEED_BASE <= args.first_seed < EVAL_SEED_BASE:
        parser.error(f"--first-seed must lie in [{TRAIN_SEED_BASE}, {EVAL_SEED_BASE}) (training seeds)")
    if args.width % 32:
        parser.error(f"--width must be a multiple of 32 (heads of 32), got {args.width}")
    return args


class Batches:
    """Training batches of fresh scenes: images (uint8, input size) with their captions,
    hard negatives and the concepts each caption names.

    Scenes come from consecutive training seeds, each used once. Scenes with one object
    are queued apart, so that ``--single-object`` of each batch can come from them;
    surplus scenes with several objects are dropped (generation is cheap next to a step).
    """

    # Scenes with several objects kept waiting at most (one batch's worth is plenty).
    _MAX_WAITING = 256

    def __init__(self, args, rng: np.random.Generator) -> None:
        self.args, self.rng = args, rng
        self.next_seed = args.first_seed
        self.single: list = []
        self.several: list = []

    def _generate(self) -> None:
        if self.next_seed >= EVAL_SEED_BASE:
            raise RuntimeError("the training seeds are used up")
        scene = generate_scene(self.next_seed, SCENE_SIZE, style=self.args.style)
        self.next_seed += 1
        (self.single if len(scene.objects) == 1 else self.several).append(scene)
        del self.several[:-self._MAX_WAITING]

    def _take(self, single: bool):
        queue = self.single if single else (self.several or self.single)
        while not queue:
            self._generate()
            queue = self.single if single else (self.several or self.single)
        return queue.pop(0)

    def draw(self):
        """(images uint8 [B, S, S, 3], captions [B], negatives [B * negatives], named bool [B, K])."""
        args, rng = self.args, self.rng
        scenes = [self._take(bool(rng.random() < args.single_object)) for _ in range(args.batch)]
        batch = upscale(np.stack([scene.image for scene in scenes]), args.image_size)
        texts, negatives = [], []
        named = np.zeros((args.batch, len(CONCEPTS)), dtype=bool)
        for row, scene in enumerate(scenes):
            scene_objects, scene_backgrounds = list(scene.objects), [scene.background]
            named_objects, named_backgrounds, colour = describe(scene_objects, scene_backgrounds, rng,
                                                                args.colour_prob)
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
            "best_miou": best, "scenes_used": batches.next_seed - args.first_seed})
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
    on the 500 reported held-out scenes, patterned and plain, and on 50 further held-out
    patterned scenes, plus the run's log summary) next to the weights in ``--to``.
    """
    import clippy_rt
    from clippy_rt.evaluate import evaluate, synthetic_set
    from clippy_rt.formats.model_dir import load_model

    parser = argparse.ArgumentParser(prog="train_clippy.py ship", description=ship.__doc__)
    parser.add_argument("model", type=Path, help="a run's model directory (RUN/model or RUN/best)")
    parser.add_argument("--to", type=Path, required=True, help="destination model directory")
    parser.add_argument("--log", type=Path, default=None, help="the run's log.jsonl (default: next to MODEL)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    engine = clippy_rt.load(args.model)
    figures = {}
    for key, n, seed, style in (("eval_500", REPORT_IMAGES, EVAL_SEED_BASE, "patterned"),
                                ("eval_500_plain", REPORT_IMAGES, EVAL_SEED_BASE, "plain"),
                                ("test_set", TEST_IMAGES, TEST_SEED, "patterned")):
        result = evaluate(engine, synthetic_set(n, seed, style=style), batch_size=50)
        figures[key] = {"n": n, "seed": seed, "style": style, "dataset": result.dataset,
                        "miou": result.miou, "pixel_accuracy": result.pixel_accuracy,
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
