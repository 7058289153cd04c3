"""Procedurally generated scenes with captions and pixel-exact label maps.

Each scene shows 1 to 4 coloured shapes over a textured background. The
caption names every object's colour and shape and the background kind, in one of
a dozen phrasings; it is the only supervision a model trained on these scenes
sees.

Two styles. In ``patterned`` scenes (the default) each shape class carries its own
fill pattern (``SHAPE_PATTERNS``: plain circles, checked squares, striped triangles,
dotted stars, speckled crosses, grid-lined rings) in the object's colour and a dark
tone of it, so a small patch inside an object shows what it is part of. Captions
never name the pattern: a model has to learn from the captions alone which shape
word goes with which look. ``plain`` scenes fill every object with its flat colour;
there only the outline tells a circle from a square, which a small image tower
trained for minutes barely learns. Both styles of a seed share the layout, the
colours, the labels and the caption; they differ only in the pixels inside objects. The label map (0 = background, 1 + ``SHAPES.index(shape)`` for a shape) is
kept for evaluation and is never derived from the caption or vice versa.

Everything is a function of an integer seed, so a scene can be regenerated
anywhere from its seed alone.

Seed policy. Training draws seeds from ``[TRAIN_SEED_BASE, EVAL_SEED_BASE)`` and
held-out evaluation from ``[EVAL_SEED_BASE, ...)``; :class:`SyntheticScenes`
refuses a seed range that straddles ``EVAL_SEED_BASE``, so a training set and an
evaluation set built through it can never share a scene. The image of seed ``s``
comes from ``SeedSequence(s, spawn_key=(1,))`` and its default caption from
``SeedSequence(s, spawn_key=(2,))``: two independent streams, so drawing another
caption for the same image (``caption_seed``) never changes the image.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from clippy_rt.errors import InputError

# The shapes, fill patterns and backgrounds are drawn there.
from .synthetic_drawing import (
    _BACKGROUND_PAINTERS,
    _PATTERN_PAINTERS,
    _SHAPE_EXTENT,
    _SHAPE_MASKS,
    _UNIT_AREAS,
    PATTERN_DARK,
)

__all__ = [
    "BACKGROUNDS",
    "BACKGROUND_PHRASES",
    "COLOURS",
    "EVAL_SEED_BASE",
    "SHAPES",
    "SHAPE_PATTERNS",
    "STYLES",
    "TRAIN_SEED_BASE",
    "Scene",
    "SyntheticScenes",
    "class_names",
    "eval_prompts",
    "generate_scene",
    "parse_dataset_spec",
    "parse_spec",
]

# --------------------------------------------------------------------------------------
# Vocabulary
# --------------------------------------------------------------------------------------

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "cross", "ring")

# The fill pattern of each shape class in patterned scenes (never named in captions).
SHAPE_PATTERNS: dict[str, str] = {
    "circle": "plain",
    "square": "checked",
    "triangle": "striped",
    "star": "dotted",
    "cross": "speckled",
    "ring": "grid-lined",
}

STYLES: tuple[str, ...] = ("patterned", "plain")

# Saturated colours on purpose: every background below is muted, so an object
# never blends into the background, yet colour says nothing about the shape class.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 20, 30),
    "orange": (255, 130, 0),
    "yellow": (250, 230, 30),
    "green": (20, 180, 40),
    "cyan": (0, 205, 215),
    "blue": (25, 60, 230),
    "purple": (140, 30, 180),
    "pink": (255, 105, 180),
}

BACKGROUNDS: tuple[str, ...] = ("grass", "gradient", "noise", "stripes", "sky")

# Every phrase contains a word that names its kind, so a caption always names it.
BACKGROUND_PHRASES: dict[str, tuple[str, ...]] = {
    "grass": ("grass", "a grassy background", "a patch of grass", "a grass background"),
    "gradient": ("a gradient", "a gradient background", "a smooth gradient", "a colour gradient"),
    "noise": ("noise", "a noisy background", "random noise", "a noise background"),
    "stripes": ("stripes", "a striped background", "a pattern of stripes", "a stripy background"),
    "sky": ("the sky", "a sky background", "a cloudy sky", "clouds in the sky"),
}

# The one prompt per background kind used at evaluation (the background class's
# logit is the max over these).
_BACKGROUND_PROMPTS: dict[str, str] = {
    "grass": "a grassy background",
    "gradient": "a gradient background",
    "noise": "a noisy background",
    "stripes": "a striped background",
    "sky": "a sky background",
}

# Colours too close to a background's own colours to stay visible on it.
_EXCLUDED_COLOURS: dict[str, frozenset[str]] = {
    "grass": frozenset({"green"}),
}

TRAIN_SEED_BASE = 0
EVAL_SEED_BASE = 10**9

_IMAGE_STREAM = 1
_CAPTION_STREAM = 2

MAX_OBJECTS = 4
# Object size: the diameter of its bounding circle, as a fraction of the image side.
_MIN_DIAMETER = 0.22
_MAX_DIAMETER = 0.5
# Centres may lie near the border, so objects can be cut by the frame.
_CENTRE_MARGIN = 0.05
# An object must keep this fraction of its full (unclipped, unoccluded) area
# visible, and at least _MIN_VISIBLE_PIXELS_FRACTION of the image, otherwise its
# placement is redrawn: the caption names it, so it has to be seen.
_MIN_VISIBLE_FRACTION = 0.4
_MIN_VISIBLE_PIXELS_FRACTION = 0.004
_PLACEMENT_TRIES = 30

# --------------------------------------------------------------------------------------
# Scenes
# --------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Scene:
    """One generated scene.

    Attributes:
        image: uint8 [H, W, 3] RGB, read-only.
        labels: uint8 [H, W], read-only: 0 where the background shows, else
            1 + ``SHAPES.index(shape)`` of the object visible there (later objects
            occlude earlier ones). Every labelled pixel has exactly its object's
            ``COLOURS`` value in ``image`` (plain style), or that value or its dark
            tone (``PATTERN_DARK`` times it, patterned style).
        caption: names every object's colour and shape and the background kind.
        objects: ``(shape, colour)`` per object, in drawing order (back to front).
        background: a key of ``BACKGROUND_PHRASES``.
        style: ``"patterned"`` or ``"plain"`` (see the module doc).
    """

    image: np.ndarray
    labels: np.ndarray
    caption: str
    objects: tuple[tuple[str, str], ...]
    background: str
    style: str = "patterned"


def _check_seed(seed: object, name: str) -> int:
    if isinstance(seed, bool):
        raise TypeError(f"{name} must be an int, got bool")
    try:
        value = operator.index(seed)
    except TypeError:
        raise TypeError(f"{name} must be an int, got {type(seed).__name__}") from None
    if value < 0:
        raise InputError(f"{name} must be >= 0, got {value}")
    return value


def _check_style(style: object) -> str:
    if style not in STYLES:
        raise InputError(f"style must be one of {', '.join(STYLES)}, got {style!r}")
    return str(style)


def _check_size(size: object) -> int:
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)):
        raise TypeError(f"size must be an int, got {type(size).__name__}")
    if size < 16:
        raise InputError(f"size must be >= 16 pixels, got {size}")
    return int(size)


def _rng(seed: int, stream: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(stream,)))


def _object_mask(
    shape: str, centre_y: float, centre_x: float, radius: float, angle: float, size: int
) -> tuple[np.ndarray, tuple[slice, slice]]:
    """Mask of one object on the in-frame window around it.

    Returns (mask bool [h, w], (rows, cols)) with ``mask`` covering
    ``image[rows, cols]``; the window may be empty when the object lies outside.
    """
    reach = radius * _SHAPE_EXTENT
    y0, y1 = max(int(math.floor(centre_y - reach)), 0), min(int(math.ceil(centre_y + reach)), size)
    x0, x1 = max(int(math.floor(centre_x - reach)), 0), min(int(math.ceil(centre_x + reach)), size)
    y0, x0 = min(y0, y1), min(x0, x1)
    dy = (np.arange(y0, y1, dtype=np.float32) + 0.5 - centre_y)[:, None]
    dx = (np.arange(x0, x1, dtype=np.float32) + 0.5 - centre_x)[None, :]
    cos_a, sin_a = math.cos(angle) / radius, math.sin(angle) / radius
    u = dx * cos_a + dy * sin_a
    v = dy * cos_a - dx * sin_a
    return _SHAPE_MASKS[shape](u, v), (slice(y0, y1), slice(x0, x1))


@dataclass(frozen=True)
class _Placement:
    """Where one object was drawn: centre and radius in pixels, angle in radians."""

    shape: str
    colour: str
    centre_y: float
    centre_x: float
    radius: float
    angle: float


def _place_objects(
    rng: np.random.Generator, size: int, background: str
) -> tuple[list[_Placement], np.ndarray]:
    """Draws 1..MAX_OBJECTS objects; returns their placements and the owner map.

    The owner map is int8 [size, size]: -1 for background, else the index of the
    object visible at that pixel.
    """
    count = int(rng.integers(1, MAX_OBJECTS + 1))
    excluded = _EXCLUDED_COLOURS.get(background, frozenset())
    colours = [name for name in COLOURS if name not in excluded]
    min_pixels = _MIN_VISIBLE_PIXELS_FRACTION * size * size
    owner = np.full((size, size), -1, dtype=np.int8)
    objects: list[_Placement] = []
    needed: list[float] = []
    for index in range(count):
        placed = False
        for attempt in range(_PLACEMENT_TRIES):
            shape = SHAPES[int(rng.integers(len(SHAPES)))]
            colour = colours[int(rng.integers(len(colours)))]
            radius = 0.5 * size * rng.uniform(_MIN_DIAMETER, _MAX_DIAMETER)
            centre_y, centre_x = size * rng.uniform(_CENTRE_MARGIN, 1.0 - _CENTRE_MARGIN, size=2)
            angle = rng.uniform(0.0, 2 * math.pi)
            if index == 0 and attempt == _PLACEMENT_TRIES - 1:
                # A scene needs one object; centred, it is whole and alone.
                centre_y = centre_x = size / 2
            mask, window = _object_mask(shape, centre_y, centre_x, radius, angle, size)
            candidate = owner.copy()
            candidate[window][mask] = index
            visible = np.bincount(candidate.ravel() + 1, minlength=index + 2)[1:]
            required = needed + [max(_MIN_VISIBLE_FRACTION * _UNIT_AREAS[shape] * radius**2, min_pixels)]
            if np.all(visible >= np.asarray(required)):
                owner, placed = candidate, True
                objects.append(_Placement(shape, colour, float(centre_y), float(centre_x), radius, angle))
                needed = required
                break
        if not placed:
            # Rare (crowded scene): keep the objects placed so far rather than one
            # that would be hidden or hide another.
            break
    return objects, owner


def _dark_tone(colour: str) -> tuple[int, int, int]:
    """The second tone of a patterned object of ``colour``."""
    return tuple(int(round(PATTERN_DARK * c)) for c in COLOURS[colour])  # type: ignore[return-value]


def _pattern_map(rng: np.random.Generator, objects: list[_Placement], owner: np.ndarray) -> np.ndarray:
    """bool [size, size]: True where an object shows its dark tone.

    Patterns are drawn after the placements, from the same stream, so a seed's layout is
    the same in both styles and its patterned image is still a function of the seed.
    """
    size = owner.shape[0]
    dark = np.zeros(owner.shape, dtype=bool)
    painted: dict[str, np.ndarray] = {}
    for index, placement in enumerate(objects):
        pattern = SHAPE_PATTERNS[placement.shape]
        if pattern not in painted:
            painted[pattern] = _PATTERN_PAINTERS[pattern](rng, size)
        mine = owner == index
        dark[mine] = painted[pattern][mine]
    return dark


def _render(
    rng: np.random.Generator, size: int, style: str = "patterned"
) -> tuple[np.ndarray, np.ndarray, list[_Placement], str]:
    """Returns (image uint8 [size, size, 3], labels uint8 [size, size], placements, background)."""
    background = BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))]
    canvas = _BACKGROUND_PAINTERS[background](rng, size)
    objects, owner = _place_objects(rng, size, background)
    # Lookup tables indexed by owner + 1 (0 = background).
    label_lut = np.array([0] + [SHAPES.index(o.shape) + 1 for o in objects], dtype=np.uint8)
    colour_lut = np.array([(0, 0, 0)] + [COLOURS[o.colour] for o in objects], dtype=np.uint8)
    slot = owner.astype(np.intp) + 1
    image = np.clip(np.rint(canvas), 0, 255).astype(np.uint8)
    covered = slot > 0
    image[covered] = colour_lut[slot[covered]]
    if style == "patterned":
        dark_lut = np.array([(0, 0, 0)] + [_dark_tone(o.colour) for o in objects], dtype=np.uint8)
        dark = _pattern_map(rng, objects, owner)
        image[dark] = dark_lut[slot[dark]]
    labels = label_lut[slot]
    return image, labels, objects, background


# --------------------------------------------------------------------------------------
# Captions
# --------------------------------------------------------------------------------------

_COUNT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight")


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _plural(noun: str) -> str:
    return noun + "es" if noun.endswith(("s", "x", "ch", "sh")) else noun + "s"


def _join(phrases: list[str], rng: np.random.Generator) -> str:
    if len(phrases) == 1:
        return phrases[0]
    last = " and " if rng.random() < 0.7 else ", "
    return ", ".join(phrases[:-1]) + last + phrases[-1]


# Fields: {objects} the objects joined as a list, {listing} the objects separated by
# commas, {bg} a background phrase, {count} the number of objects in words,
# {noun} "shape"/"shapes", {be} "is"/"are" agreeing with the first object phrase.
_CAPTION_TEMPLATES: tuple[str, ...] = (
    "{objects} on {bg}",
    "a photo of {objects} on {bg}",
    "{objects} over {bg}",
    "{count} {noun}: {listing}, over {bg}",
    "an image of {objects} in front of {bg}",
    "{bg} with {objects}",
    "there {be} {objects} on {bg}",
    "{objects} against {bg}",
    "a picture showing {objects} on {bg}",
    "{objects} drawn on {bg}",
    "on {bg}: {listing}",
    "a drawing of {objects} with {bg} behind",
    "a rendering of {objects} placed on {bg}",
)


def _caption(objects: tuple[tuple[str, str], ...], background: str, rng: np.random.Generator) -> str:
    counts: dict[tuple[str, str], int] = {}
    for obj in objects:
        counts[obj] = counts.get(obj, 0) + 1
    groups = list(counts.items())
    order = rng.permutation(len(groups))
    phrases = []
    for i in order:
        (shape, colour), n = groups[i]
        if n == 1:
            phrases.append(f"{_article(colour)} {colour} {shape}")
        else:
            phrases.append(f"{_COUNT_WORDS[n]} {colour} {_plural(shape)}")
    phrase_options = BACKGROUND_PHRASES[background]
    template = _CAPTION_TEMPLATES[int(rng.integers(len(_CAPTION_TEMPLATES)))]
    first_is_plural = counts[groups[order[0]][0]] > 1
    return template.format(
        objects=_join(phrases, rng),
        listing=", ".join(phrases),
        bg=phrase_options[int(rng.integers(len(phrase_options)))],
        count=_COUNT_WORDS[len(objects)],
        noun="shape" if len(objects) == 1 else "shapes",
        be="are" if first_is_plural else "is",
    )


def generate_scene(
    seed: int, size: int = 64, *, caption_seed: int | None = None, style: str = "patterned"
) -> Scene:
    """Generates the scene of ``seed`` at ``size`` x ``size`` pixels in ``style``
    (``"patterned"`` or ``"plain"``, see the module doc).

    The same (seed, size) always gives the same image, labels and objects; the
    caption comes from ``caption_seed`` (default: ``seed``) through an independent
    stream, so several phrasings of one image are ``caption_seed = 0, 1, ...``.
    Object placement is drawn in units of ``size``, so a scene looks the same at
    every size except for rare placements redrawn because of pixel counts.

    Raises:
        TypeError: seed, caption_seed or size is not an int.
        InputError: a negative seed, size < 16, or an unknown style.
    """
    seed = _check_seed(seed, "seed")
    caption_seed = seed if caption_seed is None else _check_seed(caption_seed, "caption_seed")
    size = _check_size(size)
    style = _check_style(style)
    image, labels, placements, background = _render(_rng(seed, _IMAGE_STREAM), size, style)
    objects = tuple((p.shape, p.colour) for p in placements)
    caption = _caption(objects, background, _rng(caption_seed, _CAPTION_STREAM))
    image.setflags(write=False)
    labels.setflags(write=False)
    return Scene(image=image, labels=labels, caption=caption, objects=objects, background=background,
                 style=style)


class SyntheticScenes(Sequence):
    """The scenes of seeds ``seed, seed + 1, ..., seed + n - 1``, generated on access.

    The range must lie entirely below ``EVAL_SEED_BASE`` (a training set) or
    entirely at or above it (an evaluation set), so that the two never overlap.
    """

    def __init__(self, n: int, seed: int = EVAL_SEED_BASE, size: int = 64, style: str = "patterned") -> None:
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)):
            raise TypeError(f"n must be an int, got {type(n).__name__}")
        if n < 1:
            raise InputError(f"n must be >= 1, got {n}")
        seed = _check_seed(seed, "seed")
        size = _check_size(size)
        if seed < EVAL_SEED_BASE < seed + n:
            raise InputError(
                f"seeds [{seed}, {seed + n}) straddle EVAL_SEED_BASE = {EVAL_SEED_BASE}: a set "
                "must be all training seeds or all evaluation seeds"
            )
        self._n = int(n)
        self._seed = seed
        self._size = size
        self._style = _check_style(style)

    @property
    def seeds(self) -> range:
        return range(self._seed, self._seed + self._n)

    @property
    def size(self) -> int:
        return self._size

    @property
    def style(self) -> str:
        return self._style

    @property
    def split(self) -> str:
        """The seed range's side of EVAL_SEED_BASE: "train" below it, "eval" at or above."""
        return "eval" if self._seed >= EVAL_SEED_BASE else "train"

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, index: int) -> Scene:  # type: ignore[override]
        if isinstance(index, slice):
            raise TypeError("SyntheticScenes does not support slicing; index one scene at a time")
        i = operator.index(index)
        if i < 0:
            i += self._n
        if not 0 <= i < self._n:
            raise IndexError(f"scene index {index} out of range for {self._n} scenes")
        return generate_scene(self._seed + i, self._size, style=self._style)

    def __repr__(self) -> str:
        return f"SyntheticScenes(n={self._n}, seed={self._seed}, size={self._size}, style={self._style!r})"


