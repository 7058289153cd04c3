import re
import time
from collections import Counter

import numpy as np
import pytest

from clippy_rt.datasets import synthetic, synthetic_drawing
from clippy_rt.datasets.synthetic import (
    BACKGROUND_PHRASES,
    BACKGROUNDS,
    COLOURS,
    EVAL_SEED_BASE,
    SHAPE_PATTERNS,
    SHAPES,
    STYLES,
    TRAIN_SEED_BASE,
    SyntheticScenes,
    class_names,
    eval_prompts,
    generate_scene,
    parse_dataset_spec,
    parse_spec,
)
from clippy_rt.errors import InputError

NUM_SCENES = 200


@pytest.fixture(scope="module")
def scenes():
    return [generate_scene(seed) for seed in range(NUM_SCENES)]


@pytest.fixture(scope="module")
def plain_scenes():
    return [generate_scene(seed, style="plain") for seed in range(NUM_SCENES)]


def _plural(shape):
    return shape + "es" if shape.endswith(("s", "x", "ch", "sh")) else shape + "s"


def test_vocabulary_sizes():
    assert len(SHAPES) >= 6 and len(set(SHAPES)) == len(SHAPES)
    assert len(COLOURS) >= 6
    assert len(BACKGROUNDS) >= 3
    assert set(BACKGROUND_PHRASES) == set(BACKGROUNDS)
    rgb = np.array(list(COLOURS.values()), dtype=np.float64)
    distances = np.linalg.norm(rgb[:, None] - rgb[None], axis=-1)
    np.fill_diagonal(distances, np.inf)
    assert distances.min() >= 80.0


def test_same_seed_same_scene():
    first, second = generate_scene(1234), generate_scene(1234)
    np.testing.assert_array_equal(first.image, second.image)
    np.testing.assert_array_equal(first.labels, second.labels)
    assert first.caption == second.caption
    assert first.objects == second.objects
    assert first.background == second.background


def test_different_seeds_differ(scenes):
    images = {scene.image.tobytes() for scene in scenes[:50]}
    labels = {scene.labels.tobytes() for scene in scenes[:50]}
    assert len(images) == 50
    assert len(labels) == 50


def test_scene_arrays(scenes):
    for size in (32, 64, 100):
        scene = generate_scene(7, size)
        assert scene.image.shape == (size, size, 3) and scene.image.dtype == np.uint8
        assert scene.labels.shape == (size, size) and scene.labels.dtype == np.uint8
    with pytest.raises(ValueError):
        scenes[0].image[0, 0, 0] = 1
    with pytest.raises(ValueError):
        scenes[0].labels[0, 0] = 1


def test_caption_seed_changes_only_the_caption():
    base = generate_scene(42)
    captions = set()
    for caption_seed in range(20):
        other = generate_scene(42, caption_seed=caption_seed)
        np.testing.assert_array_equal(other.image, base.image)
        np.testing.assert_array_equal(other.labels, base.labels)
        assert other.objects == base.objects
        captions.add(other.caption)
    assert len(captions) > 5
    assert generate_scene(42, caption_seed=42).caption == base.caption


def _dark(rgb):
    return np.array([round(0.4 * c) for c in rgb], dtype=np.uint8)


@pytest.mark.parametrize("style", STYLES)
def test_labels_are_the_drawn_pixels(scenes, plain_scenes, style):
    colour_of = {name: np.array(rgb, dtype=np.uint8) for name, rgb in COLOURS.items()}
    for scene in scenes if style == "patterned" else plain_scenes:
        assert scene.style == style
        labels, image = scene.labels, scene.image
        assert set(np.unique(labels).tolist()) <= set(range(len(SHAPES) + 1))
        for class_index in range(1, len(SHAPES) + 1):
            shape = SHAPES[class_index - 1]
            region = labels == class_index
            allowed = {colour for s, colour in scene.objects if s == shape}
            if not allowed:
                assert not region.any()
                continue
            matches = np.zeros(region.shape, dtype=bool)
            for colour in allowed:
                matches |= np.all(image == colour_of[colour], axis=-1)
                if style == "patterned":
                    matches |= np.all(image == _dark(colour_of[colour]), axis=-1)
            # Every pixel labelled with a shape has the colour of an object of that shape
            # (or, patterned, its dark tone).
            assert np.all(matches[region])
        # Background pixels never carry an object colour exactly.
        background = image[labels == 0]
        for rgb in colour_of.values():
            assert not np.any(np.all(background == rgb, axis=-1))
        # Every object keeps a visible part of at least 0.4% of the image.
        for shape, colour in set(scene.objects):
            visible = np.all(image == colour_of[colour], axis=-1)
            if style == "patterned":
                visible |= np.all(image == _dark(colour_of[colour]), axis=-1)
            visible &= labels == SHAPES.index(shape) + 1
            assert visible.sum() >= 0.004 * labels.size


