"""Prompt sets: the flat list, class ownership, templates (on lists, mappings and prompt
sets), the messages of refusals, and class logits as the max over each class's prompts."""

from __future__ import annotations

import pytest
import torch

from clippy_rt.errors import InputError
from clippy_rt.prompts import build_prompt_set, check_template, class_logits, parse_cli_prompts


def test_a_mapping_flattens_in_order_with_owners():
    prompt_set = build_prompt_set({"wall": ["a wall", " brick wall "], "floor": "the floor", "sky": ["sky"]})
    assert prompt_set.classes == ("wall", "floor", "sky")
    assert prompt_set.prompts == ("a wall", "brick wall", "the floor", "sky")
    assert prompt_set.prompt_class == (0, 0, 1, 2)
    assert prompt_set.has_synonyms
    assert prompt_set.class_index().tolist() == [0, 0, 1, 2] and prompt_set.class_index().dtype == torch.long
    assert prompt_set.class_map(6).tolist() == [0, 0, 1, 2, 0, 0]
    assert not build_prompt_set(["a", "b"]).has_synonyms


def test_a_template_fills_lists_mappings_and_prompt_sets():
    template = "a photo of {article} {}"
    assert build_prompt_set(["owl", "cat"], template).prompts == ("a photo of an owl", "a photo of a cat")
    base = parse_cli_prompts("wall|brick wall,egg")
    filled = build_prompt_set(base, template)
    assert filled.classes == ("wall", "egg") and filled.prompt_class == (0, 0, 1)
    assert filled.prompts == ("a photo of a wall", "a photo of a brick wall", "a photo of an egg")
    assert build_prompt_set(base) is base


@pytest.mark.parametrize("template, match", [
    (3, "template must be a string holding '{}', got int"),
    ("a photo", "template 'a photo' has no '{}'"),
])
def test_bad_templates_are_refused_everywhere(template, match):
    with pytest.raises(InputError, match=match):
        check_template(template)
    for prompts in (["a"], {"a": ["b"]}, parse_cli_prompts("a,b")):
        with pytest.raises(InputError, match=match):
            build_prompt_set(prompts, template)


@pytest.mark.parametrize("prompts, match", [
    ("cat", "got one string; wrap it in a list"),
    (5, "prompts must be a list of strings, got int"),
    ([], "the prompt list is empty"),
    (["a", " "], "prompt 1 is empty"),
    (["a", 3], "prompt 1 must be a string, got int"),
    ({"": ["a"]}, "class name is empty"),
    ({"a": []}, "class 'a' has no prompts"),
    ({"a": ["x", 2]}, "prompt for class 'a' must be a string, got int"),
    ({"a": ["x"], "b": ["x"]}, "prompt 'x' is in classes 'a' and 'b'"),
    (["a", "a"], "duplicate class 'a'"),
])
def test_refusals_say_what_is_wrong(prompts, match):
    with pytest.raises(InputError, match=match):
        build_prompt_set(prompts)


def test_class_logits_are_the_max_over_each_class():
    prompt_set = build_prompt_set({"b": ["p0", "p3"], "a": ["p1"], "c": ["p2", "p4", "p5"]})
    order = {"p0": 0, "p3": 1, "p1": 2, "p2": 3, "p4": 4, "p5": 5}
    raw = torch.tensor([[0.1, 0.9, -1.0, 0.3, 0.2, 0.25], [-3.0, -2.0, -5.0, -4.0, -1.0, -7.0]])
    logits = raw[:, [order[p] for p in prompt_set.prompts]]
    expected = torch.tensor([[0.9, -1.0, 0.3], [-2.0, -5.0, -1.0]])
    torch.testing.assert_close(class_logits(logits, prompt_set), expected, rtol=0, atol=0)
    flat = build_prompt_set(["x", "y"])
    torch.testing.assert_close(class_logits(raw[:, :2], flat), raw[:, :2], rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_class_logits_keep_the_dtype_and_any_leading_shape(dtype):
    prompt_set = build_prompt_set({"a": ["p0", "p1"], "b": ["p2"]})
    logits = torch.tensor([[[1.0, 3.0, 2.0], [4.0, -1.0, 5.0]], [[0.5, 0.25, 0.75], [-2.0, -3.0, -1.0]]],
                          dtype=dtype)  # [B=2, pixels=2, prompts=3]
    out = class_logits(logits, prompt_set)
    assert out.dtype == dtype and out.shape == (2, 2, 2)
    expected = torch.tensor([[[3.0, 2.0], [4.0, 5.0]], [[0.5, 0.75], [-2.0, -1.0]]], dtype=dtype)
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