# --------------------------------------------------------------------------------------
# Evaluation vocabulary and CLI spec
# --------------------------------------------------------------------------------------


def class_names() -> list[str]:
    """Label index -> class name: ``["background", *SHAPES]``."""
    return ["background", *SHAPES]


def eval_prompts(shape_templates: Sequence[str] = ("{article} {shape}",)) -> dict[str, list[str]]:
    """Prompts per class, in label order: ``{class: [prompts]}``.

    A class's logit is the max over its prompts. The background has one prompt per
    background kind ("a grassy background", ...), because captions name the kind and
    never say "background" alone. Each shape gets one prompt per template; a template
    may use ``{shape}`` and ``{article}`` ("a"/"an" for the shape word).

    Raises:
        InputError: no templates, or a template without ``{shape}`` or with other fields.
    """
    if isinstance(shape_templates, str) or len(shape_templates) == 0:
        raise InputError("shape_templates must be a non-empty sequence of strings")
    prompts: dict[str, list[str]] = {"background": [_BACKGROUND_PROMPTS[b] for b in BACKGROUNDS]}
    for shape in SHAPES:
        shape_prompts = []
        for template in shape_templates:
            if "{shape}" not in template:
                raise InputError(f"shape template {template!r} has no {{shape}} field")
            try:
                shape_prompts.append(template.format(shape=shape, article=_article(shape)))
            except (KeyError, IndexError, ValueError) as err:
                raise InputError(
                    f"shape template {template!r} is invalid (allowed fields: shape, article): {err}"
                ) from None
        prompts[shape] = shape_prompts
    return prompts