def test_caption_names_every_object_and_the_background(scenes):
    numbers = {"a": 1, "an": 1, "two": 2, "three": 3, "four": 4}
    pattern = re.compile(
        r"\b(a|an|two|three|four) (%s) (%s)\b"
        % ("|".join(COLOURS), "|".join(list(SHAPES) + [_plural(s) for s in SHAPES]))
    )
    for scene in scenes:
        caption = scene.caption
        mentioned = Counter()
        for number, colour, shape in pattern.findall(caption):
            singular = shape if shape in SHAPES else next(s for s in SHAPES if _plural(s) == shape)
            assert (numbers[number] == 1) == (shape in SHAPES), caption
            mentioned[(singular, colour)] += numbers[number]
        assert mentioned == Counter(scene.objects), caption
        assert any(phrase in caption for phrase in BACKGROUND_PHRASES[scene.background]), caption
        assert "label" not in caption


def test_identical_objects_use_plural_forms():
    rng = np.random.default_rng(0)
    objects = (("cross", "red"), ("star", "orange"), ("cross", "red"))
    captions = [synthetic._caption(objects, "noise", rng) for _ in range(30)]
    for caption in captions:
        assert "two red crosses" in caption
        assert "an orange star" in caption
        assert "a red cross " not in caption + " "
    assert len(set(captions)) > 10


def test_variety(scenes):
    assert {shape for scene in scenes for shape, _ in scene.objects} == set(SHAPES)
    assert {colour for scene in scenes for _, colour in scene.objects} == set(COLOURS)
    assert {scene.background for scene in scenes} == set(BACKGROUNDS)
    assert {len(scene.objects) for scene in scenes} == {1, 2, 3, 4}
    # Every caption template is used.
    template_patterns = [
        re.compile("^" + re.sub(r"\\\{\w+\\\}", ".+", re.escape(template)) + "$")
        for template in synthetic._CAPTION_TEMPLATES
    ]
    used = set()
    for scene in scenes:
        matched = {i for i, p in enumerate(template_patterns) if p.match(scene.caption)}
        assert matched, scene.caption
        used |= matched
    assert used == set(range(len(template_patterns)))
    # Object sizes vary: the labelled area spans a wide range.
    areas = [np.count_nonzero(scene.labels) for scene in scenes if len(scene.objects) == 1]
    assert max(areas) > 3 * min(areas)


def _full_mask(placement, size, pad=0):
    """The object's mask ignoring occlusion, on the pixel grid extended by ``pad`` on each side."""
    axis = np.arange(-pad, size + pad) + 0.5
    y, x = np.meshgrid(axis, axis, indexing="ij")
    dy, dx = y - placement.centre_y, x - placement.centre_x
    if placement.shape == "circle":
        return dy**2 + dx**2 <= placement.radius**2
    cos_a, sin_a = np.cos(placement.angle), np.sin(placement.angle)
    u = (dx * cos_a + dy * sin_a) / placement.radius
    v = (dy * cos_a - dx * sin_a) / placement.radius
    return synthetic_drawing._SHAPE_MASKS[placement.shape](u.astype(np.float32), v.astype(np.float32))


