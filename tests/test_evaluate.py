"""The evaluation loop and `clippy-rt eval`: hand-computed figures, VOC and synthetic sets."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from PIL import Image

from clippy_rt.cli.main import main as cli
from clippy_rt.datasets.synthetic import EVAL_SEED_BASE, class_names
from clippy_rt.datasets.voc import VOC_CLASSES
from clippy_rt.errors import InputError
from clippy_rt.evaluate import EvalSet, evaluate, open_dataset


@dataclass
class _Labels:
    labels: torch.Tensor


class _FixedEngine:
    """Answers every image with a fixed label map (the evaluation loop's only contract)."""

    backend = "fixed"
    precision = "fp32"

    def __init__(self, labels: np.ndarray) -> None:
        self.labels = torch.as_tensor(labels, dtype=torch.int64)
        self.calls = 0

    def segment(self, images, prompts, size=None, resize="squash", template=None):
        self.calls += 1
        return [_Labels(self.labels.clone()) for _ in images]


def _set(targets, ignore_index=None) -> EvalSet:
    samples = [(np.zeros(t.shape + (3,), dtype=np.uint8), t) for t in targets]
    return EvalSet(name="hand", samples=samples, prompts={"a": ["a"], "b": ["b"], "c": ["c"]},
                   ignore_index=ignore_index)


def test_figures_match_hand_computed_confusion_matrix():
    target = np.array([[0, 0, 1], [1, 2, 2]], dtype=np.uint8)
    pred = np.array([[0, 1, 1], [1, 2, 0]])
    # M = [[1, 1, 0], [0, 2, 0], [1, 0, 1]]: IoU = 1/3, 2/3, 1/2.
    result = evaluate(_FixedEngine(pred), _set([target, target]), batch_size=1)
    assert result.num_images == 2
    assert result.pixels == 12
    assert result.confusion == ((2, 2, 0), (0, 4, 0), (2, 0, 2))
    np.testing.assert_allclose(result.iou, [1 / 3, 2 / 3, 1 / 2])
    assert result.miou == pytest.approx(0.5)
    assert result.pixel_accuracy == pytest.approx(4 / 6)
    assert result.agreement is None


def test_ignored_pixels_and_agreement_with_reference():
    target = np.array([[0, 255, 1], [1, 2, 2]], dtype=np.uint8)
    pred = np.array([[0, 1, 1], [1, 2, 0]])
    reference = np.array([[0, 0, 1], [1, 0, 0]])
    result = evaluate(_FixedEngine(pred), _set([target], ignore_index=255),
                      reference=_FixedEngine(reference))
    # Counted pixels: the five non-255 ones; pred == reference on (0,0), (0,2), (1,0), (1,2).
    assert result.pixels == 5
    assert result.agreement == pytest.approx(4 / 5)
    # M = [[1, 0, 0], [0, 2, 0], [1, 0, 1]].
    np.testing.assert_allclose(result.iou, [1 / 2, 1.0, 1 / 2])
    assert result.pixel_accuracy == pytest.approx(4 / 5)


def test_batches_cover_every_image_once():
    target = np.zeros((2, 2), dtype=np.uint8)
    engine = _FixedEngine(np.zeros((2, 2)))
    result = evaluate(engine, _set([target] * 5), batch_size=2)
    assert engine.calls == 3
    assert result.pixels == 20
    # Only class 0 is present: the others have an empty union and stay out of the mean.
    assert math.isnan(result.iou[1]) and math.isnan(result.iou[2])
    assert result.miou == 1.0


def test_shape_mismatch_and_bad_batch_size_are_rejected():
    engine = _FixedEngine(np.zeros((2, 3)))
    with pytest.raises(InputError, match="shape"):
        evaluate(engine, _set([np.zeros((3, 3), dtype=np.uint8)]))
    with pytest.raises(InputError, match="batch_size"):
        evaluate(engine, _set([np.zeros((2, 3), dtype=np.uint8)]), batch_size=0)


def test_open_dataset_specs():
    synthetic = open_dataset("synthetic:3:1000000007")
    assert len(synthetic.samples) == 3
    assert synthetic.class_names == tuple(class_names())
    image, labels = synthetic.samples[2]
    assert image.shape == (64, 64, 3) and labels.shape == (64, 64)
    assert open_dataset("synthetic").name == f"synthetic:500:{EVAL_SEED_BASE}"
    for bad in ("imagenet", "voc:", "synthetic:0", "synthetic:x"):
        with pytest.raises(InputError):
            open_dataset(bad)


@pytest.fixture()
def voc_root(tmp_path):
    """Two images in the VOC layout; labels hold classes 0, 8 (cat), 15 (person) and 255."""
    rng = np.random.default_rng(0)
    root = tmp_path / "voc"
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (root / sub).mkdir(parents=True)
    ids = ["2007_000001", "2007_000002"]
    for index, image_id in enumerate(ids):
        height, width = 40 + 8 * index, 56
        Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8)).save(
            root / "JPEGImages" / f"{image_id}.jpg", quality=90)
        labels = np.zeros((height, width), dtype=np.uint8)
        labels[5:20, 10:30] = 8
        labels[25:, 30:] = 15
        labels[4, :] = 255
        label_png = Image.fromarray(labels, mode="L").convert("P")
        label_png.save(root / "SegmentationClass" / f"{image_id}.png")
    (root / "ImageSets" / "Segmentation" / "val.txt").write_text("\n".join(ids) + "\n")
    return root


