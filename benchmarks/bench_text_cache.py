"""Text-embedding cache: what a restart costs with and without the on-disk store.

For one model (a directory, or a random-weight ``--arch`` made in a temporary folder) and
the 21 PASCAL VOC class names, timed side by side in one run:

- ``cold``: the text tower encodes every prompt (an empty cache, as after a restart without
  the store);
- ``restart, disk``: a new cache attached to the store (``enable_disk_cache``, the weight
  digest remembered) then ``encode_text``: what a restarted process pays;
- ``weight digest, first time``: hashing the weights once, before the digest is remembered;
- ``memory hit``: ``encode_text`` with everything in memory.

    python benchmarks/bench_text_cache.py --arch clippy-b16 --repeats 10
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

import clippy_rt
from clippy_rt.bench.environment import collect_environment
from clippy_rt.bench.stats import summarize
from clippy_rt.formats.identity import artifact_identity
from clippy_rt.formats.kinds import MODEL
from clippy_rt.text_cache import TextCache, enable_disk_cache

VOC_CLASSES = ["background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair",
               "cow", "dining table", "dog", "horse", "motorbike", "person", "potted plant", "sheep", "sofa",
               "train", "tv monitor"]


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=None, help="model directory (default: random --arch)")
    parser.add_argument("--arch", default="clippy-b16", help="architecture made with random weights (no --model)")
    parser.add_argument("--repeats", type=int, default=10, help="timed runs per variant")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    return parser.parse_args(argv)


def _timed(function) -> float:
    start = time.perf_counter()
    function()
    return (time.perf_counter() - start) * 1000.0


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="bench-text-cache-"))
    try:
        model = args.model
        if model is None:
            from clippy_rt.formats.random_init import random_init
            model = random_init(args.arch, work / "model", seed=0)
        engine = clippy_rt.load(model)
        store_dir = work / "cache"
        engine.encode_text(VOC_CLASSES)           # warm-up, and fills nothing on disk yet
        enable_disk_cache(engine, store_dir)
        engine.clear_text_cache()
        engine.encode_text(VOC_CLASSES)           # fills the store
        samples = {"cold": [], "restart, disk": [], "weight digest, first time": [], "memory hit": []}
        for _ in range(args.repeats):
            engine.text_cache = TextCache()
            samples["cold"].append(_timed(lambda: engine.encode_text(VOC_CLASSES)))
            engine.text_cache = TextCache()
            samples["restart, disk"].append(_timed(lambda: (enable_disk_cache(engine, store_dir),
                                                            engine.encode_text(VOC_CLASSES))))
            samples["memory hit"].append(_timed(lambda: engine.encode_text(VOC_CLASSES)))
            samples["weight digest, first time"].append(_timed(lambda: artifact_identity(model, MODEL)))
        environment = collect_environment()
        weights_mb = (Path(model) / "weights.safetensors").stat().st_size / 1e6
        print(f"Machine: {environment['platform']}, CPU {environment['cpu'].get('model')} "
              f"({environment['cpu'].get('logical_threads')} logical cores), torch threads "
              f"{environment['torch_threads']}, load average {environment['load_average']}")
        print(f"\nText cache, {engine.config.arch} ({weights_mb:.0f} MB of weights), {len(VOC_CLASSES)} prompts, "
              f"{args.repeats} runs per variant\n")
        print("| variant | median ms | p90 ms | min ms |")
        print("|---|---|---|---|")
        for name, values in samples.items():
            stats = summarize(values)
            print(f"| {name} | {stats.median:.2f} | {stats.p90:.2f} | {stats.min:.2f} |")
        print("\n" + json.dumps({k: summarize(v).to_dict() for k, v in samples.items()}), file=sys.stderr)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
