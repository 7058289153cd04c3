"""The shipped model: loads offline, scores what it is recorded to score, drives the demo."""

from __future__ import annotations

import socket

import numpy as np
import pytest
from PIL import Image

import clippy_rt
import clippy_rt.demo as demo
from clippy_rt.datasets.synthetic import EVAL_SEED_BASE, class_names
from clippy_rt.errors import InputError, ModelDirError
from clippy_rt.evaluate import evaluate, synthetic_set


@pytest.fixture()
def offline(monkeypatch):
    """Any attempt to open a network socket fails."""
    def refuse(*args, **kwargs):
        raise OSError("network access is disabled in this test")

    monkeypatch.setattr(socket, "socket", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def test_shipped_model_loads_offline_and_scores_its_recorded_figure(offline):
    record = demo.demo_results()["test_set"]
    # Training draws seeds below EVAL_SEED_BASE only: these scenes were never seen.
    assert record["seed"] >= EVAL_SEED_BASE
    engine = clippy_rt.load("demo")
    assert engine.config.image.pooling == "max"
    assert not engine.random_weights
    result = evaluate(engine, synthetic_set(record["n"], record["seed"]), batch_size=25)
    assert result.num_images == record["n"] == 50
    # The same images through the same engine: only library/CPU rounding may move it.
    assert result.miou == pytest.approx(record["miou"], abs=0.02)
    assert result.pixel_accuracy == pytest.approx(record["pixel_accuracy"], abs=0.02)


def test_shipped_model_is_small_and_complete():
    folder = demo.demo_model_dir()
    total = sum(path.stat().st_size for path in folder.iterdir())
    assert total <= 15 * 2**20
    results = demo.demo_results()
    assert results["eval_500"]["n"] == 500
    assert 0.0 <= results["eval_500"]["miou"] <= 1.0


def test_demo_writes_labels_overlays_and_figures(tmp_path):
    examples = demo.example_images()[:2]
    written = demo.run_demo(tmp_path / "out", examples)
    assert written[-1].name == "demo.png"
    assert len(written) == 3 * len(examples) + 1
    for path in examples:
        labels = np.asarray(Image.open(tmp_path / "out" / f"{path.stem}.labels.png"))
        size = Image.open(path).size
        assert labels.shape == (size[1], size[0])
        assert labels.max() < len(class_names())
        figure = Image.open(tmp_path / "out" / f"{path.stem}.figure.png")
        # Three enlarged panels side by side (the overlay's legend makes it wider).
        assert figure.width > 3 * demo.FIGURE_SCALE * size[0]
        assert figure.height >= demo.FIGURE_SCALE * size[1]


def test_demo_main_reports_errors_in_one_line(tmp_path, capsys):
    missing = tmp_path / "missing.png"
    assert demo.main(["--out", str(tmp_path / "out"), "--images", str(missing)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "missing.png" in err[0]


def test_missing_model_files_raise_a_clear_error(tmp_path, monkeypatch):
    from clippy_rt.formats import model_dir

    monkeypatch.setattr(model_dir, "DEMO_DIR", tmp_path)
    with pytest.raises(ModelDirError, match="demo model is missing"):
        demo.demo_model_dir()
    with pytest.raises(ModelDirError):
        clippy_rt.load("demo")


def test_figure_rejects_bad_scale():
    with pytest.raises(InputError):
        demo.figure(Image.new("RGB", (8, 8)), np.zeros((8, 8), dtype=np.int64), ["a"], scale=0)