def test_later_objects_occlude_earlier_ones():
    size = 64
    occluded_objects = 0
    for seed in range(120):
        _, labels, placements, _ = synthetic._render(synthetic._rng(seed, synthetic._IMAGE_STREAM), size)
        assert tuple((p.shape, p.colour) for p in placements) == generate_scene(seed).objects
        painted = np.zeros((size, size), dtype=np.uint8)
        for placement in placements:
            full = _full_mask(placement, size)
            painted[full] = SHAPES.index(placement.shape) + 1
        # Painting back to front reproduces the label map exactly (up to float
        # rounding on a boundary pixel of a circle).
        assert np.count_nonzero(painted != labels) <= 2
        for index, placement in enumerate(placements):
            full = _full_mask(placement, size)
            later = np.zeros_like(full)
            for other in placements[index + 1 :]:
                later |= _full_mask(other, size)
            if np.any(full & later):
                occluded_objects += 1
            # Frame and later objects leave a good part of every object visible.
            unclipped_area = np.count_nonzero(_full_mask(placement, size, pad=size))
            assert np.count_nonzero(full & ~later) >= 0.35 * unclipped_area
    assert occluded_objects >= 40


def test_objects_can_be_cut_by_the_frame(scenes):
    touching = sum(
        1
        for scene in scenes
        if np.any(scene.labels[0]) or np.any(scene.labels[-1]) or np.any(scene.labels[:, 0]) or np.any(scene.labels[:, -1])
    )
    assert touching >= NUM_SCENES // 10


def test_generation_speed():
    start = time.perf_counter()
    for seed in range(200):
        generate_scene(seed)
    # 200 scenes take about 0.2 s on one core; the bound leaves room for a busy machine.
    assert time.perf_counter() - start < 2.0


def test_scene_set_is_a_sequence():
    scenes = SyntheticScenes(5, seed=EVAL_SEED_BASE + 10)
    assert len(scenes) == 5
    assert scenes.seeds == range(EVAL_SEED_BASE + 10, EVAL_SEED_BASE + 15)
    np.testing.assert_array_equal(scenes[2].image, generate_scene(EVAL_SEED_BASE + 12).image)
    assert scenes[-1].caption == generate_scene(EVAL_SEED_BASE + 14).caption
    assert [s.caption for s in scenes] == [generate_scene(s).caption for s in scenes.seeds]
    with pytest.raises(IndexError):
        scenes[5]
    with pytest.raises(IndexError):
        scenes[-6]
    assert SyntheticScenes(3, seed=TRAIN_SEED_BASE, size=32)[0].image.shape == (32, 32, 3)


def test_train_and_eval_seeds_are_disjoint():
    train = SyntheticScenes(EVAL_SEED_BASE - TRAIN_SEED_BASE, seed=TRAIN_SEED_BASE)
    evaluation = SyntheticScenes(500)
    assert train.split == "train" and evaluation.split == "eval"
    assert train.seeds[-1] < evaluation.seeds[0]
    assert train.seeds[-1] not in evaluation.seeds and evaluation.seeds[0] not in train.seeds
    assert parse_spec("synthetic")[1] >= EVAL_SEED_BASE
    with pytest.raises(InputError, match="straddle"):
        SyntheticScenes(10, seed=EVAL_SEED_BASE - 5)
    with pytest.raises(InputError, match="straddle"):
        parse_spec(f"synthetic:10:{EVAL_SEED_BASE - 5}")
    # Neighbouring seeds on both sides of the boundary give unrelated scenes.
    assert generate_scene(EVAL_SEED_BASE - 1).image.tobytes() != generate_scene(EVAL_SEED_BASE).image.tobytes()


@pytest.mark.parametrize(
    "spec, expected",
    [
        ("synthetic", (500, EVAL_SEED_BASE)),
        ("synthetic:50", (50, EVAL_SEED_BASE)),
        ("synthetic:7:123", (7, 123)),
        (f"synthetic:20:{EVAL_SEED_BASE + 5}", (20, EVAL_SEED_BASE + 5)),
    ],
)
def test_parse_spec(spec, expected):
    assert parse_spec(spec) == expected


@pytest.mark.parametrize(
    "spec",
    ["", "voc", "synthetic:", "synthetic:0", "synthetic:-3", "synthetic:x", "synthetic:5:",
     "synthetic:5:-1", "synthetic:5:1:2", "synthetic:²", "synth:5", "synthetic:1.5"],
)
def test_parse_spec_rejects_malformed(spec):
    with pytest.raises(InputError):
        parse_spec(spec)


