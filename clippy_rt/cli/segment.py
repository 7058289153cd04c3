"""Segment images with free-text prompts; write label, overlay and mask PNGs.

For each IMAGE writes into --out <stem>.labels.png (pixel value = class index: an 8-bit
palette PNG for up to 256 classes, a 16-bit grayscale PNG for more) and <stem>.overlay.png
(the image with each class's colour blended in, the same size as the image), and once
legend.png (each class's colour and name). --save-masks adds one binary mask per class,
<stem>.mask-<index>-<class>.png (255 inside, 0 outside). Classes are separated by commas;
synonyms of one class by '|': --prompts "background|sky|wall,cat,dog". Each prompt is filled
into the model's prompt template (``clippy-rt info`` prints it; the public checkpoint's is
"a photo of {article} {}"), or into --template's; --no-template uses the prompts verbatim.

The labels have the image's size; with --resize crop they cover the centred crop the model
saw (the shorter side whole for a square input), whose box --json reports, and the overlay
paints only that part of the image.

--classes NAME,... keeps those classes (in that order) and --min-score S marks pixels whose
winning similarity is below S: with either, the outputs get one more class, "unknown",
holding the pixels of the classes left out and those below the score. The classes still
compete as before.

Each image is decoded when its turn comes and its files are written as soon as it is done,
each atomically: an interrupted run leaves the finished images' files complete and nothing
half-written; running it again rewrites them.

--source takes a folder, a glob, a video file, a camera index or a stream URL instead of
IMAGE files (``clippy_rt.sources``; videos, cameras and streams need OpenCV: pip install
'clippy-rt[video]'). Its frames go through ``engine.stream`` (CUDA graphs on a GPU); with
--out each frame's files are written as for an image, named <name>.labels.png and so on
(video frames are named <video stem>_<frame index>), --save-video FILE writes the overlays
as a video (.mp4 or .avi), --show opens a live window (needs a display and OpenCV with its
GUI), --max-frames stops a camera or stream. At the end it prints the frames, frames per
second and the median stage timings.

--json prints per image its input size, the labels' size, the crop box (top, left, height,
width; null unless --resize crop), the pixel fraction of each class, the timings and the
files written.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path

from .common import (add_model_arguments, add_template_arguments, load_engine, model_prompts, positive_int, print_json,
                     progress, random_warning, size_arg, str_list)


def add_arguments(parser) -> None:
    add_model_arguments(parser)
    parser.add_argument("images", nargs="*", metavar="IMAGE", help="image files (or use --source)")
    parser.add_argument("--source", default=None,
                        help="a folder, glob, video file, camera index or rtsp:// URL instead of IMAGE files")
    parser.add_argument("--save-video", type=Path, default=None, help="with --source: write the overlays as a video")
    parser.add_argument("--show", action="store_true", help="with --source: show the overlays in a window")
    parser.add_argument("--max-frames", type=positive_int, default=None,
                        help="with --source: stop after this many frames")
    parser.add_argument("--prompts", required=True, help='classes, e.g. "background|sky,cat,dog"')
    add_template_arguments(parser)
    parser.add_argument("--size", type=size_arg, default=None,
                        help="model input size, S or HxW, multiples of the patch size (default: the model's)")
    parser.add_argument("--resize", default="squash", choices=["squash", "crop", "letterbox"],
                        help="how images are fitted to the input size (default: squash)")
    parser.add_argument("--out", type=Path, default=None, help="output directory for the PNGs")
    parser.add_argument("--save-masks", action="store_true",
                        help="with --out: also write one binary mask PNG per class")
    parser.add_argument("--classes", type=str_list, default=None,
                        help="keep only these classes (comma-separated class names); the rest become 'unknown'")
    parser.add_argument("--min-score", type=float, default=None,
                        help="pixels whose winning similarity is below this become 'unknown'")
    parser.add_argument("--json", action="store_true",
                        help="print per image its sizes, crop box, class fractions, timings and files")


def run(args) -> int:
    import sys

    from clippy_rt.errors import InputError
    from clippy_rt.images import load_image, probe_image
    from clippy_rt.prompts import check_template, parse_cli_prompts

    # The prompts as given; the template (--template's or the model's) is applied once the
    # model is loaded (model_prompts).
    prompt_set = parse_cli_prompts(args.prompts)
    check_template(args.template)
    if (args.source is None) == (not args.images):
        raise InputError("give IMAGE files or --source, not both" if args.images else
                         "give IMAGE files or --source (a folder, glob, video, camera index or stream URL)")
    if args.source is None and (args.save_video or args.show or args.max_frames):
        raise InputError("--save-video, --show and --max-frames go with --source")
    if args.save_masks and args.out is None:
        raise InputError("--save-masks goes with --out (the directory the masks are written to)")
    classes = _output_classes(args, prompt_set.classes)
    if args.out is not None and args.out.exists() and not args.out.is_dir():
        raise InputError(f"--out {args.out} exists and is not a directory")
    if args.source is not None:
        return _run_source(args, prompt_set, classes)
    paths = [Path(p) for p in args.images]
    stems = [p.stem for p in paths]
    if args.out is not None and len(set(stems)) != len(stems):
        raise InputError("two images share a file name stem; their outputs would overwrite each other")
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

    prompt_set = model_prompts(prompt_set, args, engine)
    legend = _start_out(args.out, classes)
    report = []
    for path in progress(paths, "segment", enabled=not args.json):
        image = load_image(path)
        result = _selected(engine.segment(image, prompt_set, size=args.size, resize=args.resize), args)
        files = _write_outputs(args.out, path.stem, image, result, args.save_masks) if args.out else None
        report.append({"image": str(path), **_describe(image.height, image.width, result, files)})

    if args.json:
        print_json({"model": str(args.model), "backend": engine.backend, "random_weights": engine.random_weights,
                    "classes": classes, "legend": legend, "images": report})
    else:
        for item in report:
            top = sorted(item["fractions"].items(), key=lambda kv: -kv[1])[:3]
            shown = ", ".join(f"{name} {100 * frac:.1f}%" for name, frac in top)
            print(f"{item['image']}: {shown}")
        if args.out is not None:
            written = sum(2 + len(item["files"]["masks"]) for item in report)
            print(f"wrote {written + 1} files to {args.out}")
    return 0


def _output_classes(args, prompt_classes):
    """The classes the outputs name: the prompts' classes, or with --classes / --min-score the
    kept ones and "unknown" (checked here, before the model loads)."""
    from clippy_rt.errors import InputError
    from clippy_rt.results import UNKNOWN

    if args.min_score is not None and not math.isfinite(args.min_score):
        raise InputError(f"--min-score must be a finite number, got {args.min_score}")
    if args.classes is None and args.min_score is None:
        return list(prompt_classes)
    kept = list(prompt_classes) if args.classes is None else args.classes
    missing = [name for name in kept if name not in prompt_classes]
    if missing:
        raise InputError(f"--classes names {', '.join(map(repr, missing))}, not among the classes of --prompts: "
                         f"{', '.join(prompt_classes)}")
    if len(set(kept)) != len(kept):
        raise InputError("--classes names a class twice")
    if UNKNOWN in kept:
        raise InputError(f"with --classes or --min-score the class {UNKNOWN!r} is the outputs' own; "
                         f"name the prompt's class differently")
    return kept + [UNKNOWN]


def _selected(result, args):
    if args.classes is None and args.min_score is None:
        return result
    return result.select(args.classes, args.min_score)


def _start_out(out, classes):
    """Create --out and write its legend.png; returns the legend's path (None without --out)."""
    if out is None:
        return None
    from clippy_rt.visualize import class_legend, save_image

    _make_out(out)
    return str(save_image(class_legend(classes), out / "legend.png"))


