"""PASCAL VOC segmentation, read from the standard folder layout.

``root`` holds ``ImageSets/Segmentation/{split}.txt`` (one image id a line),
``JPEGImages/{id}.jpg`` and ``SegmentationClass/{id}.png``: a palette PNG whose pixel
values are class indices into ``VOC_CLASSES``, with 255 marking object borders and
"difficult" regions that evaluation ignores.
"""

from __future__ import annotations

import operator
import os
from pathlib import Path

import numpy as np
from PIL import Image

from clippy_rt.errors import InputError

__all__ = ["REFERENCE_CLASSES", "VOC_CLASSES", "VOC_IGNORE_INDEX", "VOC_PROMPT_NAMES", "VOCSegmentation",
           "reference_crop", "reference_prompts", "reference_sample", "voc_prompts"]

# The dataset's own class names, label index order.
VOC_CLASSES: tuple[str, ...] = (
    "background",
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
)

# Readable forms used in prompts, as in the reference evaluation's label map.
VOC_PROMPT_NAMES: tuple[str, ...] = (
    "background",
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "dining table",
    "dog",
    "horse",
    "motorbike",
    "person",
    "potted plant",
    "sheep",
    "sofa",
    "train",
    "television monitor",
)

VOC_IGNORE_INDEX = 255

# The class names the reference evaluation prompts with: the 21 VOC classes under its own
# names (label order; "table" where VOC says diningtable), then 39 stuff and background
# classes. Every prediction past the first 21 counts as background.
REFERENCE_CLASSES: tuple[str, ...] = VOC_PROMPT_NAMES[:11] + ("table",) + VOC_PROMPT_NAMES[12:] + (
    "bag", "bed", "bench", "book", "building", "cabinet", "ceiling", "cloth", "computer", "cup",
    "door", "fence", "floor", "flower", "food", "grass", "ground", "keyboard", "light", "mountain",
    "mouse", "curtain", "platform", "sign", "plate", "road", "rock", "shelves", "sidewalk", "sky",
    "snow", "bedclothes", "track", "tree", "truck", "wall", "water", "window", "wood",
)

# Modes whose pixel values are the class indices themselves.
_INDEX_MODES = ("P", "L")


def voc_prompts(template: str = "a photo of {article} {}") -> dict[str, list[str]]:
    """One prompt per VOC class: ``{VOC_CLASSES[i]: [prompt]}`` in label order.

    ``{}`` receives the readable class name (``VOC_PROMPT_NAMES``) and ``{article}``
    "an" before a vowel, else "a": "a photo of an aeroplane", "a photo of a potted plant".

    Raises:
        InputError: the template has no ``{}`` field, or fields other than ``{}`` and
            ``{article}``.
    """
    if not isinstance(template, str):
        raise TypeError(f"template must be a str, got {type(template).__name__}")
    if "{}" not in template:
        raise InputError(f"template {template!r} has no '{{}}' field for the class name")
    prompts: dict[str, list[str]] = {}
    for key, name in zip(VOC_CLASSES, VOC_PROMPT_NAMES):
        article = "an" if name[0] in "aeiou" else "a"
        try:
            prompts[key] = [template.format(name, article=article)]
        except (KeyError, IndexError, ValueError) as err:
            raise InputError(
                f"template {template!r} is invalid (allowed fields: '{{}}' and '{{article}}'): {err}"
            ) from None
    return prompts


def reference_prompts() -> dict[str, list[str]]:
    """The reference evaluation's 60 prompts, ``{name: ["a photo of a/an {name}"]}`` in
    ``REFERENCE_CLASSES`` order ("an" before a vowel)."""
    return {name: [f"a photo of {'an' if name[0] in 'aeiou' else 'a'} {name}"] for name in REFERENCE_CLASSES}


def reference_crop(image: Image.Image, size: int) -> Image.Image:
    """The reference evaluations' image geometry: the shorter side to ``size`` with PIL's
    bicubic filter (the other side floored, as torchvision's ``Resize(size)``), then the
    centred ``size`` x ``size`` crop (offsets rounded as torchvision's ``CenterCrop``)."""
    width, height = image.size
    if width <= height:
        new_w, new_h = size, height * size // width
    else:
        new_w, new_h = width * size // height, size
    resized = image.resize((new_w, new_h), Image.BICUBIC)
    top, left = int(round((new_h - size) / 2.0)), int(round((new_w - size) / 2.0))
    return resized.crop((left, top, left + size, top + size))