def test_bad_arguments():
    with pytest.raises(InputError):
        generate_scene(-1)
    with pytest.raises(InputError):
        generate_scene(0, size=8)
    with pytest.raises(TypeError):
        generate_scene(1.5)
    with pytest.raises(TypeError):
        generate_scene(0, size="64")
    with pytest.raises(InputError):
        generate_scene(0, caption_seed=-2)
    with pytest.raises(InputError):
        SyntheticScenes(0)


def test_class_names_and_eval_prompts():
    names = class_names()
    assert names == ["background", *SHAPES]
    prompts = eval_prompts()
    assert list(prompts) == names
    assert len(prompts["background"]) == len(BACKGROUNDS)
    for background, prompt in zip(BACKGROUNDS, prompts["background"]):
        assert any(word in prompt for word in re.findall(r"\w+", " ".join(BACKGROUND_PHRASES[background])) if len(word) > 3)
    assert prompts["circle"] == ["a circle"]
    assert all(len(prompts[shape]) == 1 for shape in SHAPES)
    custom = eval_prompts(("{article} {shape}", "a photo of {article} {shape}"))
    assert custom["star"] == ["a star", "a photo of a star"]
    with pytest.raises(InputError):
        eval_prompts(())
    with pytest.raises(InputError):
        eval_prompts(("a photo",))
    with pytest.raises(InputError):
        eval_prompts(("{shape} {colour}",))


# --------------------------------------------------------------------------------------
# Fill patterns
# --------------------------------------------------------------------------------------

PATTERN_WORDS = ("plain", "check", "stripe", "strip", "dot", "speck", "grid", "pattern", "line")