def _make_out(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OSError(f"cannot create --out {out}: {exc.strerror or exc}") from None
    if not os.access(out, os.W_OK | os.X_OK):
        raise OSError(f"cannot write to --out {out}: permission denied")


def _mask_name(index: int, name: str) -> str:
    slug = re.sub(r"[^A-Za-z0-9]+", "_", name).strip("_")[:40]
    return f"mask-{index:02d}-{slug}" if slug else f"mask-{index:02d}"


def _full_frame_labels(labels, frame_size, crop_box, n_classes):
    """``labels`` [h, w] placed at ``crop_box`` (top, left, h, w) in an int64 frame of
    ``frame_size`` (H, W) whose other pixels hold ``n_classes`` (no class: an overlay leaves
    them unpainted); ``labels`` itself without a crop box."""
    import numpy as np

    labels = labels.detach().cpu().numpy() if hasattr(labels, "detach") else np.asarray(labels)
    if crop_box is None:
        return labels
    top, left, height, width = crop_box
    frame = np.full(frame_size, n_classes, dtype=np.int64)
    frame[top:top + height, left:left + width] = labels
    return frame


def _write_outputs(out: Path, name: str, image, result, save_masks: bool) -> dict:
    """Write one image's labels, overlay and (with ``save_masks``) masks into ``out``, each
    atomically and all or none of them; returns their paths."""
    import numpy as np

    from clippy_rt.visualize import save_label_png, save_mask_png, save_overlay

    classes = list(result.prompts)
    frame = np.asarray(image)
    files = {"labels": out / f"{name}.labels.png", "overlay": out / f"{name}.overlay.png", "masks": []}
    # Each path is listed before its write starts: a signal that lands after a file's
    # rename but before the write returns still finds it in the list.
    written = []
    try:
        written.append(files["labels"])
        save_label_png(result.labels, files["labels"], len(classes))
        full = _full_frame_labels(result.labels, frame.shape[:2], result.crop_box, len(classes))
        written.append(files["overlay"])
        save_overlay(np.ascontiguousarray(frame), full, classes, files["overlay"], legend=False)
        if save_masks:
            for index, mask in enumerate(result.to_masks()):
                path = out / f"{name}.{_mask_name(index, classes[index])}.png"
                written.append(path)
                save_mask_png(mask, path)
                files["masks"].append(path)
    except BaseException:
        # An image's files appear together or not at all (Ctrl-C between two of them).
        for path in written:
            path.unlink(missing_ok=True)
        raise
    return {"labels": str(files["labels"]), "overlay": str(files["overlay"]),
            "masks": [str(p) for p in files["masks"]]}


def _describe(height: int, width: int, result, files) -> dict:
    """One image's JSON entry (without its name)."""
    entry = {"input_size": [int(height), int(width)],
             "output_size": [int(result.labels.shape[0]), int(result.labels.shape[1])],
             "crop_box": [int(v) for v in result.crop_box] if result.crop_box is not None else None,
             "fractions": result.fractions(),
             "timings_ms": {k: round(v, 3) for k, v in result.timings_ms.items()}}
    if files is not None:
        entry["files"] = files
    return entry


def _run_source(args, prompt_set, classes) -> int:
    """--source: frames through ``engine.stream``; PNGs, a video, a window, a summary."""
    import statistics
    import sys

    import numpy as np

    from clippy_rt.errors import InputError
    from clippy_rt.sources import FrameClock, VideoWriter, import_cv2, open_source
    from clippy_rt.visualize import overlay

    if args.show and not (sys.platform in ("win32", "darwin") or os.environ.get("DISPLAY")
                          or os.environ.get("WAYLAND_DISPLAY")):
        raise InputError("--show needs a display (no DISPLAY or WAYLAND_DISPLAY here); use --save-video or --out")
    # The source opens (and a video's header is read) before the model loads.
    source = open_source(args.source, max_frames=args.max_frames)
    writer = None
    with source:
        writer = VideoWriter(args.save_video, source.fps or 30.0) if args.save_video else None
        engine = load_engine(args)
        warning = random_warning(engine)
        if warning:
            print(warning, file=sys.stderr)
        stream = engine.stream(model_prompts(prompt_set, args, engine), size=args.size, resize=args.resize, batch=1)
        legend = _start_out(args.out, classes)
        clock, stream_ms, report, finished = FrameClock(), [], [], False
        cv2 = import_cv2() if args.show else None
        try:
            for frame in source:
                patch = engine.config.image.patch_size
                if min(frame.image.shape[:2]) < patch:
                    raise InputError(f"{frame.name}: frame is {frame.image.shape[1]}x{frame.image.shape[0]} "
                                     f"pixels, smaller than one {patch}x{patch} patch")
                seg = _selected(stream(frame.image), args)
                files = None
                if args.out is not None:
                    files = _write_outputs(args.out, frame.name, frame.image, seg, args.save_masks)
                if writer is not None or cv2 is not None:
                    full = _full_frame_labels(seg.labels, frame.image.shape[:2], seg.crop_box, len(classes))
                    picture = np.asarray(overlay(np.ascontiguousarray(frame.image), full, classes, legend=False))
                    if writer is not None:
                        writer.write(picture)
                    if cv2 is not None:
                        cv2.imshow("clippy-rt", cv2.cvtColor(picture, cv2.COLOR_RGB2BGR))
                        if cv2.waitKey(1) & 0xFF in (ord("q"), 27):
                            break
                clock.tick()
                stream_ms.append(seg.timings_ms["stream"])
                height, width = frame.image.shape[:2]
                entry = _describe(height, width, seg, files)
                del entry["timings_ms"]
                report.append({"frame": frame.name, "index": frame.index, "time_s": frame.time_s, **entry})
            finished = True
        finally:
            if writer is not None:
                writer.close(keep=finished)
            if cv2 is not None:
                cv2.destroyAllWindows()
    summary = {"source": str(args.source), "kind": source.kind, "frames": clock.frames,
               "frames_per_s": round(clock.fps, 2),
               "stream_ms_median": round(statistics.median(stream_ms), 3) if stream_ms else None,
               "video": str(args.save_video) if writer is not None and writer.frames else None}
    if args.json:
        print_json({"model": str(args.model), "backend": engine.backend, "random_weights": engine.random_weights,
                    "classes": classes, "legend": legend, **summary, "per_frame": report})
        return 0
    print(f"{summary['frames']} frames from {source.kind} {args.source}: {summary['frames_per_s']} frames/s, "
          f"median {summary['stream_ms_median']} ms a frame in the engine")
    if args.out is not None:
        written = sum(2 + len(item["files"]["masks"]) for item in report)
        print(f"wrote {written + 1} files to {args.out}")
    if summary["video"]:
        print(f"wrote {summary['video']} ({writer.frames} frames)")
    return 0
