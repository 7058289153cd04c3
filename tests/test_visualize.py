import numpy as np
import pytest
import torch
from PIL import Image

from clippy_rt.errors import InputError
from clippy_rt.formats.atomic import atomic_write
from clippy_rt.visualize import overlay, palette, save_label_png, save_overlay


def random_labels(height, width, n_classes, seed=0):
    return np.random.default_rng(seed).integers(0, n_classes, (height, width))


def test_palette_is_deterministic_distinct_and_never_black():
    colours = palette(256)
    assert len(colours) == 256 and len(set(colours)) == 256
    assert palette(21) == colours[:21]
    assert all(len(c) == 3 and all(isinstance(v, int) and 0 <= v <= 255 for v in c) for c in colours)
    # The PASCAL VOC colour map from its second entry: class 0 dark red (VOC's aeroplane),
    # then dark green, olive, navy; VOC's black background is not used.
    assert colours[:4] == [(128, 0, 0), (0, 128, 0), (128, 128, 0), (0, 0, 128)]
    assert colours[254] == (224, 224, 192)  # VOC entry 255
    assert (0, 0, 0) not in palette(5000)
    assert len(set(palette(5000))) == 5000
    assert palette(0) == []
    with pytest.raises(InputError):
        palette(-1)


def test_overlay_shows_class_zero():
    # A uniform image entirely of class 0: blended at alpha 0.5 it must change colour, not
    # just darken (a black class 0 leaves the hue of the image as it was).
    grey = np.full((8, 8, 3), 100, dtype=np.uint8)
    result = np.asarray(overlay(grey, np.zeros((8, 8), dtype=np.int64), ["floor", "wall"], legend=False))
    red, green, blue = (int(v) for v in result[0, 0])
    assert red - green >= 50 and red - blue >= 50


@pytest.mark.parametrize("n_classes", [1, 21, 256])
def test_label_png_round_trip(tmp_path, n_classes):
    labels = random_labels(23, 31, n_classes)
    labels[0, 0] = n_classes - 1
    path = save_label_png(labels, tmp_path / "labels.png", n_classes)
    with Image.open(path) as image:
        assert image.mode == "P" and image.format == "PNG"
        np.testing.assert_array_equal(np.asarray(image), labels)
        flat = image.getpalette()
    assert [tuple(flat[3 * i:3 * i + 3]) for i in range(n_classes)] == palette(n_classes)


def test_label_png_from_tensor_and_many_classes(tmp_path):
    labels = torch.from_numpy(random_labels(9, 13, 21, seed=1))
    path = save_label_png(labels, tmp_path / "t.png", 21)
    np.testing.assert_array_equal(np.asarray(Image.open(path)), labels.numpy())

    many = random_labels(9, 13, 1000, seed=2)
    many[0, 0] = 999
    path = save_label_png(many, tmp_path / "many.png", 1000)
    with Image.open(path) as image:
        assert image.mode in ("I;16", "I")
        np.testing.assert_array_equal(np.asarray(image).astype(np.int64), many)


@pytest.mark.parametrize("labels, n_classes, error, message", [
    (np.full((4, 4), 21), 21, InputError, r"\[0, 20\]"),
    (np.full((4, 4), -1), 21, InputError, r"\[-1, -1\]"),
    (np.zeros((4, 4), dtype=np.float32), 21, TypeError, "integer"),
    (torch.zeros(4, 4), 21, TypeError, "integer"),
    (np.zeros((1, 4, 4), dtype=np.int64), 21, InputError, "2-D"),
    (np.zeros((0, 4), dtype=np.int64), 21, InputError, "empty"),
    (np.zeros((4, 4), dtype=np.int64), 0, InputError, "n_classes"),
    (np.zeros((4, 4), dtype=np.int64), 70_000, InputError, "n_classes"),
    ([[0, 1], [1, 0]], 2, TypeError, "numpy array or torch tensor"),
])
def test_label_png_rejects(tmp_path, labels, n_classes, error, message):
    with pytest.raises(error, match=message):
        save_label_png(labels, tmp_path / "bad.png", n_classes)
    assert list(tmp_path.iterdir()) == []


