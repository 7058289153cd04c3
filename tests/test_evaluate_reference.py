"""``clippy-rt eval --dataset voc:DIR --protocol reference`` against the reference evaluation
procedure restated here from its description, with torchvision's transforms for the image
and target geometry (independent of ``clippy_rt.images`` and ``clippy_rt.evaluate``)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import clippy_rt
from clippy_rt.cli.main import main as cli

transforms = pytest.importorskip("torchvision.transforms")

# The reference's prompt names: VOC's 21 under its own spelling, then its 39 stuff classes.
NAMES = ["background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
         "table", "dog", "horse", "motorbike", "person", "potted plant", "sheep", "sofa", "train",
         "television monitor", "bag", "bed", "bench", "book", "building", "cabinet", "ceiling", "cloth",
         "computer", "cup", "door", "fence", "floor", "flower", "food", "grass", "ground", "keyboard", "light",
         "mountain", "mouse", "curtain", "platform", "sign", "plate", "road", "rock", "shelves", "sidewalk",
         "sky", "snow", "bedclothes", "track", "tree", "truck", "wall", "water", "window", "wood"]
SIZES = [(40, 64), (72, 48), (32, 32)]  # (height, width): landscape, portrait, already square


@pytest.fixture()
def voc_root(tmp_path):
    rng = np.random.default_rng(5)
    root = tmp_path / "voc"
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (root / sub).mkdir(parents=True)
    ids = []
    for index, (height, width) in enumerate(SIZES):
        image_id = f"2008_00000{index}"
        ids.append(image_id)
        # Smooth colour fields, so the tiny model's labels vary over the image.
        yy, xx = np.mgrid[0:height, 0:width]
        image = np.stack([(yy * 255 // height), (xx * 255 // width), rng.integers(0, 255, (height, width))], -1)
        Image.fromarray(image.astype(np.uint8)).save(root / "JPEGImages" / f"{image_id}.jpg", quality=95)
        labels = np.zeros((height, width), dtype=np.uint8)
        labels[height // 4:height // 2, width // 5:width // 2] = 8 + index
        labels[height // 2:, width // 2:] = 15
        labels[height // 2, :] = 255
        palette = Image.fromarray(labels, mode="P")
        palette.putpalette([v for i in range(256) for v in (i, 255 - i, (7 * i) % 256)])
        palette.save(root / "SegmentationClass" / f"{image_id}.png")
    (root / "ImageSets" / "Segmentation" / "val.txt").write_text("\n".join(ids) + "\n")
    return root, ids


def reference_scores(engine, root, ids, size):
    """The reference procedure: (confusion [21, 21], per-class IoU, mIoU)."""
    cfg = engine.config.image
    image_tf = transforms.Compose([transforms.Resize(size, interpolation=transforms.InterpolationMode.BICUBIC),
                                   transforms.CenterCrop(size), transforms.ToTensor(),
                                   transforms.Normalize(cfg.mean, cfg.std)])
    target_tf = transforms.Resize((size, size))
    prompts = [f"a photo of {'an' if name[0] in 'aeiou' else 'a'} {name}" for name in NAMES]
    text = engine.encode_text(prompts)                                         # [60, D], L2-normalised
    confusion = np.zeros((21, 21), dtype=np.int64)
    for image_id in ids:
        with Image.open(root / "JPEGImages" / f"{image_id}.jpg") as handle:
            pixels = image_tf(handle.convert("RGB"))[None]
        with Image.open(root / "SegmentationClass" / f"{image_id}.png") as handle:
            target = np.array(target_tf(handle)).astype(np.int64)
        patch = engine.encode_image(pixels).patch                                 # [1, h, w, D], L2-normalised
        dense = F.interpolate(patch.permute(0, 3, 1, 2), scale_factor=cfg.patch_size, mode="bilinear",
                              align_corners=False)[0]                              # [D, S, S]
        prediction = torch.einsum("dyx,kd->kyx", dense, text).argmax(0).numpy()
        prediction[prediction >= 21] = 0
        mask = target < 255
        confusion += np.bincount(21 * target[mask] + prediction[mask], minlength=21 * 21).reshape(21, 21)
    iou = confusion.diagonal() / (confusion.sum(0) + confusion.sum(1) - confusion.diagonal()
                                  + np.finfo(np.float32).eps)
    return confusion, iou, float(np.nanmean(iou))


def test_reference_protocol_matches_the_procedure(tiny_model_dir, voc_root, capsys):
    root, ids = voc_root
    engine = clippy_rt.load(tiny_model_dir)
    size = engine.config.image.image_size
    confusion, iou, miou = reference_scores(engine, root, ids, size)
    assert cli(["eval", str(tiny_model_dir), "--dataset", f"voc:{root}", "--json", "--no-progress"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["protocol"] == "reference" and result["num_images"] == len(ids)
    assert "(val, 3 images, reference protocol)" in result["dataset"]
    # Every crop is size x size and the target is squashed to it: 255 rows dropped.
    assert result["pixels"] == int(confusion.sum())
    got = np.array(result["confusion"])
    # The fused head upsamples logits rather than features: the same function, rounded
    # differently, so a pixel at a near tie may flip.
    assert np.abs(got - confusion).sum() <= 0.002 * confusion.sum()
    # Classes absent from targets and predictions score 0 and count in the mean.
    absent = (confusion.sum(0) + confusion.sum(1)) == 0
    assert absent.sum() >= 10
    assert all(result["iou"][name] == 0.0 for name, gone in zip(result["iou"], absent) if gone)
    assert result["miou"] == pytest.approx(miou, abs=0.01)
    assert result["miou"] == pytest.approx(float(np.mean(list(result["iou"].values()))))
    assert list(result["iou"]) == NAMES[:21]


def test_stuff_predictions_count_as_background(tiny_model_dir, voc_root, monkeypatch, capsys):
    """A model that always answers a stuff class ("wall") is scored as answering background."""
    root, ids = voc_root
    engine = clippy_rt.load(tiny_model_dir)
    wall = NAMES.index("wall")
    original = engine.decode

    def always_wall(features, text, prompt_set, *args, **kwargs):
        segs = original(features, text, prompt_set, *args, **kwargs)
        assert prompt_set.classes[wall] == "wall" and len(prompt_set.classes) == 60
        for seg in segs:
            seg.labels.fill_(wall)
        return segs

    monkeypatch.setattr(clippy_rt.engine.Engine, "decode", lambda self, *a, **k: always_wall(*a, **k))
    from clippy_rt.evaluate import evaluate, voc_set

    result = evaluate(engine, voc_set(root, "val", protocol="reference", size=engine.config.image.image_size))
    matrix = np.array(result.confusion)
    assert matrix[:, 1:].sum() == 0 and matrix[:, 0].sum() == result.pixels
    assert result.iou[0] == pytest.approx(matrix[0, 0] / matrix.sum(), rel=1e-6)


def test_protocol_choices_are_checked(tiny_model_dir, voc_root, capsys):
    root, _ = voc_root
    assert cli(["eval", str(tiny_model_dir), "--dataset", f"voc:{root}", "--resize", "crop", "--no-progress"]) == 1
    assert "--resize does not apply" in capsys.readouterr().err
    assert cli(["eval", str(tiny_model_dir), "--dataset", f"voc:{root}", "--size", "32x40", "--no-progress"]) == 1
    assert "square size" in capsys.readouterr().err
    assert cli(["eval", str(tiny_model_dir), "--dataset", "synthetic:2", "--protocol", "reference",
                "--no-progress"]) == 1
    assert "native protocol only" in capsys.readouterr().err
    # Text output names the protocol, the split and the number of images.
    assert cli(["eval", str(tiny_model_dir), "--dataset", f"voc:{root}", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "protocol         reference" in out and "(val, 3 images, reference protocol)" in out
