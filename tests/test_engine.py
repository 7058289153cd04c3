"""The Engine API on the tiny model: shapes, caching, segmentation against the reference procedure."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import clippy_rt
from clippy_rt.errors import BackendUnavailableError, InputError


@pytest.fixture(scope="module")
def engine(tiny_model_dir):
    return clippy_rt.load(tiny_model_dir)


def _reference_procedure(patch, text, out_size):
    """docs/MODEL.md: upsample all D channels, then the dot product, then argmax."""
    features = patch.permute(0, 3, 1, 2)
    upsampled = F.interpolate(features, size=out_size, mode="bilinear", align_corners=False)
    logits = torch.einsum("bdhw,kd->bkhw", upsampled, text)
    return logits


def _top2_gap(logits):
    top2 = logits.topk(2, dim=1).values
    return top2[:, 0] - top2[:, 1]


def test_encode_image_shapes_and_norms(engine):
    pixels = torch.randn(3, 3, 32, 48)
    features = engine.encode_image(pixels)
    assert features.patch.shape == (3, 4, 6, engine.config.embed_dim)
    assert features.pooled.shape == (3, engine.config.embed_dim)
    torch.testing.assert_close(features.patch.norm(dim=-1), torch.ones(3, 4, 6))
    torch.testing.assert_close(features.pooled.norm(dim=-1), torch.ones(3))


def test_encode_text_is_cached_and_order_preserving(engine):
    engine.clear_text_cache()
    calls = []
    original = engine._text_forward

    def counting(ids, mask):
        calls.append(ids.shape[0])
        return original(ids, mask)

    engine._text_forward = counting
    try:
        first = engine.encode_text(["a cat", "a dog"])
        second = engine.encode_text(["a dog", "a bird", "a cat"])
    finally:
        del engine._text_forward
    assert calls == [2, 1]
    torch.testing.assert_close(second[0], first[1])
    torch.testing.assert_close(second[2], first[0])
    torch.testing.assert_close(second.norm(dim=-1), torch.ones(3))


@pytest.mark.parametrize("size", [(32, 32), (40, 24)])
def test_segment_matches_reference_procedure(engine, size):
    torch.manual_seed(0)
    pixels = torch.randn(1, 3, *size)
    prompts = ["red circle", "blue square", "owl", "green star", "grass"]
    # By default each prompt is filled into the model's template, "a photo of {article} {}".
    texts = ["a photo of a red circle", "a photo of a blue square", "a photo of an owl", "a photo of a green star",
             "a photo of a grass"]
    features = engine.encode_image(pixels)
    logits = _reference_procedure(features.patch, engine.encode_text(texts), size)
    result = engine.segment(pixels[0], prompts)  # one [3, H, W] tensor -> one Segmentation
    decided = _top2_gap(logits)[0] > 1e-5
    assert decided.float().mean() > 0.9
    assert torch.equal(result.labels[decided], logits.argmax(dim=1)[0][decided])
    torch.testing.assert_close(result.scores, logits.max(dim=1).values[0], atol=1e-5, rtol=0)


def test_postprocessing_at_odd_output_size(engine):
    from clippy_rt.kernels.seg_head import seg_head

    torch.manual_seed(2)
    features = engine.encode_image(torch.randn(2, 3, 24, 40))
    text = engine.encode_text(["one", "two", "three"])
    logits = _reference_procedure(features.patch, text, (57, 31))
    labels, scores = seg_head(features.patch, text, (57, 31), return_scores=True)
    decided = _top2_gap(logits) > 1e-5
    assert torch.equal(labels.long()[decided], logits.argmax(dim=1)[decided])
    torch.testing.assert_close(scores, logits.max(dim=1).values, atol=1e-5, rtol=0)


def test_segment_tensor_input_and_synonyms(engine):
    torch.manual_seed(1)
    pixels = torch.randn(2, 3, 32, 32)
    flat = ["sky", "wall", "cat", "dog"]
    result_flat = engine.segment(pixels, flat)
    result_syn = engine.segment(pixels, {"background": ["sky", "wall"], "cat": ["cat"], "dog": ["dog"]})
    assert isinstance(result_flat, list) and len(result_flat) == 2
    for a, b in zip(result_flat, result_syn):
        assert a.labels.shape == (32, 32) and a.labels.dtype == torch.uint8
        mapped = torch.tensor([0, 0, 1, 2], dtype=torch.uint8)[a.labels.long()]
        assert torch.equal(mapped, b.labels)
        torch.testing.assert_close(a.scores, b.scores)
        assert b.prompts == ("background", "cat", "dog")
        assert abs(sum(b.fractions().values()) - 1.0) < 1e-9


def test_segment_returns_labels_at_original_size(engine):
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 255, (45, 70, 3), dtype=np.uint8))
    for resize in ("squash", "letterbox"):
        result = engine.segment(image, ["a", "b", "c"], resize=resize)
        assert result.labels.shape == (45, 70)
        assert result.crop_box is None
    cropped = engine.segment(image, ["a", "b", "c"], resize="crop")
    top, left, height, width = cropped.crop_box
    # a square input keeps a square of the 45 x 70 image, the shorter side whole (not the
    # 32/49 * 70 = 45.7 columns the floored 32 x 49 resize would map back to)
    assert cropped.labels.shape == (height, width) == (45, 45)


def test_classify_probabilities(engine):
    rng = np.random.default_rng(1)
    image = rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)
    top = engine.classify(image, ["cat", "dog", "car"], top_k=2)
    assert [t[0] for t in top] != [] and len(top) == 2
    assert top[0][1] >= top[1][1]
    everything = engine.classify(image, ["cat", "dog", "car"], top_k=10)
    assert abs(sum(p for _, p in everything) - 1.0) < 1e-5
    # the probabilities follow docs/MODEL.md's formula
    pooled = engine.encode_image(image, resize="crop").pooled
    text = engine.encode_text(["a photo of a cat", "a photo of a dog", "a photo of a car"])  # the model's template
    probs = (np.exp(engine.logit_scale) * (pooled @ text.T)).softmax(-1)[0]
    assert dict(everything) == pytest.approx({n: float(p) for n, p in zip(["cat", "dog", "car"], probs)}, abs=1e-5)


@pytest.mark.parametrize("prompts,message", [
    ([], "empty"),
    (["cat", ""], "empty"),
    (["cat", "   "], "empty"),
    (["cat", "cat"], "duplicate class"),
    ("cat", "one string"),
])
def test_bad_prompts(engine, prompts, message):
    with pytest.raises(InputError, match=message):
        engine.segment(torch.randn(1, 3, 32, 32), prompts)


def test_very_long_prompt_is_truncated(engine):
    long_prompt = "a very long prompt about a red circle " * 200
    ids, mask = engine.tokenizer.encode([long_prompt])
    assert ids.shape[1] == engine.config.text.max_length
    assert ids[0, -1].item() == engine.config.text.eos_id
    embeds = engine.encode_text([long_prompt, "short"])
    assert torch.isfinite(embeds).all()


def test_bad_tensor_inputs(engine):
    with pytest.raises(InputError):
        engine.encode_image(torch.randn(1, 3, 30, 32))  # not a multiple of the patch
    with pytest.raises((InputError, TypeError)):
        engine.encode_image(torch.randn(1, 4, 32, 32))
    with pytest.raises(InputError, match="smaller than one"):
        engine.encode_image(np.zeros((5, 7, 3), np.uint8))


def test_cuda_on_a_cpu_machine(tiny_model_dir):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(BackendUnavailableError, match="CUDA is not available"):
        clippy_rt.load(tiny_model_dir, device="cuda")


def test_unknown_backend_and_precision(tiny_model_dir):
    with pytest.raises(InputError, match="unknown backend"):
        clippy_rt.load(tiny_model_dir, backend="tflite")
    with pytest.raises(InputError, match="precision"):
        clippy_rt.load(tiny_model_dir, precision="int3")


def test_batched_segment_equals_one_by_one(engine):
    rng = np.random.default_rng(3)
    images = [Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8))
              for shape in ((40, 40, 3), (30, 50, 3), (40, 40, 3))]
    prompts = ["red", "green", "blue", "noise"]
    together = engine.segment(images, prompts, resize="letterbox")
    for image, result in zip(images, together):
        alone = engine.segment(image, prompts, resize="letterbox")
        assert result.labels.shape == (image.size[1], image.size[0])
        assert torch.equal(result.labels, alone.labels)
        torch.testing.assert_close(result.scores, alone.scores)


def test_decode_with_padded_rows_and_a_class_map_equals_segment(engine):
    """What a captured stream does: text rows padded with copies of prompt 0 to a bucket and a
    class map over them. Labels must equal segment's, the padding never winning a pixel."""
    from clippy_rt.prompts import build_prompt_set

    rng = np.random.default_rng(11)
    frames = [rng.integers(0, 255, (40, 56, 3), dtype=np.uint8) for _ in range(2)]
    prompts = {"floor": ["floor", "ground"], "wall": ["wall"], "door": ["door", "gate", "exit"]}
    expected = engine.segment(frames, prompts, template="{}")
    prompt_set = build_prompt_set(prompts)
    text = engine.encode_text(list(prompt_set.prompts))
    padded = torch.cat([text, text[:1].expand(16 - text.shape[0], -1)])
    class_map = prompt_set.class_map(16)
    assert class_map.tolist() == [0, 0, 1, 2, 2, 2] + [0] * 10
    features = engine.encode_image(engine.prepare(frames), dtype=None)
    got = engine.decode(features, padded, prompt_set, class_map=class_map)
    for seg, ref in zip(got, expected):
        assert seg.labels.dtype == torch.uint8 and seg.prompts == ("floor", "wall", "door")
        assert torch.equal(seg.labels, ref.labels)
        torch.testing.assert_close(seg.scores, ref.scores)
    # The label stage alone: class indices on the text's device, in the class map's dtype.
    labels, scores = engine.label(features.patch[:1], padded, (40, 56), class_map=class_map)
    assert labels.shape == (1, 40, 56) and labels.dtype == torch.int64
    assert torch.equal(labels[0].to(torch.uint8), expected[0].labels)


