"""Helpers shared by the subcommands: argument types, progress display, JSON output."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Iterator, List, Optional, Sequence, TypeVar

T = TypeVar("T")


def int_list(text: str) -> List[int]:
    """``"224,448"`` -> [224, 448]."""
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def positive_int(text: str) -> int:
    """``"12"`` -> 12; zero, negatives and non-integers are refused."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def str_list(text: str) -> List[str]:
    values = [part.strip() for part in text.split(",") if part.strip()]
    if not values:
        raise argparse.ArgumentTypeError(f"expected a comma-separated list, got {text!r}")
    return values


def size_arg(text: str):
    """``"448"`` -> 448; ``"320x480"`` -> (320, 480) (height x width)."""
    try:
        if "x" in text:
            height, width = (int(v) for v in text.lower().split("x"))
            if height <= 0 or width <= 0:
                raise ValueError
            return (height, width)
        value = int(text)
        if value <= 0:
            raise ValueError
        return value
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected SIZE or HxW with positive integers, got {text!r}") from None


def add_model_arguments(parser: argparse.ArgumentParser, *, model_help: str = None, threads: bool = True) -> None:
    """MODEL, --backend, --device, --precision and (with ``threads``) --threads."""
    parser.add_argument("model", help=model_help or "model directory (or ONNX / engine directory, or 'demo')")
    from clippy_rt.backends import BACKENDS
    from clippy_rt.precisions import PRECISIONS

    parser.add_argument("--backend", default=None, choices=list(BACKENDS),
                        help="inference backend (default: the one that loads MODEL's kind: torch for a model "
                             "directory, onnxruntime for an ONNX directory, tensorrt for an engine directory)")
    parser.add_argument("--device", default=None,
                        help="cpu or cuda[:N] (default: cpu; cuda for tensorrt)")
    parser.add_argument("--precision", default=None, choices=list(PRECISIONS),
                        help="compute precision (default: fp32; for tensorrt, the engine's; int8: "
                             "onnxruntime on the CPU)")
    if threads:
        parser.add_argument("--threads", type=positive_int, default=None,
                            help="CPU threads for torch and ONNX Runtime (default: each library's own choice)")


def add_template_arguments(parser: argparse.ArgumentParser, what: str = "prompt") -> None:
    """--template T / --no-template: the template each {what} is filled into; by default the
    model's own (its config's prompt_template, printed by ``clippy-rt info``)."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--template", default=None,
                       help=f'template with {{}} for each {what}, e.g. "a photo of {{article}} {{}}" '
                            f"(default: the model's template, see clippy-rt info)")
    group.add_argument("--no-template", dest="template", action="store_const", const="{}",
                       help=f"use each {what} verbatim")


def model_prompts(prompt_set, args, engine):
    """The CLI's prompt set with its template: --template's, or the loaded model's."""
    from clippy_rt.prompts import build_prompt_set, resolve_template

    return build_prompt_set(prompt_set, resolve_template(args.template, engine.template))


def load_engine(args, **kwargs):
    """``clippy_rt.load`` with the model arguments of ``add_model_arguments``."""
    import clippy_rt

    return clippy_rt.load(args.model, backend=args.backend, device=args.device, precision=args.precision,
                          threads=args.threads, **kwargs)


def progress(items: Sequence[T], label: str, *, stream=None, enabled: bool = True) -> Iterator[T]:
    """Yield ``items`` while drawing a progress bar on stderr (a line per item when not a TTY)."""
    stream = stream or sys.stderr
    total = len(items)
    if not enabled or total <= 1:
        yield from items
        return
    tty = hasattr(stream, "isatty") and stream.isatty()
    start = time.perf_counter()
    for index, item in enumerate(items, 1):
        yield item
        elapsed = time.perf_counter() - start
        if tty:
            filled = int(30 * index / total)
            stream.write(f"\r{label} [{'#' * filled}{'.' * (30 - filled)}] {index}/{total} {elapsed:.1f}s")
            if index == total:
                stream.write("\n")
        else:
            stream.write(f"{label}: {index}/{total} ({elapsed:.1f}s)\n")
        stream.flush()


def print_json(data) -> None:
    json.dump(data, sys.stdout, indent=2)
    sys.stdout.write("\n")


def random_warning(engine) -> Optional[str]:
    if getattr(engine, "random_weights", False):
        return "warning: this model has RANDOM weights; its outputs carry no meaning"
    return None
