"""`clippy-rt eval`'s agreement figure against label maps computed here, with torch float32
engines the test loads itself."""

from __future__ import annotations

import json

import numpy as np
import pytest

import clippy_rt
from clippy_rt.cli.main import main as cli
from clippy_rt.evaluate import open_dataset

DATASET = "synthetic:3"


def _agreement(engine, reference) -> float:
    eval_set = open_dataset(DATASET)
    same = total = 0
    for image, _ in eval_set.samples:
        labels = engine.segment(image, eval_set.prompts, template="{}").labels.numpy()
        expected = reference.segment(image, eval_set.prompts, template="{}").labels.numpy()
        same += int((labels == expected).sum())
        total += labels.size
    return same / total


def _eval(capsys, *args) -> dict:
    assert cli(["eval", *map(str, args), "--dataset", DATASET, "--json", "--no-progress"]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.fixture(scope="module")
def other_model_dir(tmp_path_factory):
    """A second tiny model with other random weights: it disagrees with the first."""
    from clippy_rt.formats.random_init import random_init

    out = tmp_path_factory.mktemp("other") / "tiny-seed-1"
    random_init("tiny", out, seed=1)
    return out


def test_agreement_is_with_the_reference_model(tiny_model_dir, other_model_dir, capsys):
    result = _eval(capsys, tiny_model_dir, "--precision", "bf16", "--reference", other_model_dir)
    expected = _agreement(clippy_rt.load(tiny_model_dir, precision="bf16"), clippy_rt.load(other_model_dir))
    assert expected < 0.9  # different weights: far from a comparison of the engine with itself
    assert result["agreement_with_torch_fp32"] == pytest.approx(expected, abs=1e-12)


def test_agreement_of_bf16_with_torch_fp32(tiny_model_dir, capsys):
    result = _eval(capsys, tiny_model_dir, "--precision", "bf16")
    expected = _agreement(clippy_rt.load(tiny_model_dir, precision="bf16"), clippy_rt.load(tiny_model_dir))
    assert expected < 1.0  # bf16 rounding flips some pixels of the random model
    assert result["agreement_with_torch_fp32"] == pytest.approx(expected, abs=1e-12)


def test_agreement_of_onnx_fp16_with_its_source_model(tiny_onnx_dir, tiny_model_dir, capsys):
    result = _eval(capsys, tiny_onnx_dir, "--backend", "onnxruntime", "--precision", "fp16")
    engine = clippy_rt.load(tiny_onnx_dir, backend="onnxruntime", precision="fp16")
    expected = _agreement(engine, clippy_rt.load(tiny_model_dir))
    assert result["agreement_with_torch_fp32"] == pytest.approx(expected, abs=1e-12)
    assert np.isfinite(result["miou"])
