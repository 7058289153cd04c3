"""Segment images with free-text prompts; write label and overlay PNGs.

For each IMAGE writes <stem>.labels.png (pixel value = class index: an 8-bit palette PNG
for up to 256 classes, a 16-bit grayscale PNG for more) and <stem>.overlay.png (colour
overlay with a legend) into --out. Classes are separated by commas; synonyms of one class
by '|': --prompts "background|sky|wall,cat,dog".

Each image is decoded when its turn comes and its two files are written as soon as it is
done, each atomically: an interrupted run leaves the finished images' files complete and
nothing half-written; running it again rewrites them.
"""

from __future__ import annotations

from pathlib import Path

from .common import add_model_arguments, load_engine, print_json, progress, random_warning, size_arg


def add_arguments(parser) -> None:
    add_model_arguments(parser)
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="image files")
    parser.add_argument("--prompts", required=True, help='classes, e.g. "background|sky,cat,dog"')
    parser.add_argument("--template", default=None,
                        help='prompt template with {} for the prompt, e.g. "a photo of {article} {}" '
                             '(default: prompts verbatim)')
    parser.add_argument("--size", type=size_arg, default=None,
                        help="model input size, S or HxW, multiples of the patch size (default: the model's)")
    parser.add_argument("--resize", default="squash", choices=["squash", "crop", "letterbox"],
                        help="how images are fitted to the input size (default: squash)")
    parser.add_argument("--out", type=Path, default=None, help="output directory for the PNGs")
    parser.add_argument("--json", action="store_true",
                        help="print per image the pixel fraction of each class and the timings")


def run(args) -> int:
    import sys

    from clippy_rt.errors import InputError
    from clippy_rt.images import load_image, probe_image
    from clippy_rt.prompts import build_prompt_set, parse_cli_prompts
    from clippy_rt.visualize import save_label_png, save_overlay

    prompt_set = build_prompt_set(parse_cli_prompts(args.prompts), args.template)
    paths = [Path(p) for p in args.images]
    stems = [p.stem for p in paths]
    if args.out is not None and len(set(stems)) != len(stems):
        raise InputError("two images share a file name stem; their outputs would overwrite each other")
    if args.out is not None and args.out.exists() and not args.out.is_dir():
        raise InputError(f"--out {args.out} exists and is not a directory")
    # Every file's header is read before the model loads: a missing or unreadable file
    # fails up front. The pixels are decoded one image at a time, below.
    sizes = [probe_image(p) for p in paths]
    engine = load_engine(args)
    warning = random_warning(engine)
    if warning:
        print(warning, file=sys.stderr)
    patch = engine.config.image.patch_size
    for path, (width, height) in zip(paths, sizes):
        if min(width, height) < patch:
            raise InputError(f"{path}: image is {width}x{height} pixels (width x height), "
                             f"smaller than one {patch}x{patch} patch")

    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
    report = []
    for path in progress(paths, "segment", enabled=not args.json):
        image = load_image(path)
        result = engine.segment(image, prompt_set, size=args.size, resize=args.resize)
        if args.out is not None:
            shown = image
            if result.crop_box is not None:
                top, left, height, width = result.crop_box
                shown = image.crop((left, top, left + width, top + height))
            pair = (args.out / f"{path.stem}.labels.png", args.out / f"{path.stem}.overlay.png")
            try:
                save_label_png(result.labels, pair[0], len(result.prompts))
                save_overlay(shown, result.labels, list(result.prompts), pair[1])
            except BaseException:
                # An image's two files appear together or not at all (Ctrl-C between the two).
                for written in pair:
                    written.unlink(missing_ok=True)
                raise
        report.append({
            "image": str(path),
            "size": [int(result.labels.shape[0]), int(result.labels.shape[1])],
            "fractions": result.fractions(),
            "timings_ms": {k: round(v, 3) for k, v in result.timings_ms.items()},
        })

    if args.json:
        print_json({"model": str(args.model), "backend": engine.backend, "random_weights": engine.random_weights,
                    "classes": list(prompt_set.classes), "images": report})
    else:
        for item in report:
            top = sorted(item["fractions"].items(), key=lambda kv: -kv[1])[:3]
            shown = ", ".join(f"{name} {100 * frac:.1f}%" for name, frac in top)
            print(f"{item['image']}: {shown}")
        if args.out is not None:
            print(f"wrote {2 * len(report)} files to {args.out}")
    return 0
