"""The small CLIPpy shipped with the package, and a demo that segments example scenes with it.

The shipped model (``clippy_rt/data/demo/``) was trained by ``tools/train_clippy.py`` on
generated scenes (``clippy_rt.datasets.synthetic``) from image-level captions only,
with a max-pooled image tower: it segments 64 x 64 scenes of circles, squares,
triangles, stars, crosses and rings over grass, gradients, noise, stripes or sky.
``clippy_rt.load("demo")`` loads it; ``results.json`` next to its weights records its
held-out figures.

    python -m clippy_rt.demo --out demo-out [--images a.png b.png ...]

writes, per image, ``<stem>.labels.png`` (pixel value = class index, in the order of
``clippy_rt.datasets.synthetic.class_names()``), ``<stem>.overlay.png`` and
``<stem>.figure.png`` (input | labels | overlay, enlarged), and ``demo.png``: every
image's figure stacked under a header that names the columns and gives the colour of every
class.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
from PIL import Image

from .errors import InputError, ModelDirError
from .formats.model_dir import demo_model_dir

RESULTS_FILE = "results.json"
# The repository's example scenes (held-out seeds); absent from a wheel install.
EXAMPLES_DIR = Path(__file__).resolve().parent.parent / "examples"
# The scenes are 64 px: the figure enlarges them (nearest neighbour) to be readable.
FIGURE_SCALE = 4

__all__ = ["demo_results", "example_images", "figure", "main", "run_demo"]


def demo_results() -> Dict[str, object]:
    """The held-out figures recorded with the shipped model (``results.json``)."""
    path = demo_model_dir() / RESULTS_FILE
    if not path.is_file():
        raise ModelDirError(f"{path} is missing: the demo model's figures were not shipped")
    return json.loads(path.read_text())


def example_images() -> List[Path]:
    """The example scene PNGs kept in the repository, sorted by name."""
    images = sorted(EXAMPLES_DIR.glob("scene-*.png")) if EXAMPLES_DIR.is_dir() else []
    if not images:
        raise InputError(f"no example images in {EXAMPLES_DIR} (a source checkout has them); "
                         "pass image files with --images")
    return images


def figure(image: Image.Image, labels: np.ndarray, class_names: Sequence[str],
           scale: int = FIGURE_SCALE) -> Image.Image:
    """Input | labels | overlay side by side, each enlarged ``scale`` times (nearest).

    ``labels`` [H, W] are class indices into ``class_names``; the overlay keeps the
    legend of ``clippy_rt.visualize.overlay``. Returns an RGB image.
    """
    from .visualize import label_image, overlay

    if not isinstance(scale, int) or isinstance(scale, bool) or scale < 1:
        raise InputError(f"scale must be a positive integer, got {scale!r}")
    size = (image.width * scale, image.height * scale)
    big_image = image.convert("RGB").resize(size, Image.Resampling.NEAREST)
    big_labels = np.kron(np.asarray(labels), np.ones((scale, scale), dtype=np.asarray(labels).dtype))
    labels_panel = label_image(big_labels, len(class_names)).convert("RGB")
    overlay_panel = overlay(big_image, big_labels, class_names, alpha=0.5)
    gap = 4
    width = big_image.width + labels_panel.width + overlay_panel.width + 2 * gap
    height = max(big_image.height, overlay_panel.height)
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    canvas.paste(big_image, (0, 0))
    canvas.paste(labels_panel, (big_image.width + gap, 0))
    canvas.paste(overlay_panel, (big_image.width + labels_panel.width + 2 * gap, 0))
    return canvas


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: one bitmap size only
        return ImageFont.load_default()


def header(width: int, panel_width: int, class_names: Sequence[str], gap: int = 4) -> Image.Image:
    """The sheet's header: a title, the legend of every class (colour swatch and name, in
    label order) and the titles of the three columns of ``figure`` (panels of
    ``panel_width`` pixels, ``gap`` apart). Returns an RGB image ``width`` pixels wide."""
    from PIL import ImageDraw

    from .visualize import palette

    title_font, font = _font(16), _font(13)
    line = 22
    image = Image.new("RGB", (width, 3 * line + 12), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    draw.text((4, 2), "Zero-shot segmentation by the demo model: each pixel takes the class whose prompt fits best",
              fill=(0, 0, 0), font=title_font)
    left = 4
    for name, colour in zip(class_names, palette(len(class_names))):
        top = line + 4
        draw.rectangle([left, top, left + 14, top + 14], fill=colour, outline=(0, 0, 0))
        draw.text((left + 19, top), name, fill=(0, 0, 0), font=font)
        left += 19 + int(draw.textlength(name, font=font)) + 14
    titles = ("input", "labels (colour = class)", "labels over the input")
    for column, title in enumerate(titles):
        draw.text((column * (panel_width + gap) + 4, 2 * line + 8), title, fill=(0, 0, 0), font=font)
    return image


def run_demo(out: Path, images: Optional[Sequence[Path]] = None, model: str = "demo") -> List[Path]:
    """Segment ``images`` (default: the repository's examples) and write the outputs into
    ``out`` (see the module doc). Returns the written paths, ``demo.png`` last."""
    import clippy_rt
    from .datasets.synthetic import class_names, eval_prompts
    from .images import load_image
    from .formats.atomic import atomic_write
    from .prompts import NO_TEMPLATE
    from .visualize import save_label_png, save_overlay

    paths = [Path(p) for p in images] if images else example_images()
    stems = [p.stem for p in paths]
    if len(set(stems)) != len(stems):
        raise InputError("two images share a file name stem; their outputs would overwrite each other")
    pictures = [load_image(p) for p in paths]
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} exists and is not a directory")
    out.mkdir(parents=True, exist_ok=True)
    engine = clippy_rt.load(model)
    names = class_names()
    # The evaluation's own prompts, as its figures are measured: used verbatim.
    segmentations = engine.segment(pictures, eval_prompts(), template=NO_TEMPLATE)
    written: List[Path] = []
    rows = []
    for stem, picture, seg in zip(stems, pictures, segmentations):
        labels = seg.labels.numpy()
        written.append(save_label_png(labels, out / f"{stem}.labels.png", len(names)))
        written.append(save_overlay(picture, labels, names, out / f"{stem}.overlay.png"))
        row = figure(picture, labels, names)
        written.append(atomic_write(out / f"{stem}.figure.png", lambda h, r=row: r.save(h, format="PNG")))
        rows.append(row)
    gap = 6
    width = max(r.width for r in rows)
    top_bar = header(width, pictures[0].width * FIGURE_SCALE, names)
    sheet = Image.new("RGB", (width, top_bar.height + sum(r.height for r in rows) + gap * (len(rows) - 1)),
                      (255, 255, 255))
    sheet.paste(top_bar, (0, 0))
    top = top_bar.height
    for row in rows:
        sheet.paste(row, (0, top))
        top += row.height + gap
    written.append(atomic_write(out / "demo.png", lambda h: sheet.save(h, format="PNG")))
    return written


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m clippy_rt.demo ARGS`` is ``clippy-rt demo ARGS`` (``clippy_rt.cli.demo``)."""
    from .cli.main import main as cli_main

    return cli_main(["demo", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