DEFAULT_SPEC_N = 500


def _is_decimal(text: str) -> bool:
    # str.isdigit alone accepts non-ASCII digits such as "²" that int() rejects.
    return text.isascii() and text.isdigit()


# Dataset spec prefix -> scene style.
SPEC_PREFIXES: dict[str, str] = {"synthetic": "patterned", "synthetic-plain": "plain"}


def parse_spec(spec: str) -> tuple[int, int]:
    """``(n, seed)`` of a dataset spec; see :func:`parse_dataset_spec`."""
    n, seed, _ = parse_dataset_spec(spec)
    return n, seed


def parse_dataset_spec(spec: str) -> tuple[int, int, str]:
    """Parses ``PREFIX``, ``PREFIX:N`` or ``PREFIX:N:SEED`` into ``(n, seed, style)``.

    PREFIX is ``synthetic`` (patterned scenes) or ``synthetic-plain`` (plain scenes).
    Defaults: n = 500, seed = EVAL_SEED_BASE (held-out scenes).

    Raises:
        InputError: another prefix, a non-integer or non-positive N, a negative SEED.
    """
    if not isinstance(spec, str):
        raise TypeError(f"spec must be a str, got {type(spec).__name__}")
    parts = spec.strip().split(":")
    if parts[0] not in SPEC_PREFIXES or len(parts) > 3:
        raise InputError(f"expected 'synthetic[-plain]', 'synthetic[-plain]:N' or "
                         f"'synthetic[-plain]:N:SEED', got {spec!r}")
    n, seed = DEFAULT_SPEC_N, EVAL_SEED_BASE
    if len(parts) >= 2:
        if not _is_decimal(parts[1]) or int(parts[1]) < 1:
            raise InputError(f"N in {spec!r} must be a positive integer, got {parts[1]!r}")
        n = int(parts[1])
    if len(parts) == 3:
        if not _is_decimal(parts[2]):
            raise InputError(f"SEED in {spec!r} must be a non-negative integer, got {parts[2]!r}")
        seed = int(parts[2])
        if seed < EVAL_SEED_BASE < seed + n:
            raise InputError(
                f"seeds [{seed}, {seed + n}) straddle EVAL_SEED_BASE = {EVAL_SEED_BASE}: use a "
                "range entirely below or entirely at/above it"
            )
    return n, seed, SPEC_PREFIXES[parts[0]]
