"""``clippy-rt eval --dataset imagenet:DIR`` against the reference's zero-shot ImageNet
procedure restated here from its description: torchvision's ImageFolder order, its
Resize(bicubic) + CenterCrop + Normalize, class embeddings as the re-normalised mean of the
normalised template embeddings, logits 100 x image . classifier, top-1 / top-5 with
torch.topk (independent of ``clippy_rt.classification`` and ``clippy_rt.images``)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import clippy_rt
from clippy_rt.cli.main import main as cli
from clippy_rt.datasets.imagenet import imagenet_classes, openai_templates

transforms = pytest.importorskip("torchvision.transforms")
datasets = pytest.importorskip("torchvision.datasets")

# Folder names sort differently from their creation order, and their class names.
FOLDERS = ["n07", "n02", "n11", "n05", "n03", "n13", "n01"]
SIZES = [(40, 64), (72, 48), (32, 32)]  # (height, width)


@pytest.fixture()
def folder_root(tmp_path):
    rng = np.random.default_rng(11)
    root = tmp_path / "imagenet-val"
    for index, name in enumerate(FOLDERS):
        (root / name).mkdir(parents=True)
        for number, (height, width) in enumerate(SIZES):
            yy, xx = np.mgrid[0:height, 0:width]
            image = np.stack([(yy * (index + 3) * 37 // height) % 256, (xx * (number + 2) * 53 // width) % 256,
                              rng.integers(0, 255, (height, width))], -1).astype(np.uint8)
            suffix = ".JPEG" if number % 2 == 0 else ".png"
            Image.fromarray(image).save(root / name / f"img{number}{suffix}", quality=95)
    return root


def reference_scores(engine, root, class_names, templates, size=32):
    """(top-1 count, top-5 count, predictions) by the reference procedure."""
    cfg = engine.config.image
    tf = transforms.Compose([transforms.Resize(size, interpolation=transforms.InterpolationMode.BICUBIC),
                             transforms.CenterCrop(size), transforms.ToTensor(), transforms.Normalize(cfg.mean, cfg.std)])
    dataset = datasets.ImageFolder(str(root), transform=tf)
    weights = []
    for name in class_names:
        text = F.normalize(engine.encode_text([t.replace("{}", name) for t in templates]), dim=-1).mean(dim=0)
        weights.append(text / text.norm())
    classifier = torch.stack(weights, dim=1)                                   # [D, C]
    top1 = top5 = 0
    predictions = []
    for pixels, target in dataset:
        image = F.normalize(engine.encode_image(pixels[None]).pooled, dim=-1)
        logits = 100.0 * image @ classifier
        pred = logits.topk(min(5, len(class_names)), 1, True, True)[1][0]
        top1 += int(pred[0] == target)
        top5 += int((pred == target).any())
        predictions.append(int(pred[0]))
    return top1, top5, predictions, len(dataset)


def _run(capsys, *args):
    assert cli(["eval", *args, "--json", "--no-progress"]) == 0
    return json.loads(capsys.readouterr().out)


def test_class_folders_score_as_the_reference(tiny_model_dir, folder_root, tmp_path, capsys):
    engine = clippy_rt.load(tiny_model_dir)
    names = ["tabby cat", "red fox", "sports car", "golden retriever", "apple", "oak tree", "umbrella"]
    classes_file = tmp_path / "classes.txt"
    classes_file.write_text("# in sorted folder order\n" + "\n".join(names) + "\n")
    templates = ["a photo of a {}.", "a blurry photo of the {}.", "itap of a {}."]
    template_file = tmp_path / "templates.txt"
    template_file.write_text("\n".join(templates) + "\n")
    top1, top5, predictions, count = reference_scores(engine, folder_root, names, templates)
    out = _run(capsys, str(tiny_model_dir), "--dataset", f"imagenet:{folder_root}", "--classes", str(classes_file),
               "--templates", str(template_file), "--batch-size", "4")
    assert (out["num_images"], out["num_classes"], out["templates"]) == (count, 7, 3)
    assert out["top1"] == pytest.approx(top1 / count, abs=1e-12)
    assert out["top5"] == pytest.approx(top5 / count, abs=1e-12)
    # Not a degenerate case: some right, some wrong at top-1; top-5 differs from top-1.
    assert 0 < top1 < count and top5 > top1
    # Per-class top-1, against the reference's predictions (ImageFolder sorts the folders).
    targets = [index for index in range(7) for _ in SIZES]
    for index, name in enumerate(names):
        mine = [p == t for p, t in zip(predictions, targets) if t == index]
        assert out["per_class_top1"][f"{index}:{name}"] == pytest.approx(sum(mine) / len(mine))


def test_openai_templates_and_folder_names(tiny_model_dir, folder_root, capsys):
    engine = clippy_rt.load(tiny_model_dir)
    top1, top5, _, count = reference_scores(engine, folder_root, sorted(FOLDERS), openai_templates())
    out = _run(capsys, str(tiny_model_dir), "--dataset", f"imagenet:{folder_root}", "--classes", "folders")
    assert out["templates"] == 80
    assert (out["top1"], out["top5"]) == (pytest.approx(top1 / count), pytest.approx(top5 / count))


def test_a_labels_file_is_the_same_set_as_class_folders(tiny_model_dir, folder_root, tmp_path, capsys):
    names = sorted(FOLDERS)
    lines = [f"{folder}/{path.name} {names.index(folder)}" for folder in FOLDERS
             for path in sorted((folder_root / folder).iterdir())]
    labels = tmp_path / "val_labels.txt"
    labels.write_text("\n".join(reversed(lines)) + "\n")
    names_file = tmp_path / "names.txt"
    names_file.write_text("\n".join(names) + "\n")
    by_folders = _run(capsys, str(tiny_model_dir), "--dataset", f"imagenet:{folder_root}", "--classes", "folders",
                      "--templates", "single")
    by_labels = _run(capsys, str(tiny_model_dir), "--dataset", f"imagenet:{folder_root}", "--labels", str(labels),
                     "--classes", str(names_file), "--templates", "single")
    assert by_labels["layout"] == "labels" and by_folders["layout"] == "folders"
    for key in ("num_images", "top1", "top5", "per_class_top1"):
        assert by_labels[key] == by_folders[key]


def test_the_shipped_lists_are_clips_imagenet_prompts():
    classes, templates = imagenet_classes(), openai_templates()
    assert len(classes) == 1000 and len(templates) == 80
    assert (classes[0], classes[1], classes[-1]) == ("tench", "goldfish", "toilet paper")
    assert templates[0] == "a bad photo of a {}." and all(t.count("{}") == 1 for t in templates)
    assert len(set(templates)) == 80


@pytest.mark.parametrize("args, message", [
    (["--classes", "folders", "--protocol", "native"], "one protocol"),
    (["--classes", "folders", "--resize", "crop"], "do not apply"),
    ([], "has 7 classes, not ImageNet's 1,000"),
    (["--classes", "folders", "--templates", "/nonexistent/t.txt"], "cannot read /nonexistent/t.txt"),
])
def test_bad_options_are_one_line_errors(tiny_model_dir, folder_root, capsys, args, message):
    assert cli(["eval", str(tiny_model_dir), "--dataset", f"imagenet:{folder_root}", "--no-progress", *args]) == 1
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_a_bad_labels_line_names_file_and_line(tiny_model_dir, folder_root, tmp_path, capsys):
    labels = tmp_path / "labels.txt"
    labels.write_text(f"{FOLDERS[0]}/img0.JPEG 0\nmissing.jpg 3\n")
    names = tmp_path / "names.txt"
    names.write_text("a\nb\nc\nd\n")
    assert cli(["eval", str(tiny_model_dir), "--dataset", f"imagenet:{folder_root}", "--labels", str(labels),
                "--classes", str(names)]) == 1
    assert f"{labels}:2: no image" in capsys.readouterr().err


def test_class_embeddings_are_normalised_template_means(tiny_model_dir):
    from clippy_rt.classification import class_embeddings

    engine = clippy_rt.load(tiny_model_dir)
    names, templates = ["ox", "elk"], ["a {}.", "a photo of the {}.", "{} in the wild"]
    expected = []
    for name in names:
        # Each template's embedding normalised on its own, the mean normalised again.
        rows = [F.normalize(engine.encode_text([t.replace("{}", name)])[0], dim=0) for t in templates]
        mean = torch.stack(rows).mean(0)
        expected.append(mean / mean.norm())
    got = class_embeddings(engine, names, templates)
    torch.testing.assert_close(got, torch.stack(expected), rtol=0, atol=1e-6)


def test_classify_with_a_template_ensemble(tiny_model_dir, folder_root, tmp_path, capsys):
    engine = clippy_rt.load(tiny_model_dir)
    templates = ["a photo of a {}.", "a drawing of the {}."]
    (tmp_path / "t.txt").write_text("\n".join(templates) + "\n")
    image = folder_root / FOLDERS[0] / "img0.JPEG"
    assert cli(["classify", str(tiny_model_dir), str(image), "--labels", "cat|kitten,dog,car",
                "--templates", str(tmp_path / "t.txt"), "--json"]) == 0
    (result,) = json.loads(capsys.readouterr().out)["images"]
    synonyms = {"cat": ["cat", "kitten"], "dog": ["dog"], "car": ["car"]}
    weights = []
    for texts in synonyms.values():
        rows = F.normalize(engine.encode_text([t.replace("{}", n) for n in texts for t in templates]), dim=-1)
        weights.append(F.normalize(rows.mean(0), dim=0))
    pooled = engine.encode_image(Image.open(image), resize="crop").pooled
    probs = (np.exp(engine.logit_scale) * pooled @ torch.stack(weights).T).softmax(-1)[0]
    expected = sorted(zip(synonyms, probs.tolist()), key=lambda item: -item[1])
    assert [(t["label"], pytest.approx(t["probability"], abs=1e-6)) for t in result["top"]] == \
        [(label, pytest.approx(p, abs=1e-6)) for label, p in expected]
