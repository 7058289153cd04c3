"""GPU check of the kernels in one command: build, GPU tests, timings, RESULTS section.

    python benchmarks/gpu_check.py --write benchmarks/RESULTS.md     # the one command
    python benchmarks/gpu_check.py --dry-run                         # the plan, no GPU needed

Steps, each in a child process under its own time limit (so a hang costs one step, not
the run) and all within --budget-s seconds (default 460: the check is sized for a GPU
machine lent for about 8 minutes). A step gets its cap (STEP_CAPS) when the caps fit in
the budget, else STEP_MINIMUM plus a share of the rest in proportion to its cap; time an
earlier step left unused goes to the next one, no step gets more than is left once the
later steps' shares are set aside, and a step left with less than STEP_MINIMUM seconds is
skipped (see planned_limits and step_limit):

1. ``native``: builds the CUDA C++ library for this GPU's architecture only (CMake, from
   the source tree into build-gpu-check/) and runs its C++ test program. With
   --native-lib the given library is used instead and nothing is built
   (``benchmarks/gpu_all.sh`` builds it once for its tests and this check).
2. ``tests``: ``pytest tests/kernels`` with compiled Triton kernels (TRITON_INTERPRET is
   removed from the children's environment), so the ``gpu`` and ``slow`` cases run on the
   device, and the native cases use the library from step 1.
3. ``seg_head``, ``patch_pool``, ``preprocess``: timings with ``triton.testing.do_bench``
   (medians, after warm-up) of each kernel next to plain torch, and for the seg head the
   CUDA C++ library and MODEL.md's reference procedure where its scratch memory fits.

Every timing is reported as achieved bandwidth on the bytes the operation must move
(its inputs read once, its outputs written once) and as a share of the device-to-device
copy bandwidth measured in the same run. With --write the section replaces the text
between the gpu-check markers of that file after every step, so a run stopped part-way
keeps the steps it finished (the steps still to run are listed). --dry-run prints the
plan (and with --write puts it in that section). Exits 0 with a message where there is
no CUDA device.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

REPO = Path(__file__).resolve().parents[1]
PATCH = 16
WIDTH = 768
MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)
BEGIN, END = "<!-- gpu-check:begin -->", "<!-- gpu-check:end -->"
BUILD_DIR = REPO / "build-gpu-check"

# Step caps in seconds (planned_limits and step_limit share a smaller budget).
STEP_CAPS = {"native": 80, "tests": 220, "seg_head": 100, "patch_pool": 30, "preprocess": 30}
# A step with less time than this is skipped: a child process needs a few seconds for
# importing torch and Triton and for the copy-bandwidth measurement alone.
STEP_MINIMUM = 10.0


@dataclasses.dataclass(frozen=True)
class SegCase:
    size: int
    prompts: int
    batch: int
    reference: bool = False  # also time the reference procedure (MODEL.md)

    @property
    def grid(self) -> int:
        return self.size // PATCH

    def must_move_bytes(self, scores: bool = False) -> int:
        """float16 patch features and text read once, uint8 labels (and float32 scores) written once."""
        reads = 2 * (self.batch * self.grid ** 2 * WIDTH + self.prompts * WIDTH)
        return reads + self.batch * self.size ** 2 * (5 if scores else 1)

    def reference_scratch_bytes(self) -> int:
        """float32 upsampled features [B, D, H, W] plus logits [B, K, H, W]."""
        return 4 * self.batch * self.size ** 2 * (WIDTH + self.prompts)

    def torch_scratch_bytes(self) -> int:
        """float32 upsampled logits [B, K, H, W] and argmax's int64 result."""
        return 4 * self.batch * self.size ** 2 * self.prompts + 8 * self.batch * self.size ** 2


def seg_cases(quick: bool) -> List[SegCase]:
    if quick:
        return [SegCase(448, 21, 8, reference=True)]
    return [SegCase(448, 21, 8, reference=True), SegCase(1024, 21, 32), SegCase(1024, 150, 8),
            SegCase(448, 150, 32)]


