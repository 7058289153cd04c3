"""Image classification folders (the ImageNet layouts), the 1,000 ImageNet class names and
the 80 prompt templates of CLIP's ImageNet zero-shot ensemble.

Two layouts are read:

- class folders (torchvision's ``ImageFolder``): ``root/<class folder>/<image>``; the class
  index of an image is the position of its folder among the sorted folder names, so an
  ILSVRC2012 val tree with one folder per WordNet id (``n01440764``, ...) gets the standard
  class order, the order of ``imagenet_classes()``;
- a labels file: ``root/<image>`` with a text file of ``<image path relative to root>
  <class index>`` lines (0-based, in the order of the class names used).

Images are the files whose suffix is one of ``IMAGE_SUFFIXES`` (any case), sorted by path.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

from clippy_rt.errors import InputError

__all__ = ["IMAGE_SUFFIXES", "ImageFolderSet", "imagenet_classes", "openai_templates", "open_image_folder",
           "read_class_names"]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


def _data_lines(name: str) -> List[str]:
    text = resources.files("clippy_rt").joinpath("data", name).read_text(encoding="utf-8")
    return [line for line in text.splitlines() if line and not line.startswith("#")]


def imagenet_classes() -> List[str]:
    """The 1,000 ImageNet-1k class names (CLIP's curated names), in WordNet-id order.
    Two pairs of classes share a name ("missile", "sunglasses"): their class embeddings are
    equal, as in the reference evaluation."""
    return _data_lines("imagenet_classes.txt")


def openai_templates() -> List[str]:
    """The 80 templates of CLIP's ImageNet ensemble ("a bad photo of a {}.", ...)."""
    return _data_lines("imagenet_templates.txt")


def read_class_names(path) -> List[str]:
    """One class name a line (blank lines and ``#`` comments skipped); InputError when the
    file cannot be read, is empty, or names a class twice."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read the class list {path}: {exc}") from exc
    names = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    if not names:
        raise InputError(f"the class list {path} names no class")
    seen = set()
    for name in names:
        if name in seen:
            raise InputError(f"the class list {path} names {name!r} twice")
        seen.add(name)
    return names


@dataclass(frozen=True)
class ImageFolderSet:
    """The images of a classification folder: ``items`` are (path, class index), sorted by
    path; ``classes`` the class names, index order; ``layout`` "folders" or "labels"."""

    root: Path
    items: Tuple[Tuple[Path, int], ...]
    classes: Tuple[str, ...]
    layout: str

    def __len__(self) -> int:
        return len(self.items)


def _is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES and path.is_file()


def _class_folders(root: Path) -> List[Path]:
    return sorted((p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")), key=lambda p: p.name)


def _names_for(count: int, classes: Optional[Sequence[str]], folders: Optional[List[str]], source: str) -> List[str]:
    if classes is None:
        if count == 1000:
            return imagenet_classes()
        raise InputError(f"{source} has {count} classes, not ImageNet's 1,000: give their names with "
                         "--classes FILE (one a line, in sorted folder order)"
                         + (" or --classes folders (the folder names)" if folders is not None else ""))
    if classes == "folders":
        if folders is None:
            raise InputError("--classes folders needs the class-folder layout")
        return list(folders)
    if len(classes) != count:
        raise InputError(f"{source} has {count} classes but the class list names {len(classes)}")
    return list(classes)


def open_image_folder(root, *, classes=None, labels=None, limit: Optional[int] = None) -> ImageFolderSet:
    """A classification set from ``root``.

    ``labels``: a labels file (the second layout); otherwise ``root`` holds class folders.
    ``classes``: the class names (a sequence, in index order), ``"folders"`` for the folder
    names, or None for ImageNet's 1,000 (the folder count must then be 1,000). ``limit``:
    the first N images only. Every problem (missing folder, empty class folder, a labels
    line that does not parse or names a missing file or an index out of range) is an
    InputError before any model runs.
    """
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"no such folder: {root}")
    if labels is None:
        folders = _class_folders(root)
        if not folders:
            raise InputError(f"{root} has no class folders (root/<class>/<image>), and no labels file was given")
        items = []
        for index, folder in enumerate(folders):
            images = sorted(p for p in folder.rglob("*") if _is_image(p))
            if not images:
                raise InputError(f"class folder {folder} holds no images ({', '.join(IMAGE_SUFFIXES)})")
            items.extend((path, index) for path in images)
        names = _names_for(len(folders), classes, [f.name for f in folders], str(root))
        layout = "folders"
    else:
        names = _names_for(1000, None, None, "") if classes is None else None
        items = []
        try:
            lines = Path(labels).read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise InputError(f"cannot read the labels file {labels}: {exc}") from exc
        for number, line in enumerate(lines, 1):
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            relative, _, index = line.strip().rpartition(" ")
            if not relative or not index.lstrip("-").isdigit():
                raise InputError(f"{labels}:{number}: expected '<image path> <class index>', got {line!r}")
            path = root / relative.strip()
            if not _is_image(path):
                raise InputError(f"{labels}:{number}: no image {path}")
            items.append((path, int(index)))
        if not items:
            raise InputError(f"the labels file {labels} lists no image")
        if names is None:
            names = "folders" if classes == "folders" else list(classes)
            if names == "folders":
                raise InputError("--classes folders needs the class-folder layout")
        for path, index in items:
            if not 0 <= index < len(names):
                raise InputError(f"{labels}: class index {index} of {path.name} is outside 0..{len(names) - 1}")
        items.sort(key=lambda item: os.fspath(item[0]))
        layout = "labels"
    if limit is not None:
        items = items[:limit]
    return ImageFolderSet(root=root, items=tuple(items), classes=tuple(names), layout=layout)
