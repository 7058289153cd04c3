"""Image tower latency: ONNX Runtime CPU against torch eager CPU (float32), side by side.

    python benchmarks/bench_onnx.py [--model-dir DIR] [--sizes 224,448] [--batches 1,8]
        [--repeats 10] [--case-budget 30] [--fusions] [--threads N]

Without --model-dir a random `clippy-b16` model is written to a temporary directory (about
800 MB). The image tower is exported once; each case (size, batch) then runs every
variant in turn, interleaved repeat by repeat so that load from other processes hits all
variants alike. Reported: median and p90 latency in ms, and each ONNX Runtime variant's
median as a fraction of torch's. Variants:

- torch:   the eager model, torch.inference_mode, torch threads = physical cores;
- ort:     the clippy-rt onnxruntime backend's session (ORT_ENABLE_ALL, intra-op threads =
           physical cores);
- ort-ext (with --extended): the same graph at ORT_ENABLE_EXTENDED (no layout transforms);
- ort-fused (with --fusions): the graph after onnxruntime.transformers' offline ViT fusions
           (Attention, SkipLayerNorm, BiasGelu), then ORT_ENABLE_ALL.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from clippy_rt.bench.environment import machine_summary
from clippy_rt.bench.stats import summarize


def machine() -> str:
    import onnxruntime

    from clippy_rt.backends.onnxruntime import physical_cores

    return (f"{machine_summary()}; {physical_cores()} physical cores available to this process; "
            f"onnxruntime {onnxruntime.__version__}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", type=Path, default=None)
    parser.add_argument("--sizes", default="224,448")
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--repeats", type=int, default=10, help="timed runs per variant and case (at most)")
    parser.add_argument("--case-budget", type=float, default=30.0,
                        help="seconds per case; fewer repeats (at least 3) for slow cases")
    parser.add_argument("--extended", action="store_true", help="also time ORT_ENABLE_EXTENDED")
    parser.add_argument("--fusions", action="store_true", help="also time onnxruntime.transformers' fusions")
    parser.add_argument("--threads", type=int, default=None, help="threads for both (default: physical cores)")
    args = parser.parse_args(argv)

    import onnx

    from clippy_rt.backends.onnxruntime import OrtRunner, physical_cores
    from clippy_rt.formats.io_spec import IMAGE
    from clippy_rt.export.onnx import export_towers
    from clippy_rt.formats.model_dir import load_model
    from clippy_rt.formats.random_init import random_init

    threads = args.threads or physical_cores()
    torch.set_num_threads(threads)
    sizes = [int(s) for s in args.sizes.split(",")]
    batches = [int(b) for b in args.batches.split(",")]

    with tempfile.TemporaryDirectory(prefix="bench-onnx-") as tmp:
        tmp = Path(tmp)
        model_dir = args.model_dir
        if model_dir is None:
            print("writing a random clippy-b16 model ...", file=sys.stderr, flush=True)
            model_dir = random_init("clippy-b16", tmp / "model")
        model, info = load_model(model_dir)
        model.eval()
        print("exporting the image tower ...", file=sys.stderr, flush=True)
        graph = export_towers(model, names=("image",))["image"]
        onnx.save_model(graph, str(tmp / "image.onnx"))
        del graph
        variants = {"ort": OrtRunner(tmp / "image.onnx", IMAGE, info.config, threads=threads)}
        if args.extended:
            variants["ort-ext"] = OrtRunner(tmp / "image.onnx", IMAGE, info.config, threads=threads,
                                            optimization="extended")
        if args.fusions:
            from onnxruntime.transformers.optimizer import optimize_model

            fused = optimize_model(str(tmp / "image.onnx"), model_type="vit", num_heads=info.config.image.heads,
                                   hidden_size=info.config.image.width, opt_level=0)
            print(f"fused operators: {fused.get_fused_operator_statistics()}", file=sys.stderr, flush=True)
            fused.save_model_to_file(str(tmp / "image.fused.onnx"))
            variants["ort-fused"] = OrtRunner(tmp / "image.fused.onnx", IMAGE, info.config, threads=threads)

        rows = []
        for size in sizes:
            for batch in batches:
                pixels = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(0))
                feed = {"pixel_values": pixels.numpy()}

                def run_torch():
                    with torch.inference_mode():
                        return model.visual(pixels)

                runs = {"torch": run_torch}
                runs.update({name: (lambda r=runner: r.infer(feed)) for name, runner in variants.items()})
                # Warm-up (one run each) also sizes the repeat count to the budget.
                start = time.perf_counter()
                reference = run_torch()[1]
                for name, run in runs.items():
                    if name != "torch":
                        out = run()["image_embeds"]
                        error = float(np.abs(out - reference.numpy()).max())
                        if error > 1e-3:
                            raise SystemExit(f"{name} disagrees with torch at {size}/{batch}: max abs {error}")
                per_round = time.perf_counter() - start
                repeats = max(3, min(args.repeats, int(args.case_budget / max(per_round, 1e-6))))
                times = {name: [] for name in runs}
                for _ in range(repeats):
                    for name, run in runs.items():
                        t0 = time.perf_counter()
                        run()
                        times[name].append((time.perf_counter() - t0) * 1000.0)
                print(f"{size} px, batch {batch}: {repeats} repeats", file=sys.stderr, flush=True)
                rows.append((size, batch, repeats, times))

    names = list(rows[0][3])
    print(f"Machine: {machine()}; {threads} threads for torch and ONNX Runtime (load average read at "
          f"the end).\n")
    header = "| size | batch | repeats | " + " | ".join(f"{n} median / p90 ms" for n in names) + " | " + \
        " | ".join(f"{n} / torch" for n in names if n != "torch") + " |"
    print(header)
    print("|" + "---|" * (3 + len(names) + len(names) - 1))
    for size, batch, repeats, times in rows:
        stats = {n: summarize(t) for n, t in times.items()}
        medians = {n: stats[n].median for n in names}
        cells = [f"{stats[n].median:.1f} / {stats[n].p90:.1f}" for n in names]
        ratios = [f"{medians[n] / medians['torch']:.2f}x" for n in names if n != "torch"]
        print(f"| {size} | {batch} | {repeats} | " + " | ".join(cells) + " | " + " | ".join(ratios) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