POOL_CASES = [(32, 28), (8, 28), (32, 64)]          # (batch, grid): tokens 1 + grid^2, D = 768
PREPROCESS_CASES = [(8, (720, 1280), 1024), (8, (1080, 1920), 448), (32, (480, 640), 448)]


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--write", type=Path, action="append", default=[],
                        help="put the section in this markdown file, between gpu-check markers "
                             "(after every step; may be given more than once)")
    parser.add_argument("--budget-s", type=float, default=460.0, help="wall-clock budget of the whole check")
    parser.add_argument("--skip-tests", action="store_true", help="do not run pytest")
    parser.add_argument("--skip-native", action="store_true", help="do not build or time the CUDA C++ library")
    parser.add_argument("--native-lib", type=Path, default=None,
                        help="time this build of libclippy_rt_native.so instead of building one")
    parser.add_argument("--quick", action="store_true", help="one configuration per kernel (checks the script)")
    parser.add_argument("--dry-run", action="store_true", help="print the plan and byte counts, run nothing")
    parser.add_argument("--memory-budget-gb", type=float, default=40.0,
                        help="skip a torch variant whose scratch memory would exceed this")
    parser.add_argument("--step", choices=["seg_head", "patch_pool", "preprocess"], default=None,
                        help=argparse.SUPPRESS)  # internal: one timing step, JSON to --json
    parser.add_argument("--json", type=Path, default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def step_plan(args) -> List[str]:
    """The steps this run takes, in order."""
    skip = set()
    if args.skip_native or args.native_lib is not None:
        skip.add("native")
    if args.skip_tests:
        skip.add("tests")
    return [name for name in STEP_CAPS if name not in skip]


def planned_limits(plan: Sequence[str], budget_s: float, caps: Dict[str, float] = STEP_CAPS) -> Dict[str, float]:
    """Seconds set aside for each step of ``plan``: its cap when the caps fit in ``budget_s``;
    else STEP_MINIMUM plus a share of the rest in proportion to cap - STEP_MINIMUM; when not
    even the minimums fit, STEP_MINIMUM for the first steps and 0 for the others. The shares
    never add up to more than ``budget_s`` unless the caps do not."""
    if sum(caps[name] for name in plan) <= budget_s:
        return {name: float(caps[name]) for name in plan}
    minimums = STEP_MINIMUM * len(plan)
    if minimums <= budget_s:
        spread = sum(caps[name] - STEP_MINIMUM for name in plan)
        return {name: STEP_MINIMUM + (caps[name] - STEP_MINIMUM) * (budget_s - minimums) / spread for name in plan}
    fitting = int(max(0.0, budget_s) // STEP_MINIMUM)
    return {name: STEP_MINIMUM if index < fitting else 0.0 for index, name in enumerate(plan)}


def step_limit(name: str, plan: Sequence[str], planned: Dict[str, float], left_s: float,
               caps: Dict[str, float] = STEP_CAPS) -> float:
    """Seconds step ``name`` may run when ``left_s`` seconds of the budget are left: its cap,
    but no more than what is left once the later steps' planned shares are set aside (so
    time an earlier step did not use goes to this one). 0.0 when that is under
    STEP_MINIMUM: the step is skipped."""
    later = sum(planned[other] for other in plan[plan.index(name) + 1:])
    limit = min(float(caps[name]), left_s - later)
    return limit if limit >= STEP_MINIMUM else 0.0


def skipped_step(name: str, left_s: float, budget_s: float) -> Dict:
    """The result of a step skipped for lack of time."""
    status = (f"skipped: {max(0.0, left_s):.0f} s of the {budget_s:.0f} s budget left, less than this step's "
              f"minimum {STEP_MINIMUM:.0f} s once the later steps' shares are set aside")
    print(f"[gpu_check] {name}: {status}", flush=True)
    return {"status": status, "seconds": 0.0, "output": "", "rows": []}


def child_environment(library: Optional[Path]) -> Dict[str, str]:
    """This process's environment for a child step, TRITON_INTERPRET removed (the children
    run compiled kernels), with CLIPPY_RT_NATIVE_LIB naming ``library`` when there is one."""
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    if library is not None:
        env["CLIPPY_RT_NATIVE_LIB"] = str(library)
    return env


# ----------------------------------------------------------------------------------------------
# Child steps
# ----------------------------------------------------------------------------------------------

def run_step(name: str, command: Sequence[str], timeout: float, env: Optional[Dict[str, str]] = None) -> Dict:
    """Run one step as a child process; returns {"status", "seconds", "output"}."""
    print(f"[gpu_check] {name}: {' '.join(command)} (limit {timeout:.0f} s)", flush=True)
    start = time.perf_counter()
    try:
        result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
        status = "ok" if result.returncode == 0 else f"exit {result.returncode}"
        output = result.stdout + result.stderr
    except subprocess.TimeoutExpired as exc:
        status = f"timed out after {timeout:.0f} s"
        output = (exc.stdout or b"").decode("utf-8", "replace") if isinstance(exc.stdout, bytes) else (exc.stdout or "")
    except OSError as exc:  # the program is missing (no cmake, nothing built)
        status = f"could not start: {exc}"
        output = ""
    seconds = time.perf_counter() - start
    print(output[-3000:], flush=True)
    print(f"[gpu_check] {name}: {status} in {seconds:.0f} s", flush=True)
    return {"status": status, "seconds": seconds, "output": output}


def build_native(timeout: float) -> Dict:
    import torch

    major, minor = torch.cuda.get_device_capability()
    configure = ["cmake", "-S", str(REPO), "-B", str(BUILD_DIR), "-DCMAKE_BUILD_TYPE=Release",
                 f"-DCMAKE_CUDA_ARCHITECTURES={major}{minor}-real"]
    deadline = time.perf_counter() + timeout
    result = run_step("native configure", configure, timeout)
    if result["status"] == "ok":
        result = run_step("native build", ["cmake", "--build", str(BUILD_DIR), "-j", str(os.cpu_count() or 4)],
                          max(1.0, deadline - time.perf_counter()))
    if result["status"] == "ok":
        result = run_step("native test program", [str(BUILD_DIR / "test_seg_head")],
                          max(1.0, deadline - time.perf_counter()))
    lines = [line for line in result["output"].splitlines() if line.strip()]
    result["summary"] = f"CUDA C++ library for sm_{major}{minor}: {result['status']}" + (
        f" ({lines[-1].strip()})" if lines else "")
    return result


def run_tests(timeout: float, library: Optional[Path]) -> Dict:
    env = child_environment(library)
    command = [sys.executable, "-m", "pytest", str(REPO / "tests" / "kernels"), "-q", "-p", "no:cacheprovider",
               "-o", "addopts=", "-rfE"]
    result = run_step("tests", command, timeout, env)
    lines = [line for line in result["output"].splitlines() if line.strip()]
    failures = [line for line in lines if line.startswith(("FAILED", "ERROR"))]
    summary = lines[-1].strip("= ") if lines else "(no output)"
    result["summary"] = f"pytest tests/kernels, compiled kernels: {result['status']}: {summary}"
    result["failures"] = failures[:20]
    return result


def timing_step(name: str, args, timeout: float, library: Optional[Path]) -> Dict:
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(scratch) / f"{name}.json"
        command = [sys.executable, str(Path(__file__).resolve()), "--step", name, "--json", str(out),
                   "--memory-budget-gb", str(args.memory_budget_gb)]
        if args.quick:
            command.append("--quick")
        if args.skip_native:
            command.append("--skip-native")
        result = run_step(name, command, timeout, child_environment(None if args.skip_native else library))
        result["rows"] = json.loads(out.read_text()) if out.is_file() else []
    return result


# ----------------------------------------------------------------------------------------------
# Timing (inside a child process)
# ----------------------------------------------------------------------------------------------

def bench_ms(fn: Callable[[], object]) -> float:
    from triton.testing import do_bench

    return float(do_bench(fn, warmup=25, rep=100, return_mode="median"))


def copy_bandwidth_gbs() -> float:
    """Device-to-device copy of 1 GiB: (read + write) bytes / median time."""
    import torch

    size = 1 << 30
    src = torch.empty(size, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    ms = bench_ms(lambda: dst.copy_(src))
    del src, dst
    torch.cuda.empty_cache()
    return 2 * size / (ms * 1e-3) / 1e9


def torch_seg_head(patch, text, size: int):
    """Plain torch: patch logits (matmul), F.interpolate of the K maps, argmax."""
    import torch.nn.functional as F

    batch, h, w, dim = patch.shape
    logits = (patch.reshape(-1, dim).float() @ text.float().t()).reshape(batch, h, w, -1).permute(0, 3, 1, 2)
    up = F.interpolate(logits, size=(size, size), mode="bilinear", align_corners=False)
    return up.argmax(dim=1)


def _bandwidth(row: Dict, must_bytes: int, ms: Optional[float], copy_gbs: float, prefix: str = "") -> None:
    if ms is None:
        return
    gbs = must_bytes / (ms * 1e-3) / 1e9
    row[f"{prefix}GB/s"] = round(gbs)
    row[f"{prefix}% of copy"] = round(100 * gbs / copy_gbs, 1)


def time_seg_head(args, copy_gbs: float) -> List[Dict]:
    import torch
    import torch.nn.functional as F

    from clippy_rt.kernels.seg_head import seg_head
    from clippy_rt.kernels.seg_head_ref import seg_head_ref, seg_head_reference_procedure

    native = None
    if not args.skip_native:
        from clippy_rt.kernels.native import native_available, seg_head_native
        native = seg_head_native if native_available() else None
    budget = args.memory_budget_gb * 1e9
    rows = []
    generator = torch.Generator().manual_seed(0)
    for case in seg_cases(args.quick):
        print(f"seg head {case}", flush=True)
        patch = F.normalize(torch.randn(case.batch, case.grid, case.grid, WIDTH, generator=generator), dim=-1)
        text = F.normalize(torch.randn(case.prompts, WIDTH, generator=generator), dim=-1)
        patch, text = patch.to("cuda", torch.float16), text.to("cuda", torch.float16)
        out = (case.size, case.size)
        # A benchmark of a wrong result is worthless: labels against the reference first.
        labels, _ = seg_head(patch, text, out, impl="triton")
        ref_labels, _ = seg_head_ref(patch, text, out)
        agree = (labels == ref_labels).float().mean().item()
        del ref_labels
        ms = {"triton": bench_ms(lambda: seg_head(patch, text, out, impl="triton")),
              "triton+scores": bench_ms(lambda: seg_head(patch, text, out, return_scores=True, impl="triton"))}
        ms["native"] = bench_ms(lambda: native(patch, text, out)) if native is not None else None
        ms["torch"] = (bench_ms(lambda: torch_seg_head(patch, text, case.size))
                       if case.torch_scratch_bytes() <= budget else None)
        ms["reference"] = (bench_ms(lambda: seg_head_reference_procedure(patch, text, out))
                           if case.reference and case.reference_scratch_bytes() <= budget else None)
        torch.cuda.empty_cache()
        row = {"output": case.size, "K": case.prompts, "batch": case.batch,
               "must move MB": round(case.must_move_bytes() / 1e6, 1),
               **{f"{name} ms": (round(value, 4) if value is not None else None) for name, value in ms.items()},
               "labels agree with torch": f"{100 * agree:.4f} %"}
        _bandwidth(row, case.must_move_bytes(), ms["triton"], copy_gbs, "triton ")
        _bandwidth(row, case.must_move_bytes(), ms["native"], copy_gbs, "native ")
        row["scores / labels"] = round(ms["triton+scores"] / ms["triton"], 2)
        for name in ("torch", "reference"):
            row[f"vs {name}"] = round(ms[name] / ms["triton"], 1) if ms[name] is not None else None
        rows.append(row)
    return rows


def time_patch_pool(args, copy_gbs: float) -> List[Dict]:
    import torch

    from clippy_rt.kernels.patch_pool import patch_pool, patch_pool_ref

    rows = []
    for batch, grid in POOL_CASES[:1] if args.quick else POOL_CASES:
        tokens = torch.randn(batch, 1 + grid * grid, WIDTH, device="cuda", dtype=torch.float16)
        triton_ms = bench_ms(lambda: patch_pool(tokens, impl="triton"))
        torch_ms = bench_ms(lambda: patch_pool_ref(tokens))
        must = 2 * tokens.numel() * tokens.element_size()  # read the tokens, write the patches (+ tiny pooled)
        row = {"batch": batch, "tokens": f"1+{grid}x{grid}", "must move MB": round(must / 1e6, 1),
               "torch ms": round(torch_ms, 4), "triton ms": round(triton_ms, 4),
               "vs torch": round(torch_ms / triton_ms, 1)}
        _bandwidth(row, must, triton_ms, copy_gbs, "triton ")
        rows.append(row)
    return rows


def time_preprocess(args, copy_gbs: float) -> List[Dict]:
    import torch

    from clippy_rt.kernels.preprocess import preprocess, preprocess_ref

    rows = []
    for batch, frame, size in PREPROCESS_CASES[:1] if args.quick else PREPROCESS_CASES:
        frames = torch.randint(0, 256, (batch, *frame, 3), dtype=torch.uint8, device="cuda")
        for antialias in (True, False):
            triton_ms = bench_ms(lambda: preprocess(frames, (size, size), MEAN, STD, antialias=antialias,
                                                    out_dtype=torch.float16, impl="triton"))
            torch_ms = bench_ms(lambda: preprocess_ref(frames, (size, size), MEAN, STD, antialias=antialias,
                                                       out_dtype=torch.float16))
            must = frames.numel() + batch * 3 * size * size * 2
            row = {"batch": batch, "frame": f"{frame[0]}x{frame[1]}", "output": size, "antialias": antialias,
                   "must move MB": round(must / 1e6, 1), "torch ms": round(torch_ms, 4),
                   "triton ms": round(triton_ms, 4), "vs torch": round(torch_ms / triton_ms, 1)}
            _bandwidth(row, must, triton_ms, copy_gbs, "triton ")
            rows.append(row)
    return rows


def child_main(args) -> int:
    copy_gbs = copy_bandwidth_gbs()
    step = {"seg_head": time_seg_head, "patch_pool": time_patch_pool, "preprocess": time_preprocess}[args.step]
    rows = [{"copy GB/s": round(copy_gbs)}] + step(args, copy_gbs)
    from clippy_rt.kernels import _triton_support

    rows.append({"tuned": {" / ".join(str(part) for part in key): index
                           for key, index in _triton_support._tuned.items()}})
    args.json.write_text(json.dumps(rows), encoding="utf-8")
    return 0


# ----------------------------------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------------------------------

def markdown_table(rows: Sequence[Dict]) -> str:
    if not rows:
        return "(no rows)"
    header = list(rows[0])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        lines.append("| " + " | ".join("-" if row.get(key) is None else str(row.get(key)) for key in header) + " |")
    return "\n".join(lines)


def timing_section(title: str, result: Dict) -> str:
    rows = result.get("rows") or []
    copy = next((row["copy GB/s"] for row in rows if "copy GB/s" in row), None)
    tuned = next((row["tuned"] for row in rows if "tuned" in row), {})
    table_rows = [row for row in rows if "copy GB/s" not in row and "tuned" not in row]
    parts = [f"### {title}", "", f"Step: {result['status']} in {result['seconds']:.0f} s"
             + (f"; copy bandwidth in this process {copy} GB/s" if copy else ""), "", markdown_table(table_rows)]
    if tuned:
        parts += ["", "Configs kept by the tuner (key: index): "
                  + "; ".join(f"{key}: {index}" for key, index in tuned.items())]
    return "\n".join(parts)


def write_section(path: Path, text: str, begin: str = BEGIN, end: str = END) -> None:
    """Replace the text between the ``begin`` / ``end`` markers of ``path`` (the gpu-check
    section by default; append them if absent), atomically."""
    from clippy_rt.formats.atomic import atomic_write

    BEGIN, END = begin, end
    block = f"{BEGIN}\n{text}\n{END}"
    old = path.read_text(encoding="utf-8") if path.exists() else ""
    if BEGIN in old and END in old:
        new = old[:old.index(BEGIN)] + block + old[old.index(END) + len(END):]
    else:
        new = (old.rstrip("\n") + "\n\n" if old.strip() else "") + block + "\n"
    atomic_write(path, lambda handle: handle.write(new.encode("utf-8")))


class Report:
    """The markdown section: a header, one part per finished step, and the steps not run
    yet. It is rewritten in each of ``paths`` (between the gpu-check markers) after every
    step, so a run stopped part-way still leaves its finished steps on disk."""

    def __init__(self, paths: Sequence[Path], header: str, pending: Sequence[str],
                 title: str = "## Kernel GPU check"):
        self.paths = list(paths)
        self.title = title
        self.parts = [header]
        self.pending = list(pending)

    def add(self, text: str, step: Optional[str] = None) -> None:
        """Append ``text`` (the outcome of ``step``, which is then no longer pending) and write."""
        self.parts.append(text)
        if step in self.pending:
            self.pending.remove(step)
        self.write()

    def text(self) -> str:
        parts = list(self.parts)
        if self.pending:
            parts.append("Steps not run (yet): " + ", ".join(self.pending)
                         + ". If this line stays, the check was stopped before them.")
        return "\n\n".join(parts)

    def write(self) -> None:
        for path in self.paths:
            write_section(path, self.title + "\n\n" + self.text())


def dry_run(args) -> str:
    budget = args.memory_budget_gb * 1e9
    rows = [{"output": case.size, "K": case.prompts, "batch": case.batch, "grid": f"{case.grid}x{case.grid}",
             "must move MB": round(case.must_move_bytes() / 1e6, 1),
             "with scores MB": round(case.must_move_bytes(scores=True) / 1e6, 1),
             "torch scratch GB": round(case.torch_scratch_bytes() / 1e9, 2)
             if case.torch_scratch_bytes() <= budget else "skipped",
             "reference scratch GB": (round(case.reference_scratch_bytes() / 1e9, 1)
                                      if case.reference_scratch_bytes() <= budget else "skipped")
             if case.reference else "-"} for case in seg_cases(args.quick)]
    plan = step_plan(args)
    planned = planned_limits(plan, args.budget_s)
    steps = ", ".join(f"{name} {planned[name]:.0f} s" + ("" if planned[name] else " (skipped unless the "
                                                                             "earlier steps leave time)")
                      for name in plan)
    native = (f"the CUDA C++ library is {args.native_lib} (given, not built here)" if args.native_lib is not None
              else "no CUDA C++ library" if args.skip_native else "the CUDA C++ library is built first")
    return (f"Steps (budget {args.budget_s:.0f} s, caps {', '.join(f'{k} {v}' for k, v in STEP_CAPS.items())}): "
            f"{steps}; {native}.\n\n"
            "Seg-head configurations (float16 features, D = 768):\n\n" + markdown_table(rows))


TITLES = {"seg_head": "Seg head (labels only unless noted; 'vs torch': plain torch matmul + F.interpolate "
                      "of K maps + argmax; 'vs reference': MODEL.md's procedure)",
          "patch_pool": "patch_pool (float16 tokens, D = 768)",
          "preprocess": "preprocess (uint8 frames -> float16 NCHW)"}


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.dry_run:
        text = dry_run(args)
        print(text)
        if args.write:
            Report(args.write, "Dry run (nothing measured): " + text, pending=[]).write()
        return 0
    if args.step is not None:
        return child_main(args)
    if args.native_lib is not None and not args.native_lib.is_file():
        print(f"gpu_check: --native-lib {args.native_lib} is not a file", file=sys.stderr)
        return 2
    import torch

    if not torch.cuda.is_available():
        print("gpu_check: no CUDA device here; nothing to check (run it on a GPU machine, or use --dry-run)",
              file=sys.stderr)
        return 0
    try:
        import triton
    except ImportError as exc:
        print(f"gpu_check: triton is not installed ({exc}); `pip install triton`", file=sys.stderr)
        return 1
    start = time.perf_counter()
    plan = step_plan(args)
    planned = planned_limits(plan, args.budget_s)

    def left() -> float:
        return args.budget_s - (time.perf_counter() - start)

    def limit(name: str) -> float:
        return step_limit(name, plan, planned, left())

    report = Report(args.write,
                    f"GPU check, {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC: "
                    f"{torch.cuda.get_device_name()}, torch {torch.__version__}, triton {triton.__version__}, "
                    f"CUDA {torch.version.cuda}, python {platform.python_version()}, {platform.platform()}. "
                    "Command: `python benchmarks/gpu_check.py --write benchmarks/RESULTS.md`. Float16 inputs, "
                    "D = 768; 'must move' = inputs read once and outputs written once; '% of copy' = achieved "
                    "bandwidth on those bytes over the device-to-device copy bandwidth measured in the same step.",
                    pending=plan)
    report.write()
    library = args.native_lib
    if library is not None:
        report.add(f"CUDA C++ library: {library} (given with --native-lib; not built by this check)")
    if "native" in plan:
        seconds = limit("native")
        native = build_native(seconds) if seconds else skipped_step("native", left(), args.budget_s)
        report.add(native.get("summary", f"CUDA C++ library: {native['status']}"), "native")
        if (BUILD_DIR / "libclippy_rt_native.so").is_file() and native["status"] == "ok":
            library = BUILD_DIR / "libclippy_rt_native.so"
    if "tests" in plan:
        seconds = limit("tests")
        tests = run_tests(seconds, library) if seconds else skipped_step("tests", left(), args.budget_s)
        failures = tests.get("failures") or []
        report.add(tests.get("summary", f"pytest tests/kernels: {tests['status']}")
                   + ("\n\n" + "\n".join(f"- {line}" for line in failures) if failures else ""), "tests")
    for name in ("seg_head", "patch_pool", "preprocess"):
        seconds = limit(name)
        result = timing_step(name, args, seconds, library) if seconds else skipped_step(name, left(), args.budget_s)
        report.add(timing_section(TITLES[name], result), name)
    report.add(f"Total gpu_check time: {time.perf_counter() - start:.0f} s")
    print(report.text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
