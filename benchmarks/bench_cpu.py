"""Every CPU contender side by side in one run: latency, fraction of the GEMM limit, agreement.

    python benchmarks/bench_cpu.py [--part contenders,agreement,spinning] [--model-dir DIR]
        [--size 224] [--batch 1,4] [--rounds 15] [--scenes 100] [--threads N] [--json OUT]

Contenders: every (backend, precision) the CPU backends serve among fp32, bf16 and int8:
torch fp32 / bf16 (eager), ONNX Runtime fp32 / int8 (``clippy-rt export --int8``: dynamic
quantisation), OpenVINO fp32 / bf16 (inference precision hint) / int8 (``--openvino-int8``:
NNCF, calibrated on generated scenes). bf16 runs only where the CPU has bfloat16
instructions (AVX512_BF16 or AMX); elsewhere it is listed as not run, with the reason.

Part ``contenders``: the image tower of a ``clippy-b16`` (random weights unless
--model-dir) at batch x size x size through ``Engine.encode_image`` on a prepared tensor,
and the GEMM probes (``clippy_rt.bench.gemm``: the tower's largest product in each runtime
and precision). Everything runs interleaved, one call each per round after --warmup calls,
so load from other processes hits all alike. Reported: median, p90 (nearest rank), min, the
ratio of medians to torch fp32 and the median of the per-round ratios, the patch features'
cosine to torch fp32, the achieved GFLOP/s of the tower's products and its fraction of the
GEMM limit of its precision (the best probe of that precision in this run).

Part ``agreement``: the demo model (``clippy_rt.load("demo")``) exported with both int8
flavours, every contender evaluated by ``clippy_rt.evaluate`` on --scenes generated scenes
from --seed (a held-out range no training, validation, test, README figure or example
uses): mIoU, pixel accuracy and label agreement with a separately loaded torch fp32 engine.

Part ``spinning``: ONNX Runtime's thread pools spinning between runs (its default) against
not spinning (this backend's setting), interleaved: the image tower alone (after an idle
pause), the image tower right after ``encode_text`` of K prompts, and ``Engine.segment`` on
a 480 x 640 frame with the K prompts' embeddings cleared before each call (the text tower
then the image tower, as when the vocabulary changes) and cached.

Part ``static`` (not in the default set): ONNX Runtime int8 with static QDQ quantisation
(``clippy_rt.export.int8.quantize_int8_static``: activation ranges fixed on --static-calibration
generated training scenes) beside the dynamic scheme the exporter writes, on the same two
models: the image tower interleaved with torch fp32 and ONNX Runtime fp32 / dynamic int8, and
the agreement on the demo model. The static graphs replace the int8 ones in a copy of the ONNX
directory, whose manifest gets their sizes and checksums.

The last lines name the fastest contender that meets the accuracy goals (label agreement
>= 99 %, mIoU within 0.5 points of torch fp32) and the fastest float one.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch

HELD_OUT_SEED = 10**9 + 11_000_000
PARTS = ("contenders", "agreement", "spinning", "static")
PRECISIONS = ("fp32", "bf16", "int8")
MIN_AGREEMENT = 0.99
MAX_MIOU_CHANGE = 0.005
REFERENCE = "torch fp32"


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def contenders() -> List[Tuple[str, str]]:
    """(backend, precision) of every CPU backend at every precision it serves among PRECISIONS."""
    from clippy_rt.backends import REGISTRY

    return [(record.name, precision) for record in REGISTRY.values() if record.default_device == "cpu"
            for precision in PRECISIONS if precision in record.precisions]


def machine_line(threads: int) -> str:
    from clippy_rt.bench.environment import cpu_info, package_versions

    cpu = cpu_info()
    versions = package_versions()
    import os

    load = ", ".join(f"{v:.2f}" for v in os.getloadavg())
    libraries = ", ".join(f"{name} {versions[name]}" for name in ("torch", "onnxruntime", "openvino", "nncf")
                          if versions.get(name))
    return (f"{cpu['model']} ({cpu['usable_threads']} usable threads; {', '.join(cpu['isa']) or 'no AVX2'}), "
            f"{platform.system()} {platform.machine()}; {libraries}, python {platform.python_version()}; "
            f"{threads} threads per runtime; load average {load}")


def load_engines(model_dir: Path, onnx_dir: Path, threads: int) -> Tuple[Dict[str, object], Dict[str, str]]:
    """({name: engine} for the contenders that load here, {name: why not} for the others)."""
    import clippy_rt
    from clippy_rt.backends import backend_record
    from clippy_rt.bench.environment import native_bf16
    from clippy_rt.formats.kinds import MODEL

    engines, skipped = {}, {}
    for backend, precision in contenders():
        name = f"{backend} {precision}"
        if precision == "bf16" and not native_bf16():
            skipped[name] = "no bfloat16 instructions on this CPU (AVX512_BF16 or AMX)"
            continue
        path = model_dir if backend_record(backend).artifact_kind == MODEL else onnx_dir
        try:
            engines[name] = clippy_rt.load(path, backend=backend, precision=precision, threads=threads)
        except Exception as exc:  # a contender that cannot load here is reported, the rest run
            skipped[name] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            log(f"{name} not run: {skipped[name]}")
    return engines, skipped


def export_both_int8(model_dir: Path, out: Path, calibration_count: int, sizes: Optional[Sequence[int]]) -> None:
    """ONNX directory with ONNX Runtime's and (where NNCF is installed) OpenVINO's int8 graphs;
    the parity check at ``sizes`` (None: the exporter's default), batch 1."""
    from clippy_rt.export.onnx import export_onnx
    from clippy_rt.datasets.calibration import calibration_set

    kinds = {"int8": True}
    try:
        import nncf  # noqa: F401
        import openvino  # noqa: F401
        kinds["openvino_int8"] = True
        kinds["calibration"] = calibration_set(None, calibration_count)
    except ImportError as exc:
        log(f"no OpenVINO int8 graphs: {exc}")
    export_onnx(model_dir, out, seg_head=False, check_sizes=sizes, check_batches=[1], log=log, **kinds)


def interleave(runs: Dict[str, Callable[[], object]], rounds: int, warmup: int,
               between: Optional[Callable[[], None]] = None) -> Dict[str, List[float]]:
    """{name: [ms per call]}: one call of each per round, after ``warmup`` untimed rounds.
    ``between``: called (untimed) before each call."""
    times: Dict[str, List[float]] = {name: [] for name in runs}
    for index in range(warmup + rounds):
        for name, run in runs.items():
            if between is not None:
                between()
            start = time.perf_counter()
            run()
            elapsed = (time.perf_counter() - start) * 1000.0
            if index >= warmup:
                times[name].append(elapsed)
        if index >= warmup:
            log(f"round {index - warmup + 1}/{rounds}: "
                + ", ".join(f"{n} {t[-1]:.0f}" for n, t in times.items()))
    return times


def paired_rows(times: Dict[str, List[float]], base: str) -> Dict[str, Dict[str, object]]:
    from clippy_rt.bench.stats import median, summarize

    base_median = summarize(times[base]).median
    rows = {}
    for name, samples in times.items():
        stats = summarize(samples)
        paired = sorted(s / b for s, b in zip(samples, times[base]))
        rows[name] = {"stats": stats.to_dict(), "ratio_of_medians": stats.median / base_median,
                      "median_paired_ratio": median(paired)}
    return rows


# ----------------------------------------------------------------------------------------------
# Part 1: contenders and the GEMM limit
# ----------------------------------------------------------------------------------------------

def contenders_part(args, model_dir: Path, onnx_dir: Path, workdir: Path, threads: int) -> Dict[str, object]:
    from clippy_rt.bench.gemm import build_probes, fraction_of_limit, gemm_limits, image_tower_flops, probe_shape
    from clippy_rt.bench.stats import summarize
    from clippy_rt.formats.kinds import MODEL, artifact_config

    image_config = artifact_config(model_dir, MODEL).image
    engines, skipped = load_engines(model_dir, onnx_dir, threads)
    batches = []
    for batch in args.batch:
        pixels = torch.randn(batch, 3, args.size, args.size, generator=torch.Generator().manual_seed(batch))
        runs = {}
        for name, engine in engines.items():
            def run(engine=engine):
                with torch.inference_mode():
                    return engine.encode_image(pixels).patch
            runs[name] = run
        reference = runs[REFERENCE]().reshape(-1, image_config.width)
        cosines = {}
        for name, run in runs.items():
            cosine = torch.nn.functional.cosine_similarity(run().reshape(reference.shape).float(), reference, dim=-1)
            cosines[name] = (float(cosine.min()), float(cosine.mean()))
        probes, missing = build_probes([tuple(name.split(" ")) for name in engines],
                                       probe_shape(image_config, batch, args.size), threads, workdir, log=log)
        probe_runs = {f"GEMM {probe.name}": probe.run for probe in probes}
        log(f"batch {batch}: {len(runs)} contenders and {len(probe_runs)} GEMM probes, {args.rounds} rounds")
        times = interleave({**runs, **probe_runs}, args.rounds, args.warmup)
        rows = paired_rows({name: times[name] for name in runs}, REFERENCE)
        rates = {probe.name: probe.flops / (summarize(times[f"GEMM {probe.name}"]).median * 1e6)
                 for probe in probes}
        limits = gemm_limits(rates, probes)
        flops = image_tower_flops(image_config, batch, args.size)
        for name, row in rows.items():
            precision = name.split(" ")[1]
            limit = limits.get(precision)
            row["gflops"] = flops / (row["stats"]["median"] * 1e6)
            row["gemm_limit"] = {"probe": limit[0], "gflops": limit[1]} if limit else None
            row["fraction_of_limit"] = fraction_of_limit(flops, row["stats"]["median"], limit[1] if limit else None)
            row["cosine_min"], row["cosine_mean"] = cosines[name]
        batches.append({"batch": batch, "tower_gflop": flops / 1e9, "probe_shape": list(probe_shape(image_config,
                        batch, args.size)), "variants": rows, "probes_gflops": rates, "probes_missing": missing})
    return {"size": args.size, "rounds": args.rounds, "model_dir": str(model_dir), "batches": batches,
            "not_run": skipped}


def format_contenders(part: Dict[str, object]) -> str:
    lines = []
    for entry in part["batches"]:
        lines += [f"Image tower, batch {entry['batch']} at {part['size']}x{part['size']} "
                  f"({entry['tower_gflop']:.1f} GFLOP of products), {part['rounds']} interleaved rounds:", "",
                  "| contender | median ms | p90 ms | min ms | / torch fp32 (medians) | median of paired ratios | "
                  "GFLOP/s | % of GEMM limit (probe) | patch cosine vs torch fp32 (min / mean) |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for name, row in entry["variants"].items():
            stats = row["stats"]
            limit = row["gemm_limit"]
            fraction = (f"{100 * row['fraction_of_limit']:.0f} % ({limit['probe']}, {limit['gflops']:.0f})"
                        if limit else "-")
            lines.append(f"| {name} | {stats['median']:.1f} | {stats['p90']:.1f} | {stats['min']:.1f} | "
                         f"{row['ratio_of_medians']:.2f} | {row['median_paired_ratio']:.2f} | {row['gflops']:.0f} | "
                         f"{fraction} | {row['cosine_min']:.5f} / {row['cosine_mean']:.5f} |")
        m, k, n = entry["probe_shape"]
        lines += ["", f"GEMM probes ({m} x {k} @ {k} x {n}, GFLOP/s, medians): "
                  + ", ".join(f"{name} {rate:.0f}" for name, rate in entry["probes_gflops"].items()), ""]
    for name, reason in part["not_run"].items():
        lines.append(f"Not run: {name}: {reason}")
    return "\n".join(lines).rstrip()


# ----------------------------------------------------------------------------------------------
# Part 2: agreement on the demo model
# ----------------------------------------------------------------------------------------------

def agreement_part(args, workdir: Path, threads: int) -> Dict[str, object]:
    import clippy_rt
    from clippy_rt.evaluate import evaluate, synthetic_set
    from clippy_rt.formats.model_dir import demo_model_dir

    log("exporting the demo model with both int8 flavours ...")
    onnx_dir = workdir / "demo-onnx"
    export_both_int8(demo_model_dir(), onnx_dir, args.calibration_count, None)
    eval_set = synthetic_set(args.scenes, args.seed)
    reference = clippy_rt.load("demo", backend="torch", precision="fp32", threads=threads)
    engines, skipped = load_engines(demo_model_dir(), onnx_dir, threads)
    rows = {}
    for name, engine in engines.items():
        log(f"evaluating {name} on {eval_set.name} ...")
        result = evaluate(engine, eval_set, reference=reference)
        rows[name] = {"miou": result.miou, "pixel_accuracy": result.pixel_accuracy, "agreement": result.agreement}
    return {"dataset": eval_set.name, "calibration_count": args.calibration_count, "variants": rows,
            "not_run": skipped}


def format_agreement(part: Dict[str, object]) -> str:
    base = part["variants"][REFERENCE]["miou"]
    lines = [f"Demo model on {part['dataset']} (held-out generated scenes; OpenVINO int8 calibrated on "
             f"{part['calibration_count']} generated training scenes):", "",
             "| contender | mIoU % | mIoU change (points) | pixel accuracy % | label agreement with torch fp32 % |",
             "|---|---|---|---|---|"]
    for name, row in part["variants"].items():
        lines.append(f"| {name} | {100 * row['miou']:.2f} | {100 * (row['miou'] - base):+.2f} | "
                     f"{100 * row['pixel_accuracy']:.2f} | {100 * row['agreement']:.2f} |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# Part 3: ONNX Runtime's spinning thread pools
# ----------------------------------------------------------------------------------------------

def spinning_part(args, onnx_dir: Path, threads: int) -> Dict[str, object]:
    from clippy_rt.backends import backend_for_kind
    from clippy_rt.bench.plan import bench_prompts
    from clippy_rt.bench.stages import random_frames
    from clippy_rt.formats.kinds import ONNX

    record = backend_for_kind(ONNX)
    prompts = bench_prompts(args.prompts)
    frames = list(random_frames(1, (480, 640), 0))
    pixels = torch.randn(1, 3, args.size, args.size, generator=torch.Generator().manual_seed(0))
    runs: Dict[str, Callable[[], object]] = {}
    setups: Dict[str, Callable[[], None]] = {}
    for precision in args.spinning_precisions:
        for spinning in (True, False):
            engine = record.load(onnx_dir, precision=precision, threads=threads, spinning=spinning)
            label = f"{precision}, spinning {'on' if spinning else 'off'}"
            engine.encode_text(prompts)

            def alone(engine=engine):
                return engine.encode_image(pixels)

            def after_text(engine=engine):
                return engine.encode_image(pixels)

            def text_first(engine=engine):
                engine.clear_text_cache()
                engine.encode_text(prompts)

            def segment(engine=engine):
                return engine.segment(frames, prompts, size=args.size)

            def cached(engine=engine):
                engine.encode_text(prompts)

            for stage, run, setup in (("image tower alone", alone, None),
                                      ("image tower after encode_text", after_text, text_first),
                                      ("segment, text cleared", segment, engine.clear_text_cache),
                                      ("segment, text cached", segment, cached)):
                runs[f"{label} | {stage}"] = run
                if setup is not None:
                    setups[f"{label} | {stage}"] = setup
    times: Dict[str, List[float]] = {name: [] for name in runs}
    for index in range(args.warmup + args.rounds):
        for name, run in runs.items():
            time.sleep(args.pause_ms / 1000.0)  # the previous call's pool stops spinning
            if name in setups:
                setups[name]()
            start = time.perf_counter()
            run()
            if index >= args.warmup:
                times[name].append((time.perf_counter() - start) * 1000.0)
        log(f"spinning round {index + 1}/{args.warmup + args.rounds}")
    from clippy_rt.bench.stats import summarize

    rows = {name: summarize(samples).to_dict() for name, samples in times.items()}
    return {"size": args.size, "prompts": args.prompts, "rounds": args.rounds, "pause_ms": args.pause_ms,
            "rows": rows}


def format_spinning(part: Dict[str, object]) -> str:
    lines = [f"ONNX Runtime, {part['prompts']} prompts, input {part['size']}, {part['rounds']} interleaved rounds "
             f"({part['pause_ms']:.0f} ms idle before each call):", "",
             "| engine | stage | median ms | p90 ms | min ms |", "|---|---|---|---|---|"]
    for name, stats in part["rows"].items():
        engine, stage = name.split(" | ")
        lines.append(f"| {engine} | {stage} | {stats['median']:.1f} | {stats['p90']:.1f} | {stats['min']:.1f} |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# Part 4: ONNX Runtime int8, static QDQ vs dynamic
# ----------------------------------------------------------------------------------------------

def static_copy(onnx_dir: Path, out: Path, count: int) -> Path:
    """A copy of ``onnx_dir`` whose int8 graphs are statically quantised on ``count`` generated scenes."""
    import shutil

    from clippy_rt.datasets.calibration import calibration_set
    from clippy_rt.export.int8 import quantize_int8_static
    from clippy_rt.export.openvino_int8 import calibration_feeds
    from clippy_rt.formats.io_spec import IMAGE, TEXT
    from clippy_rt.formats.onnx_dir import MANIFEST_FILE, read_onnx_dir, sha256_file
    from clippy_rt.tokenizer import load_tokenizer

    source = read_onnx_dir(onnx_dir)
    images, prompts, _ = calibration_set(None, count)
    image_feeds, text_feeds, _ = calibration_feeds(source.config, load_tokenizer(source.tokenizer, source.config),
                                                   images, prompts)
    shutil.copytree(onnx_dir, out)
    manifest = json.loads((out / MANIFEST_FILE).read_text())
    for graph, feeds in ((IMAGE, image_feeds), (TEXT, text_feeds)):
        log(f"static int8 {graph.name} graph of {onnx_dir.name} on {len(feeds)} samples ...")
        target = out / graph.filename("int8")
        quantize_int8_static(out / graph.filename("fp32"), target, feeds)
        manifest["files"][target.name].update(bytes=target.stat().st_size, sha256=sha256_file(target))
    manifest["quantization"]["method"] = f"onnxruntime static QDQ quantization, {len(images)} generated scenes"
    (out / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2))
    return out


def static_part(args, model_dir: Path, onnx_dir: Path, workdir: Path, threads: int) -> Dict[str, object]:
    import clippy_rt
    from clippy_rt.backends import backend_for_kind
    from clippy_rt.evaluate import evaluate, synthetic_set
    from clippy_rt.formats.kinds import ONNX
    from clippy_rt.formats.model_dir import demo_model_dir

    record = backend_for_kind(ONNX)

    def engines_for(model: Path, exported: Path, static: Path) -> Dict[str, object]:
        return {REFERENCE: clippy_rt.load(model, backend="torch", precision="fp32", threads=threads),
                f"{record.name} fp32": record.load(exported, precision="fp32", threads=threads),
                f"{record.name} int8 dynamic": record.load(exported, precision="int8", threads=threads),
                f"{record.name} int8 static": record.load(static, precision="int8", threads=threads)}

    static_b16 = static_copy(onnx_dir, workdir / "b16-static", args.static_calibration)
    engines = engines_for(model_dir, onnx_dir, static_b16)
    pixels = torch.randn(1, 3, args.size, args.size, generator=torch.Generator().manual_seed(1))
    runs = {name: (lambda engine=engine: engine.encode_image(pixels)) for name, engine in engines.items()}
    latency = paired_rows(interleave(runs, args.rounds, args.warmup), REFERENCE)
    del engines, runs

    demo_onnx = workdir / "demo-onnx-static-base"
    export_both_int8(demo_model_dir(), demo_onnx, args.calibration_count, None)
    static_demo = static_copy(demo_onnx, workdir / "demo-static", args.static_calibration)
    eval_set = synthetic_set(args.scenes, args.seed)
    reference = clippy_rt.load("demo", backend="torch", precision="fp32", threads=threads)
    agreement = {}
    for name, engine in engines_for(demo_model_dir(), demo_onnx, static_demo).items():
        log(f"evaluating {name} on {eval_set.name} ...")
        result = evaluate(engine, eval_set, reference=reference)
        agreement[name] = {"miou": result.miou, "pixel_accuracy": result.pixel_accuracy,
                           "agreement": result.agreement}
    return {"size": args.size, "rounds": args.rounds, "calibration": args.static_calibration,
            "dataset": eval_set.name, "latency": latency, "agreement": agreement}


def format_static(part: Dict[str, object]) -> str:
    base = part["agreement"][REFERENCE]["miou"]
    lines = [f"ONNX Runtime int8, static QDQ (calibrated on {part['calibration']} generated training scenes) vs "
             f"dynamic: image tower batch 1 at {part['size']}, {part['rounds']} interleaved rounds; demo model on "
             f"{part['dataset']}:", "",
             "| contender | median ms | p90 ms | / torch fp32 (medians) | median of paired ratios | mIoU change "
             "(points) | label agreement with torch fp32 % |", "|---|---|---|---|---|---|---|"]
    for name, row in part["latency"].items():
        stats, scores = row["stats"], part["agreement"][name]
        lines.append(f"| {name} | {stats['median']:.1f} | {stats['p90']:.1f} | {row['ratio_of_medians']:.2f} | "
                     f"{row['median_paired_ratio']:.2f} | {100 * (scores['miou'] - base):+.2f} | "
                     f"{100 * scores['agreement']:.2f} |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------

def verdict(contenders: Optional[Dict[str, object]], agreement: Optional[Dict[str, object]]) -> List[str]:
    if contenders is None or agreement is None:
        return []
    rows = agreement["variants"]
    base = rows[REFERENCE]["miou"]
    first = contenders["batches"][0]
    timed = first["variants"]
    meeting = [name for name in timed if name in rows and rows[name]["agreement"] >= MIN_AGREEMENT
               and abs(rows[name]["miou"] - base) <= MAX_MIOU_CHANGE]
    lines = []
    for title, names in (("fastest meeting the accuracy goals", meeting),
                         ("fastest float", [n for n in meeting if not n.endswith("int8")])):
        if not names:
            lines.append(f"{title}: none")
            continue
        best = min(names, key=lambda n: timed[n]["stats"]["median"])
        lines.append(f"{title} (batch {first['batch']}): {best}, {timed[best]['ratio_of_medians']:.2f}x torch fp32, "
                     f"{100 * rows[best]['agreement']:.2f} % agreement")
    return lines


def main(argv=None) -> int:
    from clippy_rt.backends import physical_cores
    from clippy_rt.cli.common import int_list, str_list

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", type=str_list, default=list(PARTS[:3]),
                        help=f"parts, from {', '.join(PARTS)} (default: {','.join(PARTS[:3])})")
    parser.add_argument("--model-dir", type=Path, default=None,
                        help="model for the latency parts (default: random clippy-b16 in a temporary directory)")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int_list, default=[1], help="batch sizes (default: 1)")
    parser.add_argument("--rounds", type=int, default=15, help="timed rounds (default: 15)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed rounds first (default: 2)")
    parser.add_argument("--scenes", type=int, default=100, help="generated scenes for the agreement (default: 100)")
    parser.add_argument("--seed", type=int, default=HELD_OUT_SEED,
                        help=f"first scene seed (default: {HELD_OUT_SEED}, held out)")
    parser.add_argument("--calibration-count", type=int, default=64,
                        help="generated training scenes NNCF calibrates on (default: 64)")
    parser.add_argument("--prompts", type=int, default=21, help="prompts for the spinning part (default: 21)")
    parser.add_argument("--spinning-precisions", type=str_list, default=["fp32", "int8"],
                        help="ONNX Runtime precisions of the spinning part (default: fp32,int8)")
    parser.add_argument("--pause-ms", type=float, default=200.0,
                        help="idle time before each call of the spinning part (default: 200)")
    parser.add_argument("--static-calibration", type=int, default=32,
                        help="generated training scenes the static int8 graphs calibrate on (default: 32)")
    parser.add_argument("--threads", type=int, default=None, help="threads (default: physical cores)")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures as JSON")
    args = parser.parse_args(argv)
    unknown = [part for part in args.part if part not in PARTS]
    if unknown:
        parser.error(f"unknown part {unknown[0]!r}; choose from {', '.join(PARTS)}")

    threads = args.threads or physical_cores()
    torch.set_num_threads(threads)
    figures: Dict[str, object] = {}
    with tempfile.TemporaryDirectory(prefix="bench-cpu-") as tmp:
        workdir = Path(tmp)
        if "agreement" in args.part:
            figures["agreement"] = agreement_part(args, workdir, threads)
        if {"contenders", "spinning", "static"} & set(args.part):
            model_dir = args.model_dir
            if model_dir is None:
                from clippy_rt.formats.random_init import random_init

                log("writing a random clippy-b16 model ...")
                model_dir = random_init("clippy-b16", workdir / "b16", seed=0)
            log("exporting with both int8 flavours ...")
            onnx_dir = workdir / "b16-onnx"
            export_both_int8(model_dir, onnx_dir, args.calibration_count, [args.size])
            if "contenders" in args.part:
                figures["contenders"] = contenders_part(args, Path(model_dir), onnx_dir, workdir, threads)
            if "spinning" in args.part:
                figures["spinning"] = spinning_part(args, onnx_dir, threads)
            if "static" in args.part:
                figures["static"] = static_part(args, Path(model_dir), onnx_dir, workdir, threads)
    figures["machine"] = machine_line(threads)
    print(f"Machine: {figures['machine']}\n")
    for part, formatter in (("contenders", format_contenders), ("agreement", format_agreement),
                            ("spinning", format_spinning), ("static", format_static)):
        if part in figures:
            print(formatter(figures[part]) + "\n")
    for line in verdict(figures.get("contenders"), figures.get("agreement")):
        print(line)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