def reference_sample(image: Image.Image, label_path: str | os.PathLike, size: int) -> tuple[Image.Image, np.ndarray]:
    """One image and its target as the reference evaluation sees them.

    The image: ``reference_crop``. The target: the label PNG resized to
    ``size`` x ``size`` as torchvision's ``Resize((size, size))`` does to a PIL image, a
    bilinear request that PIL carries out as nearest for palette ('P') images: squashed,
    not cropped, so the target covers the whole image while the prediction covers the crop.
    """
    crop = reference_crop(image, size)
    with Image.open(label_path) as handle:
        target = np.array(handle.resize((size, size), Image.BILINEAR), dtype=np.uint8)
    return crop, target


class VOCSegmentation:
    """The images and label maps of one split of a VOC-layout folder.

    All files of the split are checked to exist when the dataset is opened, so a
    broken folder fails before any model runs. Items are
    ``(image, labels, image_id)``: a PIL RGB image, uint8 labels [H, W] (class
    indices, 255 = ignore) of the image's size, and the id from the split file.

    Raises:
        InputError: root is not a folder; the split file, an image or a label file is
            missing (the message names the path); the split file lists no ids.
    """

    num_classes = len(VOC_CLASSES)
    ignore_index = VOC_IGNORE_INDEX
    class_names = VOC_CLASSES

    def __init__(self, root: str | os.PathLike, split: str = "val") -> None:
        if not isinstance(split, str):
            raise TypeError(f"split must be a str, got {type(split).__name__}")
        if not split or "/" in split or "\\" in split or split in (".", ".."):
            raise InputError(f"split must be a plain name such as 'val', got {split!r}")
        self.root = Path(root)
        if not self.root.is_dir():
            raise InputError(f"VOC root {str(self.root)!r} is not a folder")
        self.split = split
        split_file = self.root / "ImageSets" / "Segmentation" / f"{split}.txt"
        if not split_file.is_file():
            raise InputError(f"VOC split file {str(split_file)!r} not found")
        with open(split_file, encoding="utf-8") as handle:
            # Some copies carry "id flag" columns (the classification lists); the id is
            # the first field.
            ids = [line.split()[0] for line in handle if line.strip()]
        if not ids:
            raise InputError(f"VOC split file {str(split_file)!r} lists no image ids")
        self.ids: tuple[str, ...] = tuple(ids)
        for image_id in self.ids:
            for path in (self.image_path(image_id), self.label_path(image_id)):
                if not path.is_file():
                    raise InputError(f"VOC file {str(path)!r} (split {split!r}) not found")

    def image_path(self, image_id: str) -> Path:
        return self.root / "JPEGImages" / f"{image_id}.jpg"

    def label_path(self, image_id: str) -> Path:
        return self.root / "SegmentationClass" / f"{image_id}.png"

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> tuple[Image.Image, np.ndarray, str]:
        i = operator.index(index)
        if i < 0:
            i += len(self.ids)
        if not 0 <= i < len(self.ids):
            raise IndexError(f"index {index} out of range for {len(self.ids)} images")
        image_id = self.ids[i]
        image_path, label_path = self.image_path(image_id), self.label_path(image_id)
        try:
            with Image.open(image_path) as handle:
                image = handle.convert("RGB")
        except OSError as err:
            raise InputError(f"cannot read VOC image {str(image_path)!r}: {err}") from None
        try:
            with Image.open(label_path) as handle:
                if handle.mode not in _INDEX_MODES:
                    raise InputError(
                        f"VOC label {str(label_path)!r} has mode {handle.mode!r}; expected a "
                        "palette ('P') or greyscale ('L') PNG whose values are class indices"
                    )
                labels = np.array(handle, dtype=np.uint8)
        except OSError as err:
            raise InputError(f"cannot read VOC label {str(label_path)!r}: {err}") from None
        if labels.shape != (image.height, image.width):
            raise InputError(
                f"VOC label {str(label_path)!r} is {labels.shape[1]}x{labels.shape[0]} but its "
                f"image is {image.width}x{image.height}"
            )
        return image, labels, image_id

    def __repr__(self) -> str:
        return f"VOCSegmentation(root={str(self.root)!r}, split={self.split!r}, n={len(self.ids)})"
