"""The model's prompt template is applied by default, everywhere a prompt enters: the engine
(segment, classify, stream), the text cache, the server's three request kinds and the
robotics frame processor. ``template="{}"`` keeps prompts verbatim and a built PromptSet is
used as it is. The expected texts are written out by hand from the rule in docs/MODEL.md
("a photo of {article} {}", "an" before a vowel), the tiny model's template."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import clippy_rt
from clippy_rt.errors import InputError
from clippy_rt.prompts import build_prompt_set
from clippy_rt.serve import frames as binary
from clippy_rt.serve import protocol, session

TEMPLATE = "a photo of {article} {}"  # what random-init writes, as convert does


@pytest.fixture(scope="module")
def engine(tiny_model_dir):
    return clippy_rt.load(tiny_model_dir)


@pytest.fixture()
def recorded(engine, monkeypatch):
    """Every prompt text the engine encodes (after the text cache), in order."""
    seen = []
    original = engine.encode_text

    def recording(prompts):
        seen.extend(prompts)
        return original(prompts)

    monkeypatch.setattr(engine, "encode_text", recording)
    return seen


def _frame(seed=0):
    return np.random.default_rng(seed).integers(0, 256, (24, 40, 3), dtype=np.uint8)


def test_the_engine_knows_its_template(engine):
    assert engine.template == TEMPLATE == engine.config.prompt_template


@pytest.mark.parametrize("prompts, texts", [
    (["cat", "owl"], ("a photo of a cat", "a photo of an owl")),
    ({"bird": ["owl", "eagle"], "cat": ["cat"]}, ("a photo of an owl", "a photo of an eagle", "a photo of a cat")),
])
def test_prompt_set_fills_lists_and_mappings_into_the_models_template(engine, prompts, texts):
    assert engine.prompt_set(prompts).prompts == texts
    assert engine.prompt_set(prompts, template="{}").prompts == tuple(
        p for ps in (prompts.values() if isinstance(prompts, dict) else [[p] for p in prompts]) for p in ps)
    assert engine.prompt_set(prompts, template="an image of {}").prompts == tuple(
        t.replace("a photo of a ", "an image of ").replace("a photo of an ", "an image of ") for t in texts)


def test_a_built_prompt_set_is_used_as_built_unless_a_template_is_given(engine):
    built = build_prompt_set(["a photo of a cat"])
    assert engine.prompt_set(built) is built
    assert engine.prompt_set(built, template="{} here").prompts == ("a photo of a cat here",)


def test_a_bad_template_is_an_input_error(engine):
    for bad in ("", "no placeholder", 5):
        with pytest.raises(InputError):
            engine.segment(_frame(), ["cat"], template=bad)


@pytest.mark.parametrize("call", ["segment", "classify", "stream"])
def test_every_engine_entry_encodes_the_filled_in_texts(engine, recorded, call):
    engine.clear_text_cache()
    run = {"segment": lambda **kw: engine.segment(_frame(), ["cat", "owl"], **kw),
           "classify": lambda **kw: engine.classify(_frame(), ["cat", "owl"], **kw),
           "stream": lambda **kw: engine.stream(["cat", "owl"], **kw)(_frame())}[call]
    first = run()
    assert recorded == ["a photo of a cat", "a photo of an owl"]
    recorded.clear()
    engine.clear_text_cache()
    verbatim = run(template="{}")
    assert recorded == ["cat", "owl"]
    if call != "classify":
        assert first.prompts == verbatim.prompts == ("cat", "owl")  # class names stay as given


def test_the_text_cache_keys_on_the_filled_in_text(engine):
    engine.clear_text_cache()
    engine.segment(_frame(), ["cat"])
    assert set(engine.text_cache.get(["a photo of a cat", "cat"])) == {"a photo of a cat"}
    engine.segment(_frame(), ["cat"], template="{}")
    assert set(engine.text_cache.get(["a photo of a cat", "cat"])) == {"a photo of a cat", "cat"}


def test_segment_with_the_default_equals_segment_with_the_texts_verbatim(engine):
    frame = _frame(2)
    default = engine.segment(frame, {"bird": ["owl", "eagle"], "cat": ["cat"]})
    written = engine.segment(frame, {"bird": ["a photo of an owl", "a photo of an eagle"],
                                     "cat": ["a photo of a cat"]}, template="{}")
    assert torch.equal(default.labels, written.labels)
    torch.testing.assert_close(default.scores, written.scores, rtol=0, atol=0)


# -- the server ------------------------------------------------------------------------------

def _png() -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(_frame()).save(buffer, format="PNG")
    return buffer.getvalue()


def _json_body(**extra):
    import base64

    return dict({"image": base64.b64encode(_png()).decode(), "prompts": ["cat", "owl"]}, **extra)


def _binary_body(**extra):
    data = _png()
    head = json.dumps(dict({"prompts": ["cat", "owl"], "frames": [{"format": "png", "bytes": len(data)}]},
                           **extra)).encode()
    return len(head), head + data


PARSERS = {
    "json segment": lambda extra, model: protocol.parse_segment(_json_body(**extra), 8, model_template=model).prompts,
    "json classify": lambda extra, model: protocol.parse_classify(
        dict({k: v for k, v in _json_body(**extra).items() if k != "prompts"}, labels=["cat", "owl"]), 8,
        model_template=model).labels,
    "binary": lambda extra, model: binary.parse_frames(*_binary_body(**extra), 8, model_template=model).prompts,
    "session": lambda extra, model: session.parse_setup(json.dumps(dict({"prompts": ["cat", "owl"]}, **extra)), 8,
                                                        model).prompts,
}


@pytest.mark.parametrize("kind", sorted(PARSERS))
def test_requests_without_a_template_get_the_models(kind):
    parse = PARSERS[kind]
    assert parse({}, TEMPLATE).prompts == ("a photo of a cat", "a photo of an owl")
    assert parse({"template": "{}"}, TEMPLATE).prompts == ("cat", "owl")
    assert parse({"template": "the {}"}, TEMPLATE).prompts == ("the cat", "the owl")
    assert parse({"template": None}, TEMPLATE).prompts == ("a photo of a cat", "a photo of an owl")
    with pytest.raises(protocol.RequestError) as caught:
        parse({"template": ""}, TEMPLATE)
    assert caught.value.status == 400


def test_the_replica_parses_with_its_engines_template(engine):
    from clippy_rt.serve.replica import Replica

    replica = Replica(engine)
    assert replica.template == TEMPLATE
    request = replica.parse("segment", _json_body())
    assert request.prompts.prompts == ("a photo of a cat", "a photo of an owl")
    classify = {"image": _json_body()["image"], "labels": ["owl"]}
    assert replica.parse("classify", classify).labels.prompts == ("a photo of an owl",)
    assert replica.parse_binary(*_binary_body()).prompts.prompts == ("a photo of a cat", "a photo of an owl")


# -- robotics -----------------------------------------------------------------------------------

def test_the_frame_processor_uses_the_models_template_and_records_it(engine):
    from clippy_rt.robotics.processor import FrameProcessor

    processor = FrameProcessor(engine, "bird=owl|eagle,cat")
    assert processor.prompt_set.prompts == ("a photo of an owl", "a photo of an eagle", "a photo of a cat")
    assert processor.provenance()["template"] == TEMPLATE
    processor.set_prompts("dog")
    assert processor.prompt_set.prompts == ("a photo of a dog",)
    verbatim = FrameProcessor(engine, "bird=owl|eagle,cat", template="{}")
    assert verbatim.prompt_set.prompts == ("owl", "eagle", "cat")
    frame = _frame(3)
    got = FrameProcessor(engine, "owl,cat").process([frame])[0].labels
    want = engine.segment(frame, ["a photo of an owl", "a photo of a cat"], template="{}").labels
    assert torch.equal(got, want)


def test_the_node_leaves_an_empty_template_to_the_model():
    from clippy_rt.robotics.node import NodeSettings

    settings = NodeSettings.from_parameters({"model": "demo", "prompts": "cat,owl", "template": ""})
    assert settings.template is None
    assert NodeSettings.from_parameters({"model": "demo", "prompts": "cat", "template": "{}"}).template == "{}"
