"""The CPU stream eager and traced, alone and beside a busy Python thread, side by side.

    python benchmarks/bench_stream_cpu.py [--model demo] [--batch 8] [--threads 1]
        [--rounds 7] [--seconds 1.5] [--json OUT]

``Engine.stream`` on the CPU runs its image path as a TorchScript trace (``graphs=True``,
the default) or operator by operator (``graphs=False``). Both give the same labels; they
differ in how long they hold Python's GIL. For each mode this measures, in interleaved
rounds of ``--seconds`` each, the stream's frames/s on ``--batch`` frames per call:

- ``alone``: nothing else in the process;
- ``beside a busy thread``: a second Python thread spinning in a loop (the worst case of an
  event loop or camera reader sharing the process), with the GIL handed over every 0.1 ms
  as ``clippy-rt serve``'s replicas set it; that thread's loop count per second is
  reported too (how much Python work the stream leaves room for).

Frames: the example scenes (``examples/*.png``, cycled) for the demo model, or random
uint8 frames of the model's input size for another model (``clippy-b16``: random
weights). Reported: medians and the spread (min, max) over rounds, the traced / eager ratio
of the medians, and labels equal between the modes (checked before timing).
"""

from __future__ import annotations

import argparse
import glob
import json
import platform
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Dict, List

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent


def frames_for(engine, model: str, batch: int) -> List[np.ndarray]:
    from PIL import Image

    if model == "demo":
        paths = sorted(glob.glob(str(ROOT / "examples" / "*.png")))
        images = [np.asarray(Image.open(path).convert("RGB"), dtype=np.uint8) for path in paths]
    else:
        size = engine.config.image.image_size
        rng = np.random.default_rng(0)
        images = [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(4)]
    return [images[i % len(images)] for i in range(batch)]


def prompts_for(model: str) -> object:
    if model == "demo":
        from clippy_rt.formats.model_dir import VOCABULARY_FILE, demo_model_dir

        return json.loads((demo_model_dir() / VOCABULARY_FILE).read_text())
    return ["a person", "a car", "a tree", "the road", "the sky"]


class Spinner:
    """A Python thread counting loop iterations while ``running``."""

    def __init__(self) -> None:
        self.count = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        stop = self._stop
        while not stop.is_set():
            self.count += 1

    def __enter__(self) -> "Spinner":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def timed(stream, frames, seconds: float) -> float:
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        stream(frames)
        done += len(frames)
    return done / (time.perf_counter() - start)


def spinner_rate(seconds: float) -> float:
    with Spinner() as spinner:
        time.sleep(seconds)
        return spinner.count / seconds


def summary(values: List[float]) -> Dict[str, float]:
    return {"median": round(statistics.median(values), 2), "min": round(min(values), 2),
            "max": round(max(values), 2)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="demo",
                        help="a model directory, 'demo', or 'clippy-b16' (random weights, written to a temporary "
                             "directory) (default: demo)")
    parser.add_argument("--batch", type=int, default=8, help="frames per stream call (default: 8)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default: 1)")
    parser.add_argument("--rounds", type=int, default=7, help="interleaved rounds (default: 7)")
    parser.add_argument("--seconds", type=float, default=1.5, help="seconds per measurement (default: 1.5)")
    parser.add_argument("--json", type=Path, default=None, help="write the report here")
    args = parser.parse_args(argv)
    if args.batch < 1 or args.threads < 1 or args.rounds < 1 or args.seconds <= 0:
        parser.error("--batch, --threads and --rounds must be positive, --seconds above zero")

    import clippy_rt

    torch.set_num_threads(args.threads)
    sys.setswitchinterval(0.0001)
    with tempfile.TemporaryDirectory() as workdir:
        source = args.model
        if args.model == "clippy-b16":
            from clippy_rt.formats.random_init import random_init

            source = random_init("clippy-b16", Path(workdir) / "b16", seed=0)
        engine = clippy_rt.load(source)
    prompts = prompts_for(args.model)
    frames = frames_for(engine, args.model, args.batch)
    streams = {"eager": engine.stream(prompts, batch=args.batch, graphs=False),
               "traced": engine.stream(prompts, batch=args.batch)}
    for stream in streams.values():  # warm: the trace recorded (on the second call) and checked
        stream(frames)
        stream(frames)
    results = {mode: stream(frames) for mode, stream in streams.items()}
    equal = all(torch.equal(a.labels, b.labels) for a, b in zip(results["eager"], results["traced"]))
    if not streams["traced"].traced_chunks:
        print("the traced stream answered no chunk from its trace", file=sys.stderr)
        return 1
    rates: Dict[str, List[float]] = {f"{mode}, {where}": [] for mode in streams for where in ("alone", "beside")}
    spins: Dict[str, List[float]] = {"idle": [], **{mode: [] for mode in streams}}
    for round_index in range(args.rounds):
        print(f"round {round_index + 1}/{args.rounds}", file=sys.stderr, flush=True)
        spins["idle"].append(spinner_rate(args.seconds / 3))
        for mode, stream in streams.items():
            rates[f"{mode}, alone"].append(timed(stream, frames, args.seconds))
            with Spinner() as spinner:
                start = time.perf_counter()
                rates[f"{mode}, beside"].append(timed(stream, frames, args.seconds))
                spins[mode].append(spinner.count / (time.perf_counter() - start))
    report = {
        "machine": {"platform": platform.platform(), "processor": platform.processor(),
                    "python": platform.python_version(), "torch": torch.__version__,
                    "cpus": len(__import__("os").sched_getaffinity(0))},
        "model": args.model, "batch": args.batch, "threads": args.threads, "rounds": args.rounds,
        "seconds": args.seconds, "labels_equal": equal,
        "frames_per_s": {key: summary(values) for key, values in rates.items()},
        "busy_thread_loops_per_s": {key: summary(values) for key, values in spins.items()},
    }
    fps = report["frames_per_s"]
    report["traced_over_eager"] = {where: round(fps[f"traced, {where}"]["median"] / fps[f"eager, {where}"]["median"], 3)
                                   for where in ("alone", "beside")}
    loops = report["busy_thread_loops_per_s"]
    report["busy_thread_share_of_idle"] = {mode: round(loops[mode]["median"] / loops["idle"]["median"], 3)
                                           for mode in streams}
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    print(json.dumps(report, indent=1))
    print("| model | batch | torch threads | mode | frames/s alone (min-max) | frames/s beside a busy thread "
          "(min-max) | busy thread's loops vs idle |")
    print("|---|---|---|---|---|---|---|")
    for mode in streams:
        alone, beside = fps[f"{mode}, alone"], fps[f"{mode}, beside"]
        print(f"| {args.model} | {args.batch} | {args.threads} | {mode} | {alone['median']} ({alone['min']}-"
              f"{alone['max']}) | {beside['median']} ({beside['min']}-{beside['max']}) | "
              f"{report['busy_thread_share_of_idle'][mode]} |")
    return 0 if equal else 1


if __name__ == "__main__":
    sys.exit(main())
