"""Segment the images of a ROS 2 bag; write labels (and overlays) to a new MCAP file.

IN is a ROS 2 MCAP file or a rosbag2 folder (sqlite3 or mcap storage); a recording cut
short (no MCAP summary, no metadata.yaml, a truncated db3) is read as far as it is
readable. Every frame of each --topic (sensor_msgs/msg/Image: rgb8, bgr8, rgba8, bgra8,
mono8, yuv422, yuv422_yuy2, bayer_*8; or CompressedImage: jpeg, png) is segmented, and OUT
gets, per frame of topic T, with the frame's header and log time: T/clippy_rt/labels (mono8,
pixel = class index), T/clippy_rt/classes (std_msgs/msg/String, JSON: the class names and
the model, prompts and settings that produced them) and with --overlay T/clippy_rt/overlay
(rgb8); --out-topic renames them. OUT appears only when complete and never replaces IN.
Needs: pip install 'clippy-rt[ros]'.

Text embeddings are cached on disk (default ~/.cache/clippy-rt/text) so a rerun does not
encode the prompts again; --no-text-cache turns that off.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from .common import add_model_arguments, add_template_arguments, load_engine, positive_int, random_warning, size_arg


def add_arguments(parser) -> None:
    add_model_arguments(parser)
    parser.add_argument("bag", metavar="IN", type=Path, help="ROS 2 MCAP file or rosbag2 folder")
    parser.add_argument("--topic", required=True, action="append",
                        help="image topic, e.g. /camera/image_raw (repeat for several cameras)")
    parser.add_argument("--out-topic", default="{topic}/clippy_rt",
                        help="namespace of each topic's outputs; {topic} is the input topic "
                             "(default: {topic}/clippy_rt)")
    parser.add_argument("--prompts", required=True, help='classes, e.g. "background|floor,person,chair"')
    add_template_arguments(parser)
    parser.add_argument("--out", type=Path, required=True, help="output MCAP file")
    parser.add_argument("--size", type=size_arg, default=None,
                        help="model input size, S or HxW, multiples of the patch size (default: the model's)")
    parser.add_argument("--resize", default="squash", choices=["squash", "letterbox"],
                        help="how frames are fitted to the input size (default: squash)")
    parser.add_argument("--batch", type=positive_int, default=1, help="frames per engine call (default: 1)")
    parser.add_argument("--overlay", action="store_true", help="also write T/clippy_rt/overlay (rgb8)")
    parser.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    parser.add_argument("--text-cache-dir", type=Path, default=None,
                        help="where text embeddings are cached (default: ~/.cache/clippy-rt/text)")
    parser.add_argument("--text-cache", action=argparse.BooleanOptionalAction, default=True,
                        help="cache text embeddings on disk (default: on)")
    parser.add_argument("--quiet", action="store_true", help="no progress display")


def _check_size_early(model: str, size) -> None:
    """Check ``--size`` against the patch size in the model's config.json, where there is
    one, without loading the model (the engine checks it again)."""
    from clippy_rt.api import resolve_model_path
    from clippy_rt.config import ClippyConfig
    from clippy_rt.errors import ClippyError
    from clippy_rt.images import check_input_size

    config = resolve_model_path(model) / "config.json"
    if size is None or not config.is_file():
        return
    try:
        patch_size = ClippyConfig.load(config).image.patch_size
    except (ClippyError, OSError, ValueError, KeyError, TypeError):
        return  # not a config this check understands: the engine checks the size when it loads
    check_input_size(size, patch_size)


class _Progress:
    """``bag [####....] 12/40 3.1s`` on a TTY, a line every 5 % otherwise."""

    def __init__(self, enabled: bool, stream=None) -> None:
        self.enabled = enabled
        self.stream = stream or sys.stderr
        self.start = time.perf_counter()
        self.last_percent = -1

    def __call__(self, done: int, total: int) -> None:
        if not self.enabled:
            return
        elapsed = time.perf_counter() - self.start
        if self.stream.isatty():
            filled = int(30 * done / max(1, total))
            self.stream.write(f"\rbag [{'#' * filled}{'.' * (30 - filled)}] {done}/{total} {elapsed:.1f}s")
            if done >= total:
                self.stream.write("\n")
        else:
            percent = int(100 * done / max(1, total)) // 5 * 5
            if percent == self.last_percent and done < total:
                return
            self.last_percent = percent
            self.stream.write(f"bag: {done}/{total} frames ({elapsed:.1f}s)\n")
        self.stream.flush()


def run(args) -> int:
    from clippy_rt.robotics.bag import check_output, inspect_bag, output_namespaces, process_bag
    from clippy_rt.robotics.processor import FrameProcessor, parse_prompts
    from clippy_rt.text_cache import default_cache_dir

    # Arguments, a missing extra, an unreadable bag, a wrong topic or encoding, and an output
    # that would replace the input are reported before the model loads.
    parse_prompts(args.prompts, args.template)
    _check_size_early(args.model, args.size)
    output_namespaces(args.topic, args.out_topic)
    check_output(args.bag, args.out, args.overwrite)
    inspect_bag(args.bag, args.topic)
    cache_dir = (args.text_cache_dir or default_cache_dir()) if args.text_cache else None
    engine = load_engine(args, text_cache_dir=cache_dir)
    warning = random_warning(engine)
    if warning:
        print(warning, file=sys.stderr)
    processor = FrameProcessor(engine, args.prompts, size=args.size, resize=args.resize, template=args.template,
                               batch=args.batch)
    # SIGINT and SIGTERM unwind (see cli/signals.py), so the partial output is removed.
    report = process_bag(processor, args.bag, args.topic, args.out, overlay=args.overlay,
                         overwrite=args.overwrite, out_topic=args.out_topic, on_progress=_Progress(not args.quiet),
                         log=lambda line: print(f"warning: {line}", file=sys.stderr))
    skipped = f", skipped {report.skipped} unreadable" if report.skipped else ""
    print(f"wrote {report.frames} frames ({len(report.classes)} classes{skipped}) to {report.out}")
    for topic, namespace in report.topics.items():
        print(f"  {topic} -> {namespace}/{{labels,classes{',overlay' if args.overlay else ''}}}")
    return 0
