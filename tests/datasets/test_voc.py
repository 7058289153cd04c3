import numpy as np
import pytest
from PIL import Image

from clippy_rt.datasets.voc import VOC_CLASSES, VOC_IGNORE_INDEX, VOC_PROMPT_NAMES, VOCSegmentation, voc_prompts
from clippy_rt.errors import InputError

SIZES = {"2007_000032": (40, 30), "2008_000123": (24, 36)}  # id -> (width, height)


def _palette():
    # VOC's colour map: bits of the class index spread over the high bits of R, G, B.
    palette = []
    for index in range(256):
        r = g = b = 0
        c = index
        for bit in range(8):
            r |= ((c >> 0) & 1) << (7 - bit)
            g |= ((c >> 1) & 1) << (7 - bit)
            b |= ((c >> 2) & 1) << (7 - bit)
            c >>= 3
        palette += [r, g, b]
    return palette


def _write_voc(root, ids=tuple(SIZES), split="val"):
    rng = np.random.default_rng(0)
    (root / "JPEGImages").mkdir(parents=True)
    (root / "SegmentationClass").mkdir()
    (root / "ImageSets" / "Segmentation").mkdir(parents=True)
    labels = {}
    for image_id in ids:
        width, height = SIZES[image_id]
        pixels = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / "JPEGImages" / f"{image_id}.jpg", quality=90)
        label = rng.integers(0, len(VOC_CLASSES), size=(height, width), dtype=np.uint8)
        label[0, :] = VOC_IGNORE_INDEX
        png = Image.fromarray(label, mode="L").convert("P")
        png.putpalette(_palette())
        png.save(root / "SegmentationClass" / f"{image_id}.png")
        labels[image_id] = label
    # Blank lines and trailing spaces occur in hand-edited split files.
    (root / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("\n".join(f"{i}  " for i in ids) + "\n\n")
    return labels


def test_reads_images_and_labels(tmp_path):
    labels = _write_voc(tmp_path)
    dataset = VOCSegmentation(tmp_path)
    assert len(dataset) == 2
    assert dataset.ids == tuple(SIZES)
    for index, image_id in enumerate(SIZES):
        image, label, got_id = dataset[index]
        assert got_id == image_id
        assert image.mode == "RGB"
        assert image.size == SIZES[image_id]
        assert label.dtype == np.uint8
        assert label.shape == (SIZES[image_id][1], SIZES[image_id][0])
        np.testing.assert_array_equal(label, labels[image_id])
    assert dataset[-1][2] == "2008_000123"
    with pytest.raises(IndexError):
        dataset[2]
    assert dataset.num_classes == 21 and dataset.ignore_index == 255


def test_palette_file_really_is_a_palette_png(tmp_path):
    _write_voc(tmp_path)
    with Image.open(tmp_path / "SegmentationClass" / "2007_000032.png") as handle:
        assert handle.mode == "P"


def test_greyscale_labels_are_accepted(tmp_path):
    labels = _write_voc(tmp_path)
    path = tmp_path / "SegmentationClass" / "2007_000032.png"
    Image.fromarray(labels["2007_000032"], mode="L").save(path)
    np.testing.assert_array_equal(VOCSegmentation(tmp_path)[0][1], labels["2007_000032"])


def test_other_split(tmp_path):
    _write_voc(tmp_path, ids=("2008_000123",), split="train")
    dataset = VOCSegmentation(tmp_path, split="train")
    assert dataset.ids == ("2008_000123",)
    with pytest.raises(InputError, match="val.txt"):
        VOCSegmentation(tmp_path, split="val")


def test_missing_root(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(InputError, match="nowhere"):
        VOCSegmentation(missing)


def test_missing_image_names_the_path(tmp_path):
    _write_voc(tmp_path)
    (tmp_path / "JPEGImages" / "2008_000123.jpg").unlink()
    with pytest.raises(InputError, match=r"JPEGImages.2008_000123\.jpg"):
        VOCSegmentation(tmp_path)


def test_missing_label_names_the_path(tmp_path):
    _write_voc(tmp_path)
    (tmp_path / "SegmentationClass" / "2007_000032.png").unlink()
    with pytest.raises(InputError, match=r"SegmentationClass.2007_000032\.png"):
        VOCSegmentation(tmp_path)


def test_empty_split_file(tmp_path):
    _write_voc(tmp_path)
    (tmp_path / "ImageSets" / "Segmentation" / "val.txt").write_text("\n  \n")
    with pytest.raises(InputError, match="no image ids"):
        VOCSegmentation(tmp_path)


@pytest.mark.parametrize("split", ["", "../val", "a/b"])
def test_bad_split_name(tmp_path, split):
    _write_voc(tmp_path)
    with pytest.raises(InputError):
        VOCSegmentation(tmp_path, split=split)


def test_rgb_label_is_rejected(tmp_path):
    labels = _write_voc(tmp_path)
    path = tmp_path / "SegmentationClass" / "2007_000032.png"
    Image.fromarray(labels["2007_000032"]).convert("RGB").save(path)
    dataset = VOCSegmentation(tmp_path)
    with pytest.raises(InputError, match="mode 'RGB'"):
        dataset[0]


def test_label_size_must_match_image(tmp_path):
    _write_voc(tmp_path)
    path = tmp_path / "SegmentationClass" / "2007_000032.png"
    Image.fromarray(np.zeros((5, 7), dtype=np.uint8), mode="L").save(path)
    with pytest.raises(InputError, match="7x5"):
        VOCSegmentation(tmp_path)[0]


def test_corrupt_image(tmp_path):
    _write_voc(tmp_path)
    (tmp_path / "JPEGImages" / "2007_000032.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(InputError, match="2007_000032.jpg"):
        VOCSegmentation(tmp_path)[0]


def test_class_tables():
    assert len(VOC_CLASSES) == len(VOC_PROMPT_NAMES) == 21
    assert VOC_CLASSES[0] == "background"
    assert VOC_CLASSES[1] == "aeroplane" and VOC_CLASSES[20] == "tvmonitor"
    assert VOC_PROMPT_NAMES[VOC_CLASSES.index("pottedplant")] == "potted plant"
    assert VOC_PROMPT_NAMES[VOC_CLASSES.index("diningtable")] == "dining table"


def test_prompts():
    prompts = voc_prompts()
    assert list(prompts) == list(VOC_CLASSES)
    assert all(len(p) == 1 for p in prompts.values())
    assert prompts["aeroplane"] == ["a photo of an aeroplane"]
    assert prompts["pottedplant"] == ["a photo of a potted plant"]
    assert prompts["tvmonitor"] == ["a photo of a television monitor"]
    assert prompts["background"] == ["a photo of a background"]
    assert voc_prompts("{article} {}")["aeroplane"] == ["an aeroplane"]
    assert voc_prompts("{}")["diningtable"] == ["dining table"]
    with pytest.raises(InputError):
        voc_prompts("a photo")
    with pytest.raises(InputError):
        voc_prompts("{} {colour}")
