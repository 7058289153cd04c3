"""Classification with synonyms: a class's logit is the max over its prompts, so its
probability is the best of its prompts' flat probabilities, renormalised over the classes:

    p(c) = exp(max_j l_j) / sum_c' exp(max_j' l_j') = max_j p_j / sum_c' max_j' p_j'

(``p_j``: the probabilities of the prompts classified as a flat list). Checked on the Python
API and on the server's classify path, for classes whose prompts are not listed in order."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image

import clippy_rt

# Classes of one, two and three prompts; the synonyms of a class are not adjacent in the flat
# list, and no class's first prompt is its best on every image.
CLASSES = {"wall": ["a brick wall", "a wall"], "floor": ["the floor"],
           "person": ["a person", "a pedestrian", "someone walking"], "sky": ["the sky", "clouds"]}
FLAT = ["a wall", "the floor", "someone walking", "clouds", "a brick wall", "a person", "the sky", "a pedestrian"]


@pytest.fixture(scope="module")
def engine(tiny_model_dir):
    return clippy_rt.load(tiny_model_dir)


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(21)
    return [rng.integers(0, 256, (40, 56, 3), dtype=np.uint8) for _ in range(4)]


def _expected(flat_result):
    """Class probabilities from one image's flat-prompt probabilities."""
    flat = dict(flat_result)
    best = {name: max(flat[p] for p in prompts) for name, prompts in CLASSES.items()}
    total = sum(best.values())
    return {name: value / total for name, value in best.items()}


def _check(got, flat_result, top_k):
    expected = _expected(flat_result)
    order = sorted(expected, key=lambda name: -expected[name])[:top_k]
    assert [name for name, _ in got] == order
    for name, probability in got:
        assert probability == pytest.approx(expected[name], abs=1e-5)


def test_engine_classify_takes_the_max_over_synonyms(engine, images):
    assert sorted(FLAT) == sorted(p for prompts in CLASSES.values() for p in prompts)
    flat = engine.classify(images, FLAT, top_k=len(FLAT))
    # The flat probabilities differ enough that the max (not the mean or first) decides.
    assert any(len({round(dict(r)[p], 6) for p in CLASSES["person"]}) == 3 for r in flat)
    for top_k in (len(CLASSES), 2):
        for got, flat_result in zip(engine.classify(images, CLASSES, top_k=top_k), flat):
            _check(got, flat_result, top_k)


def test_the_server_classifies_synonyms_the_same_way(engine, images):
    from clippy_rt.serve.replica import Replica

    replica = Replica(engine)
    requests = []
    for image in images:
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="PNG")
        requests.append(replica.parse("classify", {"image": base64.b64encode(buffer.getvalue()).decode(),
                                                   "labels": CLASSES, "top_k": 4}))
    flat = engine.classify(images, FLAT, top_k=len(FLAT))
    for (status, body), flat_result in zip(replica.run_batch(requests), flat):
        assert status == 200
        _check([tuple(item) for item in body["labels"]], flat_result, 4)
