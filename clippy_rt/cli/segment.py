"""Segment images with free-text prompts; write label and overlay PNGs.

For each IMAGE writes <stem>.labels.png (pixel value = class index: an 8-bit palette PNG
for up to 256 classes, a 16-bit grayscale PNG for more) and <stem>.overlay.png (colour
overlay with a legend) into --out. Classes are separated by commas; synonyms of one class
by '|': --prompts "background|sky|wall,cat,dog".

Each image is decoded when its turn comes and its two files are written as soon as it is
done, each atomically: an interrupted run leaves the finished images' files complete and
nothing half-written; running it again rewrites them.

--source takes a folder, a glob, a video file, a camera index or a stream URL instead of
IMAGE files (``clippy_rt.sources``; videos, cameras and streams need OpenCV: pip install
'clippy-rt[video]'). Its frames go through ``engine.stream`` (CUDA graphs on a GPU); with
--out each frame's two PNGs are written as <name>.labels.png / <name>.overlay.png (video
frames are named <video stem>_<frame index>), --save-video FILE writes the overlays as a
video (.mp4 or .avi), --show opens a live window (needs a display and OpenCV with its GUI),
--max-frames stops a camera or stream. At the end it prints the frames, frames per second
and the median stage timings.
"""

from __future__ import annotations

import os
from pathlib import Path

from .common import add_model_arguments, load_engine, positive_int, print_json, progress, random_warning, size_arg


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
    if (args.source is None) == (not args.images):
        raise InputError("give IMAGE files or --source, not both" if args.images else
                         "give IMAGE files or --source (a folder, glob, video, camera index or stream URL)")
    if args.source is None and (args.save_video or args.show or args.max_frames):
        raise InputError("--save-video, --show and --max-frames go with --source")
    if args.source is not None:
        return _run_source(args, prompt_set)
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


def _run_source(args, prompt_set) -> int:
    """--source: frames through ``engine.stream``; PNGs, a video, a window, a summary."""
    import statistics
    import sys

    import numpy as np

    from clippy_rt.errors import InputError
    from clippy_rt.sources import FrameClock, VideoWriter, import_cv2, open_source
    from clippy_rt.visualize import overlay, save_label_png, save_overlay

    if args.out is not None and args.out.exists() and not args.out.is_dir():
        raise InputError(f"--out {args.out} exists and is not a directory")
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
        stream = engine.stream(prompt_set, size=args.size, resize=args.resize, batch=1)
        classes = list(prompt_set.classes)
        if args.out is not None:
            args.out.mkdir(parents=True, exist_ok=True)
        clock, stream_ms, report, finished = FrameClock(), [], [], False
        cv2 = import_cv2() if args.show else None
        try:
            for frame in source:
                patch = engine.config.image.patch_size
                if min(frame.image.shape[:2]) < patch:
                    raise InputError(f"{frame.name}: frame is {frame.image.shape[1]}x{frame.image.shape[0]} "
                                     f"pixels, smaller than one {patch}x{patch} patch")
                seg = stream(frame.image)
                shown = frame.image
                if seg.crop_box is not None:
                    top, left, height, width = seg.crop_box
                    shown = frame.image[top:top + height, left:left + width]
                if args.out is not None:
                    pair = (args.out / f"{frame.name}.labels.png", args.out / f"{frame.name}.overlay.png")
                    try:
                        save_label_png(seg.labels, pair[0], len(classes))
                        save_overlay(shown, seg.labels, classes, pair[1])
                    except BaseException:
                        for written in pair:
                            written.unlink(missing_ok=True)
                        raise
                if writer is not None or cv2 is not None:
                    picture = np.asarray(overlay(np.ascontiguousarray(shown), seg.labels, classes, legend=False))
                    if writer is not None:
                        writer.write(picture)
                    if cv2 is not None:
                        cv2.imshow("clippy-rt", cv2.cvtColor(picture, cv2.COLOR_RGB2BGR))
                        if cv2.waitKey(1) & 0xFF in (ord("q"), 27):
                            break
                clock.tick()
                stream_ms.append(seg.timings_ms["stream"])
                report.append({"frame": frame.name, "index": frame.index, "time_s": frame.time_s,
                               "input_size": list(frame.image.shape[:2]),
                               "size": [int(seg.labels.shape[0]), int(seg.labels.shape[1])],
                               "crop_box": list(seg.crop_box) if seg.crop_box is not None else None,
                               "fractions": seg.fractions()})
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
                    "classes": classes, **summary, "per_frame": report})
        return 0
    print(f"{summary['frames']} frames from {source.kind} {args.source}: {summary['frames_per_s']} frames/s, "
          f"median {summary['stream_ms_median']} ms a frame in the engine")
    if args.out is not None:
        print(f"wrote {2 * clock.frames} files to {args.out}")
    if summary["video"]:
        print(f"wrote {summary['video']} ({writer.frames} frames)")
    return 0