def _expected_dark_64(pattern):
    """Where each pattern shows its dark tone on a 64-pixel scene (2 pixels per pattern
    unit), from integer pixel indices; None for the speckle, which is random."""
    y, x = np.meshgrid(np.arange(64), np.arange(64), indexing="ij")
    if pattern == "plain":
        return np.zeros((64, 64), dtype=bool)
    if pattern == "checked":
        # 2 x 2-pixel cells, alternating.
        return (y // 2 + x // 2) % 2 == 1
    if pattern == "striped":
        # Diagonal bands: x + y (in pixels) runs through a 6-pixel period, dark first half.
        return (x + y + 1) % 6 < 3
    if pattern == "dotted":
        # A dot of 12 pixels (4 x 4 less its corners) in every 6 x 6 cell.
        cy, cx = y % 6, x % 6
        inside = (cy >= 1) & (cy <= 4) & (cx >= 1) & (cx <= 4)
        corner = ((cy == 1) | (cy == 4)) & ((cx == 1) | (cx == 4))
        return inside & ~corner
    if pattern == "grid-lined":
        # 2-pixel lines every 6 pixels, both directions.
        return (y % 6 < 2) | (x % 6 < 2)
    return None


def _dark_pixels(scene):
    """bool [H, W]: object pixels drawn in their object's dark tone."""
    dark = np.zeros(scene.labels.shape, dtype=bool)
    for shape, colour in scene.objects:
        region = scene.labels == SHAPES.index(shape) + 1
        dark |= region & np.all(scene.image == _dark(COLOURS[colour]), axis=-1)
    return dark


def test_every_shape_class_has_its_own_pattern():
    assert set(SHAPE_PATTERNS) == set(SHAPES)
    assert len(set(SHAPE_PATTERNS.values())) == len(SHAPES)


def test_patterns_match_their_definition(scenes):
    seen = Counter()
    for scene in scenes:
        dark = _dark_pixels(scene)
        for shape in {s for s, _ in scene.objects}:
            region = scene.labels == SHAPES.index(shape) + 1
            expected = _expected_dark_64(SHAPE_PATTERNS[shape])
            if expected is None:
                # Speckle: constant on 2 x 2-pixel cells, about half of them dark.
                cells = dark.reshape(32, 2, 32, 2).transpose(0, 2, 1, 3).reshape(32, 32, 4)
                inside = region.reshape(32, 2, 32, 2).transpose(0, 2, 1, 3).reshape(32, 32, 4).all(-1)
                assert np.all(cells[inside] == cells[inside][:, :1])
                continue
            np.testing.assert_array_equal(dark[region], expected[region], err_msg=f"{shape} {scene.caption}")
            seen[shape] += 1
    assert set(seen) == set(SHAPES) - {"cross"}


def test_speckle_is_random_and_fixed_by_the_seed(scenes):
    fractions, patterns = [], set()
    for scene in scenes:
        region = scene.labels == SHAPES.index("cross") + 1
        if region.sum() >= 100:
            dark = _dark_pixels(scene)
            fractions.append(dark[region].mean())
            patterns.add(dark[region].tobytes())
    assert len(fractions) >= 10 and len(patterns) == len(fractions)
    assert 0.35 < np.mean(fractions) < 0.65
    seed = next(i for i, s in enumerate(scenes) if ("cross" in {o for o, _ in s.objects}))
    np.testing.assert_array_equal(generate_scene(seed).image, scenes[seed].image)


def test_patterns_scale_with_the_image():
    # A pattern unit is 2 pixels at 64 and 4 at 128: an axis-aligned pattern (checks,
    # grid lines) at 128 pixels is the 64-pixel one enlarged twice, wherever both scenes
    # label the same object.
    checked = 0
    for seed in range(60):
        small, large = generate_scene(seed, 64), generate_scene(seed, 128)
        if small.objects != large.objects:
            continue
        dark_small, dark_large = _dark_pixels(small), _dark_pixels(large)
        for shape in {s for s, _ in small.objects} & {"square", "ring"}:
            index = SHAPES.index(shape) + 1
            both = (small.labels.repeat(2, 0).repeat(2, 1) == index) & (large.labels == index)
            np.testing.assert_array_equal(dark_large[both], dark_small.repeat(2, 0).repeat(2, 1)[both])
            checked += 1
    assert checked >= 20


def test_styles_share_layout_labels_and_caption(scenes, plain_scenes):
    for patterned, plain in zip(scenes, plain_scenes):
        np.testing.assert_array_equal(patterned.labels, plain.labels)
        assert patterned.objects == plain.objects and patterned.caption == plain.caption
        assert patterned.background == plain.background
        background = patterned.labels == 0
        np.testing.assert_array_equal(patterned.image[background], plain.image[background])
        # Plain scenes have no dark tones; patterned ones do, except where only circles show.
        assert not _dark_pixels(plain).any()
        if {s for s, _ in patterned.objects} - {"circle"}:
            assert _dark_pixels(patterned).any()


def test_captions_never_name_the_pattern(scenes):
    for scene in scenes:
        # The striped background's phrases ("a pattern of stripes") name the background.
        rest = scene.caption
        for phrase in sorted(BACKGROUND_PHRASES[scene.background], key=len, reverse=True):
            rest = rest.replace(phrase, " ")
        for word in re.findall(r"[a-z]+", rest):
            assert not word.startswith(PATTERN_WORDS), scene.caption


def test_style_is_checked_and_kept():
    with pytest.raises(InputError):
        generate_scene(0, style="dotted")
    with pytest.raises(InputError):
        SyntheticScenes(3, style="flat")
    scenes = SyntheticScenes(3, seed=EVAL_SEED_BASE, style="plain")
    assert scenes.style == "plain" and scenes[0].style == "plain"
    np.testing.assert_array_equal(scenes[1].image, generate_scene(EVAL_SEED_BASE + 1, style="plain").image)


@pytest.mark.parametrize(
    "spec, expected",
    [
        ("synthetic", (500, EVAL_SEED_BASE, "patterned")),
        ("synthetic:30:77", (30, 77, "patterned")),
        ("synthetic-plain", (500, EVAL_SEED_BASE, "plain")),
        ("synthetic-plain:40", (40, EVAL_SEED_BASE, "plain")),
    ],
)
def test_parse_dataset_spec(spec, expected):
    assert parse_dataset_spec(spec) == expected
    assert parse_spec(spec) == expected[:2]


@pytest.mark.parametrize("spec", ["synthetic-plan", "synthetic-plain:", "plain:5", "synthetic-plain:0"])
def test_parse_dataset_spec_rejects_malformed(spec):
    with pytest.raises(InputError):
        parse_dataset_spec(spec)
