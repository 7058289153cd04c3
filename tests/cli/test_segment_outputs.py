"""segment's outputs read back as a program would: sizes in every resize mode, the overlay
pixels, masks, --min-score and --classes, the JSON; Segmentation's numpy views."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

import clippy_rt
from clippy_rt.cli.main import main as cli
from clippy_rt.errors import InputError
from clippy_rt.visualize import palette

PROMPTS = ["red", "green", "blue"]


def _write_png(path, height, width, seed=0):
    rng = np.random.default_rng(seed)
    rgb = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(path)
    return rgb


def _read(path) -> np.ndarray:
    with Image.open(path) as image:
        return np.array(image)


@pytest.fixture(scope="module")
def engine(tiny_model_dir):
    return clippy_rt.load(tiny_model_dir)


@pytest.mark.parametrize("height, width, resize, crop", [
    # crop: the shorter side whole and a square (the tiny model's input is square)
    (480, 640, "crop", (480, 480)),
    (640, 480, "crop", (480, 480)),
    (48, 64, "crop", (48, 48)),
    (37, 53, "crop", (37, 37)),
    (37, 53, "squash", None),
    (37, 53, "letterbox", None),
    (480, 640, "letterbox", None),
])
def test_labels_overlay_and_json_sizes(tmp_path, tiny_model_dir, engine, capsys, height, width, resize, crop):
    rgb = _write_png(tmp_path / "in.png", height, width)
    out = tmp_path / "out"
    assert cli(["segment", str(tiny_model_dir), str(tmp_path / "in.png"), "--prompts", ",".join(PROMPTS),
                "--resize", resize, "--out", str(out), "--json"]) == 0
    item = json.loads(capsys.readouterr().out)["images"][0]
    labels = _read(out / "in.labels.png")
    expected = crop or (height, width)
    assert labels.shape == expected
    assert item["input_size"] == [height, width] and item["output_size"] == list(expected)
    overlay = _read(out / "in.overlay.png")
    assert overlay.shape == (height, width, 3)  # the input's size, no legend beside it
    if crop is None:
        assert item["crop_box"] is None
        top, left = 0, 0
    else:
        top, left, box_h, box_w = item["crop_box"]
        assert (box_h, box_w) == crop
        # Centred, up to one input pixel of rounding (the resized image's floored side and
        # the crop offset's round()), that is min(height, width) / input side original pixels.
        slack = min(height, width) / engine.config.image.image_size + 1
        assert abs(top - (height - box_h) / 2) <= slack and abs(left - (width - box_w) / 2) <= slack
    # The overlay read back: the covered pixels blended with their class's colour, the rest
    # of the image (outside a crop) as it was.
    colours = np.asarray(palette(len(PROMPTS)), dtype=np.float64)
    inside = np.zeros((height, width), dtype=bool)
    inside[top:top + expected[0], left:left + expected[1]] = True
    blended = 0.5 * rgb[inside].astype(np.float64) + 0.5 * colours[labels.reshape(-1)]
    assert np.abs(overlay[inside].astype(np.float64) - blended).max() <= 1
    np.testing.assert_array_equal(overlay[~inside], rgb[~inside])


def test_masks_min_score_and_classes(tmp_path, tiny_model_dir, engine, capsys):
    rgb = _write_png(tmp_path / "in.png", 40, 56, seed=3)
    reference = engine.segment(rgb, PROMPTS)
    scores = reference.scores.numpy()
    threshold = float(np.median(scores))
    out = tmp_path / "out"
    assert cli(["segment", str(tiny_model_dir), str(tmp_path / "in.png"), "--prompts", ",".join(PROMPTS),
                "--classes", "blue,red", "--min-score", str(threshold), "--save-masks",
                "--out", str(out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["classes"] == ["blue", "red", "unknown"]
    labels = _read(out / "in.labels.png")
    # Independently: blue -> 0, red -> 1, green or a score below the threshold -> 2.
    engine_labels = reference.labels.numpy()
    expected = np.select([scores < threshold, engine_labels == 2, engine_labels == 0], [2, 0, 1], default=2)
    np.testing.assert_array_equal(labels, expected)
    assert 0 < (labels == 2).mean() < 1
    masks = report["images"][0]["files"]["masks"]
    assert [p.rsplit("/", 1)[1] for p in masks] == ["in.mask-00-blue.png", "in.mask-01-red.png",
                                                    "in.mask-02-unknown.png"]
    for index, path in enumerate(masks):
        mask = _read(path)
        assert mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 255}
        np.testing.assert_array_equal(mask == 255, labels == index)
    fractions = report["images"][0]["fractions"]
    assert fractions == pytest.approx({name: float((labels == i).mean())
                                       for i, name in enumerate(report["classes"])})
    # The legend lists the three output classes in their overlay colours.
    legend = {tuple(int(v) for v in c) for c in _read(out / "legend.png").reshape(-1, 3)}
    assert set(palette(3)) <= legend


@pytest.mark.parametrize("argv, message", [
    (["--classes", "purple"], "'purple', not among the classes"),
    (["--classes", "red,red"], "twice"),
    (["--min-score", "nan"], "finite"),
    (["--save-masks"], "--save-masks goes with --out"),
])
def test_output_options_are_checked_before_the_model_loads(tmp_path, capsys, argv, message):
    _write_png(tmp_path / "in.png", 16, 16)
    # A model path that does not exist: the check must come first to name the option.
    assert cli(["segment", str(tmp_path / "no-model"), str(tmp_path / "in.png"), "--prompts", "red,green",
                *argv]) == 1
    assert message in capsys.readouterr().err


def test_unwritable_out_names_the_users_path(tmp_path, tiny_model_dir, capsys, monkeypatch):
    _write_png(tmp_path / "in.png", 16, 16)
    out = tmp_path / "out"
    out.mkdir()
    import clippy_rt.formats.atomic as atomic

    real_open = atomic.os.open

    def read_only(path, flags, *args):
        if str(path).startswith(str(out)) and flags & atomic.os.O_CREAT:
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, flags, *args)

    monkeypatch.setattr(atomic.os, "open", read_only)
    assert cli(["segment", str(tiny_model_dir), str(tmp_path / "in.png"), "--prompts", "red,green",
                "--out", str(out)]) == 1
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("clippy-rt segment: error: cannot write ") and str(out / "legend.png") in error
    assert ".tmp" not in error and "Permission denied" in error


def test_segmentation_numpy_masks_and_select(engine):
    rgb = np.random.default_rng(5).integers(0, 256, (24, 40, 3), dtype=np.uint8)
    seg = engine.segment(rgb, PROMPTS)
    labels, scores = seg.numpy()
    assert isinstance(labels, np.ndarray) and labels.dtype == np.uint8 and labels.shape == (24, 40)
    assert isinstance(scores, np.ndarray) and scores.dtype == np.float32
    np.testing.assert_array_equal(labels, seg.labels.numpy())
    cv2 = pytest.importorskip("cv2")
    assert cv2.applyColorMap(labels, cv2.COLORMAP_JET).shape == (24, 40, 3)
    masks = seg.to_masks()
    assert masks.dtype == bool and masks.shape == (3, 24, 40)
    for index in range(3):
        np.testing.assert_array_equal(masks[index], labels == index)
    assert (masks.sum(axis=0) == 1).all()

    everything = seg.select(min_score=2.0)  # a cosine similarity is at most 1
    assert everything.prompts == ("red", "green", "blue", "unknown")
    assert bool((everything.labels == 3).all())
    assert torch.equal(seg.select().labels, seg.labels)
    with pytest.raises(InputError, match="purple"):
        seg.select(["purple"])


def test_instances_one_box_and_mask_per_present_class():
    labels = np.zeros((6, 9), dtype=np.uint8)
    labels[1:3, 2:5] = 2          # class 2: rows 1-2, columns 2-4
    labels[5, 8] = 2              # and one far pixel: its box reaches (8, 5)
    labels[4, 0] = 3              # class 3: one pixel; class 1 absent
    seg = clippy_rt.Segmentation(torch.from_numpy(labels), torch.zeros(6, 9), ("a", "b", "c", "d"))
    boxes, masks, class_ids = seg.instances()
    assert class_ids.tolist() == [0, 2, 3]
    assert boxes.tolist() == [[0, 0, 8, 5], [2, 1, 8, 5], [0, 4, 0, 4]]
    assert masks.shape == (3, 6, 9) and masks[1].sum() == 7 and masks[2].sum() == 1
    np.testing.assert_array_equal(masks[0], labels == 0)


def test_to_detections_matches_supervisions_boxes():
    supervision = pytest.importorskip("supervision")
    labels = np.zeros((6, 9), dtype=np.uint8)
    labels[1:3, 2:5] = 2
    labels[5, 8] = 2
    labels[4, 0] = 3
    seg = clippy_rt.Segmentation(torch.from_numpy(labels), torch.zeros(6, 9), ("a", "b", "c", "d"))
    boxes, masks, _ = seg.instances()
    detections = seg.to_detections()
    np.testing.assert_array_equal(supervision.mask_to_xyxy(masks), boxes)
    assert detections.data["class_name"].tolist() == ["a", "c", "d"]
    assert detections.class_id.tolist() == [0, 2, 3] and len(detections) == 3


def test_source_folder_writes_masks_and_unknown(tmp_path, tiny_model_dir, capsys):
    folder = tmp_path / "frames"
    folder.mkdir()
    for k in range(2):
        _write_png(folder / f"f{k}.png", 24, 40, seed=k)
    out = tmp_path / "out"
    # Cosine similarities are at most 1: with --min-score 2 every pixel is unknown.
    assert cli(["segment", str(tiny_model_dir), "--source", str(folder), "--prompts", "red,green",
                "--min-score", "2", "--save-masks", "--out", str(out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["classes"] == ["red", "green", "unknown"] and report["frames"] == 2
    for frame in report["per_frame"]:
        assert frame["input_size"] == frame["output_size"] == [24, 40]
        assert frame["fractions"] == {"red": 0.0, "green": 0.0, "unknown": 1.0}
        assert (_read(frame["files"]["labels"]) == 2).all()
        masks = [_read(path) for path in frame["files"]["masks"]]
        assert len(masks) == 3 and (masks[2] == 255).all() and not masks[0].any() and not masks[1].any()
        assert _read(frame["files"]["overlay"]).shape == (24, 40, 3)


@pytest.mark.parametrize("stage", ["labels", "overlay", "mask"])
def test_an_interrupt_right_after_a_file_lands_leaves_none_of_the_images_files(tmp_path, tiny_model_dir, engine,
                                                                            capsys, monkeypatch, stage):
    # A signal can land after a file's rename and before its writer returns: the files of
    # that image must still go, together with the ones written before it.
    from clippy_rt import visualize

    image = tmp_path / "scene.png"
    _write_png(image, 40, 56, seed=3)
    out = tmp_path / "out"
    names = {"labels": "save_label_png", "overlay": "save_overlay", "mask": "save_mask_png"}
    original = getattr(visualize, names[stage])

    def lands_then_interrupted(*args, **kwargs):
        original(*args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(visualize, names[stage], lands_then_interrupted)
    code = cli(["segment", str(tiny_model_dir), str(image), "--prompts", ",".join(PROMPTS), "--out", str(out),
                "--save-masks"])
    assert code == 130 and capsys.readouterr().err.splitlines()[-1] == "clippy-rt: interrupted"
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith("legend")) == []
