"""Segment example scenes with the small model shipped with the package.

Writes, per image, <stem>.labels.png, <stem>.overlay.png and <stem>.figure.png (input |
labels | overlay), and demo.png with every figure stacked. `python -m clippy_rt.demo` runs
this command.
"""

from __future__ import annotations

from pathlib import Path


def add_arguments(parser) -> None:
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--images", type=Path, nargs="+", default=None,
                        help="images to segment (default: the repository's examples/scene-*.png)")
    parser.add_argument("--model", default="demo", help="model directory (default: the shipped model)")


def run(args) -> int:
    from clippy_rt.demo import run_demo

    written = run_demo(args.out, args.images, args.model)
    print(f"wrote {len(written)} files to {args.out} (overview: {written[-1]})")
    return 0