def test_atomic_write_replaces_and_cleans_up(tmp_path):
    path = tmp_path / "out" / "labels.png"
    save_label_png(random_labels(5, 6, 3), path, 3)
    before = path.read_bytes()
    assert [p.name for p in path.parent.iterdir()] == ["labels.png"]

    def fail_half_way(handle):
        handle.write(b"partial data")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(path, fail_half_way)
    assert path.read_bytes() == before
    assert [p.name for p in path.parent.iterdir()] == ["labels.png"]

    with pytest.raises(RuntimeError):
        atomic_write(tmp_path / "never.bin", fail_half_way)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]

    replaced = random_labels(5, 6, 3, seed=9)
    save_label_png(replaced, path, 3)
    np.testing.assert_array_equal(np.asarray(Image.open(path)), replaced)
    assert [p.name for p in path.parent.iterdir()] == ["labels.png"]
    with pytest.raises(InputError, match="directory"):
        atomic_write(tmp_path / "out", lambda handle: None)


def test_overlay_blends_and_leaves_ignored_pixels():
    rgb = np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    labels = random_labels(20, 30, 3, seed=5)
    labels[:5, :5] = 255
    names = ["sky", "tree", "road"]
    alpha = 0.4
    result = overlay(Image.fromarray(rgb), labels, names, alpha=alpha, legend=False)
    assert result.size == (30, 20) and result.mode == "RGB"
    colours = np.asarray(palette(3), dtype=np.float64)
    valid = labels < 3
    expected = rgb.astype(np.float64)
    expected[valid] = (1 - alpha) * expected[valid] + alpha * colours[labels[valid]]
    got = np.asarray(result).astype(np.float64)
    np.testing.assert_allclose(got, np.rint(expected), atol=1)
    np.testing.assert_array_equal(np.asarray(result)[:5, :5], rgb[:5, :5])


def test_overlay_legend_lists_only_present_classes():
    rgb = np.full((40, 50, 3), 128, dtype=np.uint8)
    names = ["background", "aeroplane", "bicycle", "bird", "boat", "bottle"]
    labels = np.zeros((40, 50), dtype=np.int64)
    labels[:, 25:] = 4
    labels[30:, :10] = 5
    result = overlay(rgb, torch.from_numpy(labels), names)
    assert result.height >= 40 and result.width > 50
    np.testing.assert_array_equal(np.asarray(result)[:40, :50],
                                  np.asarray(overlay(rgb, labels, names, legend=False)))
    panel = np.asarray(result)[:, 50:].reshape(-1, 3)
    shown = {tuple(int(v) for v in c) for c in np.unique(panel, axis=0)}
    colours = palette(len(names))
    for present in (0, 4, 5):
        assert colours[present] in shown
    for absent in (1, 2):  # dark red, dark green: colours text antialiasing cannot make
        assert colours[absent] not in shown


@pytest.mark.parametrize("kwargs, error, message", [
    ({"labels": np.zeros((10, 11), dtype=np.int64)}, InputError, "does not match"),
    ({"alpha": 1.5}, InputError, "alpha"),
    ({"class_names": []}, InputError, "empty"),
    ({"class_names": "sky"}, TypeError, "strings"),
])
def test_overlay_rejects(kwargs, error, message):
    arguments = {"image": np.zeros((10, 10, 3), dtype=np.uint8),
                 "labels": np.zeros((10, 10), dtype=np.int64), "class_names": ["a", "b"]}
    arguments.update(kwargs)
    with pytest.raises(error, match=message):
        overlay(**arguments)


@pytest.mark.parametrize("suffix", ["png", "jpg"])
def test_save_overlay(tmp_path, suffix):
    rgb = np.random.default_rng(1).integers(0, 256, (24, 32, 3), dtype=np.uint8)
    labels = random_labels(24, 32, 2, seed=3)
    path = save_overlay(rgb, labels, ["cat", "dog"], tmp_path / f"overlay.{suffix}", alpha=0.5)
    expected = overlay(rgb, labels, ["cat", "dog"], alpha=0.5)
    with Image.open(path) as written:
        assert written.size == expected.size
        if suffix == "png":
            np.testing.assert_array_equal(np.asarray(written), np.asarray(expected))
    assert [p.name for p in tmp_path.iterdir()] == [f"overlay.{suffix}"]

    with pytest.raises(InputError, match="format"):
        save_overlay(rgb, labels, ["cat", "dog"], tmp_path / "overlay.xyz")
    assert not (tmp_path / "overlay.xyz").exists()
