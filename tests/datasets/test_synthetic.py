import re
import time
from collections import Counter

import numpy as np
import pytest

from clippy_rt.datasets import synthetic
from clippy_rt.datasets.synthetic import (
    BACKGROUND_PHRASES,
    BACKGROUNDS,
    COLOURS,
    EVAL_SEED_BASE,
    SHAPES,
    TRAIN_SEED_BASE,
    SyntheticScenes,
    class_names,
    eval_prompts,
    generate_scene,
    parse_spec,
)
from clippy_rt.errors import InputError

NUM_SCENES = 200


@pytest.fixture(scope="module")
def scenes():
    return [generate_scene(seed) for seed in range(NUM_SCENES)]


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


def test_labels_are_the_drawn_pixels(scenes):
    colour_of = {name: np.array(rgb, dtype=np.uint8) for name, rgb in COLOURS.items()}
    for scene in scenes:
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
            # Every pixel labelled with a shape has the colour of an object of that shape.
            assert np.all(matches[region])
        # Background pixels never carry an object colour exactly.
        background = image[labels == 0]
        for rgb in colour_of.values():
            assert not np.any(np.all(background == rgb, axis=-1))
        # Every object keeps a visible part of at least 0.4% of the image.
        for shape, colour in set(scene.objects):
            visible = (labels == SHAPES.index(shape) + 1) & np.all(image == colour_of[colour], axis=-1)
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
    return synthetic._SHAPE_MASKS[placement.shape](u.astype(np.float32), v.astype(np.float32))


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