def test_one_prompt_in_two_classes_is_refused(engine):
    from clippy_rt.prompts import build_prompt_set, parse_cli_prompts

    with pytest.raises(InputError, match="prompt 'square' is in classes 'circle' and 'square'"):
        parse_cli_prompts("circle|square,square")
    with pytest.raises(InputError, match="prompt 'a photo of a cat' is in classes 'cat' and 'kitty'"):
        build_prompt_set({"cat": ["cat"], "kitty": ["cat"]}, template="a photo of {article} {}")
    # The same text twice in one class is harmless (the max of equal logits).
    assert build_prompt_set({"cat": ["cat", "cat"], "dog": ["dog"]}).prompt_class == (0, 0, 1)
    with pytest.raises(InputError, match="could never win"):
        engine.segment(np.zeros((16, 16, 3), np.uint8), {"a": ["x", "y"], "b": ["y"]})


def test_cli_prompts_name_a_class_apart_from_its_prompts():
    from clippy_rt.prompts import parse_cli_prompts

    spec = parse_cli_prompts("background=a grassy background|a sky background, circle = a circle ,cat|kitty")
    assert spec.classes == ("background", "circle", "cat")
    assert spec.prompts == ("a grassy background", "a sky background", "a circle", "cat", "kitty")
    assert spec.prompt_class == (0, 0, 1, 2, 2)
    with pytest.raises(InputError, match="empty class name"):
        parse_cli_prompts("=a circle")
    with pytest.raises(InputError, match="duplicate class 'circle'"):
        parse_cli_prompts("circle=a circle,circle")
