"""Plot validation curves of ``train_clippy.py`` runs side by side.

    python tools/plot_training.py --out docs/training_curves.png \
        "max pooling=runs/max/log.jsonl" "class token=runs/cls/log.jsonl"

Each ``LABEL=LOG`` argument is one run's ``log.jsonl``; the figure has three panels
against the training step: validation mIoU, background IoU and mean shape IoU.
Writes the PNG atomically.

This script is not part of the runtime package and is never imported by it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from clippy_rt.formats.atomic import atomic_write


def read_curve(log: Path) -> list:
    """The ``eval`` entries of one run's log, in step order."""
    entries = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    return sorted((e for e in entries if e.get("event") == "eval"), key=lambda e: e["step"])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="PNG to write")
    parser.add_argument("runs", nargs="+", help="LABEL=RUN/log.jsonl")
    args = parser.parse_args(argv)
    runs = []
    for spec in args.runs:
        label, sep, path = spec.partition("=")
        if not sep or not Path(path).is_file():
            parser.error(f"expected LABEL=LOG with an existing log file, got {spec!r}")
        curve = read_curve(Path(path))
        if not curve:
            parser.error(f"{path} holds no evaluation entries")
        runs.append((label, curve))

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = (("validation mIoU (%)", lambda e: e["miou"]),
              ("background IoU (%)", lambda e: e["iou"]["background"]),
              ("mean shape IoU (%)", lambda e: e.get("shape_iou", float("nan"))))
    figure, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4))
    for axis, (title, value) in zip(axes, panels):
        for label, curve in runs:
            axis.plot([e["step"] for e in curve], [100 * value(e) for e in curve], marker=".", label=label)
        axis.set_title(title)
        axis.set_xlabel("step")
        axis.grid(alpha=0.3)
    axes[0].legend()
    figure.tight_layout()
    atomic_write(args.out, lambda handle: figure.savefig(handle, format="png", dpi=110))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