def test_cli_eval_voc_folder(tiny_model_dir, voc_root, capsys):
    code = cli(["eval", str(tiny_model_dir), "--dataset", f"voc:{voc_root}", "--protocol", "native", "--json",
                "--no-progress"])
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert result["num_images"] == 2
    assert list(result["iou"]) == list(VOC_CLASSES)
    assert result["pixels"] == (40 - 1) * 56 + (48 - 1) * 56
    assert result["agreement_with_torch_fp32"] is None
    matrix = np.array(result["confusion"])
    assert matrix.shape == (21, 21) and matrix.sum() == result["pixels"]
    present = [v for v in result["iou"].values() if v is not None]
    assert all(0.0 <= v <= 1.0 for v in present)
    assert result["miou"] == pytest.approx(float(np.mean(present)))
    assert result["pixel_accuracy"] == pytest.approx(np.trace(matrix) / matrix.sum())


def test_cli_eval_reports_agreement_for_other_precisions(tiny_model_dir, capsys):
    code = cli(["eval", str(tiny_model_dir), "--dataset", "synthetic:2", "--precision", "bf16",
                "--json", "--no-progress"])
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert result["precision"] == "bf16"
    assert 0.0 <= result["agreement_with_torch_fp32"] <= 1.0
    assert list(result["iou"]) == class_names()


def test_cli_eval_text_output_and_bad_dataset(tiny_model_dir, capsys):
    assert cli(["eval", str(tiny_model_dir), "--dataset", "synthetic:1", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "mIoU" in out and "ring" in out
    assert cli(["eval", str(tiny_model_dir), "--dataset", "imagenet", "--no-progress"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown dataset" in err[0]


def test_reference_model_for_agreement(tiny_model_dir, tmp_path):
    from argparse import Namespace

    from clippy_rt.cli.eval import _reference_dir

    assert _reference_dir(Namespace(model=str(tiny_model_dir), reference=None)) == str(tiny_model_dir)
    assert _reference_dir(Namespace(model="anything", reference="given")) == "given"
    onnx_dir = tmp_path / "onnx"
    onnx_dir.mkdir()
    (onnx_dir / "manifest.json").write_text(json.dumps({"source": {"model_dir": str(tiny_model_dir)}}))
    assert _reference_dir(Namespace(model=str(onnx_dir), reference=None)) == str(tiny_model_dir)
    (onnx_dir / "manifest.json").write_text(json.dumps({"source": {}}))
    with pytest.raises(InputError, match="--reference"):
        _reference_dir(Namespace(model=str(onnx_dir), reference=None))


def test_cli_eval_device_preprocessing_agreement_with_host(tiny_model_dir, capsys):
    import clippy_rt

    args = ["eval", str(tiny_model_dir), "--dataset", "synthetic:3", "--size", "48", "--json", "--no-progress"]
    assert cli(args + ["--preprocess", "kernel"]) == 0
    kernel = json.loads(capsys.readouterr().out)
    assert cli(args + ["--preprocess", "host"]) == 0
    host = json.loads(capsys.readouterr().out)
    assert kernel["preprocess"] == "kernel" and host["agreement_with_torch_fp32"] is None
    assert kernel["reference_miou"] == pytest.approx(host["miou"])
    # The agreement, computed directly: the same engine, kernel vs host pre-processing.
    engine = clippy_rt.load(tiny_model_dir)
    eval_set = open_dataset("synthetic:3")
    images = [image for image, _ in eval_set.samples]
    same = total = 0
    for ours, theirs in zip(engine.segment(images, eval_set.prompts, size=48, preprocess="kernel", template="{}"),
                            engine.segment(images, eval_set.prompts, size=48, preprocess="host", template="{}")):
        same += int((ours.labels == theirs.labels).sum())
        total += ours.labels.numel()
    assert same < total
    assert kernel["agreement_with_torch_fp32"] == pytest.approx(same / total)
