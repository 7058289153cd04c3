"""GPU check of the kernels: the kernel tests on the GPU, then timings against torch.

    python benchmarks/gpu_check.py [--write benchmarks/RESULTS.md] [--skip-tests] [--quick]
    python benchmarks/gpu_check.py --dry-run     # the plan and byte counts, no GPU needed

1. Runs ``pytest tests/kernels`` with compiled Triton kernels (TRITON_INTERPRET=0), so
   the ``gpu`` and ``slow`` cases run on the device.
2. Times with ``triton.testing.do_bench`` (medians) the seg head at outputs 224 / 448 /
   1024 (patch grids 14 / 28 / 64, D = 768, float16 features), K = 21 / 150, batch
   1 / 8 / 32: the reference procedure (upsample all D channels, dot, argmax), the best
   plain-torch path (matmul + F.interpolate + argmax), the Triton kernels, and the CUDA
   C++ library when it is built. Then patch_pool and preprocess against their references.
3. Prints markdown tables with the bytes each operation must move (read its inputs
   once, write its outputs once) and the bandwidth that implies, next to a measured
   device-to-device copy bandwidth.

Configurations whose reference would need more than --memory-budget-gb of scratch
memory are reported as skipped. Exits with a message (status 0) when there is no CUDA.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
PATCH = 16
WIDTH = 768
MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)
BEGIN, END = "<!-- gpu-check:begin -->", "<!-- gpu-check:end -->"


@dataclasses.dataclass(frozen=True)
class SegCase:
    size: int
    prompts: int
    batch: int

    @property
    def grid(self) -> int:
        return self.size // PATCH

    def must_move_bytes(self, feature_bytes: int = 2) -> int:
        """Read the patch features and text embeddings once, write uint8 labels once."""
        reads = self.batch * self.grid ** 2 * WIDTH * feature_bytes + self.prompts * WIDTH * feature_bytes
        return reads + self.batch * self.size ** 2

    def reference_scratch_bytes(self) -> int:
        """float32 upsampled features [B, D, H, W] plus logits [B, K, H, W]."""
        return 4 * self.batch * self.size ** 2 * (WIDTH + self.prompts)

    def torch_fused_scratch_bytes(self) -> int:
        """float32 upsampled logits [B, K, H, W] (and argmax's int64 result)."""
        return 4 * self.batch * self.size ** 2 * self.prompts + 8 * self.batch * self.size ** 2


def seg_cases(quick: bool) -> List[SegCase]:
    if quick:
        return [SegCase(448, 21, 8)]
    return [SegCase(size, prompts, batch) for size in (224, 448, 1024) for prompts in (21, 150)
            for batch in (1, 8, 32)]


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--write", type=Path, default=None,
                        help="put the tables in this markdown file, between gpu-check markers")
    parser.add_argument("--skip-tests", action="store_true", help="only time, do not run pytest")
    parser.add_argument("--quick", action="store_true", help="one seg-head configuration (checks the script)")
    parser.add_argument("--dry-run", action="store_true", help="print the plan and byte counts, run nothing")
    parser.add_argument("--memory-budget-gb", type=float, default=24.0,
                        help="skip a torch variant whose scratch memory would exceed this")
    parser.add_argument("--test-timeout", type=int, default=180, help="seconds allowed for the pytest run")
    return parser.parse_args(argv)


# ----------------------------------------------------------------------------------------------
# Tests
# ----------------------------------------------------------------------------------------------

def run_tests(timeout: int) -> str:
    env = dict(os.environ, TRITON_INTERPRET="0")
    command = [sys.executable, "-m", "pytest", str(REPO / "tests" / "kernels"), "-q", "-p", "no:cacheprovider"]
    print(f"$ TRITON_INTERPRET=0 {' '.join(command)}", flush=True)
    try:
        result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return f"pytest tests/kernels: timed out after {timeout} s"
    tail = [line for line in result.stdout.strip().splitlines() if line.strip()][-1:]
    print(result.stdout[-4000:], result.stderr[-2000:], sep="\n", flush=True)
    return f"pytest tests/kernels (compiled kernels): exit {result.returncode}: {' '.join(tail)}"


# ----------------------------------------------------------------------------------------------
# Timing
# ----------------------------------------------------------------------------------------------

def bench_ms(fn: Callable[[], object]) -> float:
    from triton.testing import do_bench

    return float(do_bench(fn, warmup=10, rep=50, return_mode="median"))


def copy_bandwidth_gbs() -> float:
    """Device-to-device copy of 1 GiB: (read + write) bytes / median time."""
    size = 1 << 30
    src = torch.empty(size, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    ms = bench_ms(lambda: dst.copy_(src))
    del src, dst
    return 2 * size / (ms * 1e-3) / 1e9


def torch_fused(patch: torch.Tensor, text: torch.Tensor, size: int) -> torch.Tensor:
    """The best plain-torch path: patch logits, F.interpolate of K channels, argmax."""
    batch, h, w, dim = patch.shape
    logits = (patch.reshape(-1, dim).float() @ text.float().t()).reshape(batch, h, w, -1).permute(0, 3, 1, 2)
    up = F.interpolate(logits, size=(size, size), mode="bilinear", align_corners=False)
    return up.argmax(dim=1)


def time_seg_head(cases: Sequence[SegCase], budget_bytes: float, copy_gbs: float) -> List[Dict[str, str]]:
    from clippy_rt.kernels.native import native_available, seg_head_native
    from clippy_rt.kernels.seg_head import seg_head, seg_head_reference_procedure

    has_native = native_available()
    rows = []
    generator = torch.Generator().manual_seed(0)
    for case in cases:
        print(f"seg head {case}", flush=True)
        patch = F.normalize(torch.randn(case.batch, case.grid, case.grid, WIDTH, generator=generator), dim=-1)
        text = F.normalize(torch.randn(case.prompts, WIDTH, generator=generator), dim=-1)
        patch, text = patch.to("cuda", torch.float16), text.to("cuda", torch.float16)
        out = (case.size, case.size)
        timings: Dict[str, Optional[float]] = {}
        timings["triton"] = bench_ms(lambda: seg_head(patch, text, out, backend="triton"))
        timings["triton+scores"] = bench_ms(lambda: seg_head(patch, text, out, return_scores=True, backend="triton"))
        timings["native"] = bench_ms(lambda: seg_head_native(patch, text, out)) if has_native else None
        timings["torch"] = (bench_ms(lambda: torch_fused(patch, text, case.size))
                            if case.torch_fused_scratch_bytes() <= budget_bytes else None)
        timings["reference"] = (bench_ms(lambda: seg_head_reference_procedure(patch, text, out))
                                if case.reference_scratch_bytes() <= budget_bytes else None)
        torch.cuda.empty_cache()
        must = case.must_move_bytes()
        gbs = must / (timings["triton"] * 1e-3) / 1e9
        rows.append({
            "output": f"{case.size}", "K": f"{case.prompts}", "batch": f"{case.batch}",
            "reference ms": _ms(timings["reference"]), "torch fused ms": _ms(timings["torch"]),
            "triton ms": _ms(timings["triton"]), "triton+scores ms": _ms(timings["triton+scores"]),
            "native ms": _ms(timings["native"]),
            "vs reference": _ratio(timings["reference"], timings["triton"]),
            "vs torch": _ratio(timings["torch"], timings["triton"]),
            "must move MB": f"{must / 1e6:.1f}", "triton GB/s": f"{gbs:.0f}",
            "% of copy": f"{100 * gbs / copy_gbs:.0f}%",
        })
    return rows


def time_patch_pool(quick: bool) -> List[Dict[str, str]]:
    from clippy_rt.kernels.patch_pool import patch_pool, patch_pool_ref

    rows = []
    for batch, grid in ([(8, 28)] if quick else [(1, 14), (8, 28), (32, 28), (32, 64)]):
        tokens = torch.randn(batch, 1 + grid * grid, WIDTH, device="cuda", dtype=torch.float16)
        triton_ms = bench_ms(lambda: patch_pool(tokens, backend="triton"))
        torch_ms = bench_ms(lambda: patch_pool_ref(tokens))
        must = 2 * tokens.numel() * tokens.element_size()  # read the tokens, write the patches (+ tiny pooled)
        rows.append({"batch": f"{batch}", "tokens": f"1+{grid}x{grid}", "torch ms": _ms(torch_ms),
                     "triton ms": _ms(triton_ms), "speed-up": _ratio(torch_ms, triton_ms),
                     "must move MB": f"{must / 1e6:.1f}", "triton GB/s": f"{must / (triton_ms * 1e-3) / 1e9:.0f}"})
    return rows


def time_preprocess(quick: bool) -> List[Dict[str, str]]:
    from clippy_rt.kernels.preprocess import preprocess, preprocess_ref

    rows = []
    cases = [(8, (1080, 1920), 448)] if quick else [(1, (480, 640), 224), (8, (1080, 1920), 448),
                                                    (8, (720, 1280), 1024)]
    for batch, frame, size in cases:
        frames = torch.randint(0, 256, (batch, *frame, 3), dtype=torch.uint8, device="cuda")
        triton_ms = bench_ms(lambda: preprocess(frames, (size, size), MEAN, STD, out_dtype=torch.float16,
                                                backend="triton"))
        torch_ms = bench_ms(lambda: preprocess_ref(frames, (size, size), MEAN, STD, out_dtype=torch.float16))
        must = frames.numel() + batch * 3 * size * size * 2
        rows.append({"batch": f"{batch}", "frame": f"{frame[0]}x{frame[1]}", "output": f"{size}",
                     "torch ms": _ms(torch_ms), "triton ms": _ms(triton_ms), "speed-up": _ratio(torch_ms, triton_ms),
                     "must move MB": f"{must / 1e6:.1f}", "triton GB/s": f"{must / (triton_ms * 1e-3) / 1e9:.0f}"})
    return rows


def _ms(value: Optional[float]) -> str:
    return "skipped" if value is None else f"{value:.3f}"


def _ratio(slow: Optional[float], fast: Optional[float]) -> str:
    return "-" if slow is None or fast is None else f"{slow / fast:.1f}x"


def markdown_table(rows: Sequence[Dict[str, str]]) -> str:
    if not rows:
        return "(no rows)"
    header = list(rows[0])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row[key] for key in header) + " |" for row in rows]
    return "\n".join(lines)


def write_section(path: Path, text: str) -> None:
    """Replace the text between the gpu-check markers of ``path`` (append them if absent)."""
    block = f"{BEGIN}\n{text}\n{END}"
    old = path.read_text(encoding="utf-8") if path.exists() else ""
    if BEGIN in old and END in old:
        new = old[:old.index(BEGIN)] + block + old[old.index(END) + len(END):]
    else:
        new = (old.rstrip("\n") + "\n\n" if old.strip() else "") + block + "\n"
    path.write_text(new, encoding="utf-8")


def dry_run(args) -> str:
    rows = []
    for case in seg_cases(args.quick):
        budget = args.memory_budget_gb * 1e9
        rows.append({"output": f"{case.size}", "K": f"{case.prompts}", "batch": f"{case.batch}",
                     "grid": f"{case.grid}x{case.grid}", "must move MB": f"{case.must_move_bytes() / 1e6:.1f}",
                     "reference scratch GB": f"{case.reference_scratch_bytes() / 1e9:.1f}"
                     + ("" if case.reference_scratch_bytes() <= budget else " (skipped)"),
                     "torch scratch GB": f"{case.torch_fused_scratch_bytes() / 1e9:.2f}"
                     + ("" if case.torch_fused_scratch_bytes() <= budget else " (skipped)")})
    return "Planned seg-head configurations (float16 features, D = 768):\n\n" + markdown_table(rows)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.dry_run:
        print(dry_run(args))
        return 0
    if not torch.cuda.is_available():
        print("gpu_check: no CUDA device here; nothing to check (run it on a GPU machine, or use --dry-run)",
              file=sys.stderr)
        return 0
    os.environ["TRITON_INTERPRET"] = "0"  # before triton is imported below
    try:
        import triton
    except ImportError as exc:
        print(f"gpu_check: triton is not installed ({exc}); `pip install triton`", file=sys.stderr)
        return 1
    start = time.perf_counter()
    parts = [f"GPU check, {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC: "
             f"{torch.cuda.get_device_name()}, torch {torch.__version__}, triton {triton.__version__}, "
             f"CUDA {torch.version.cuda}, {platform.platform()}"]
    if not args.skip_tests:
        parts.append(run_tests(args.test_timeout))
    copy_gbs = copy_bandwidth_gbs()
    parts.append(f"Device-to-device copy bandwidth (1 GiB, read + write): {copy_gbs:.0f} GB/s")
    budget = args.memory_budget_gb * 1e9
    parts.append("### Seg head (labels only unless noted; float16 features, D = 768; "
                 "'must move' = features + text read once, uint8 labels written once)\n\n"
                 + markdown_table(time_seg_head(seg_cases(args.quick), budget, copy_gbs)))
    parts.append("### patch_pool (float16 tokens)\n\n" + markdown_table(time_patch_pool(args.quick)))
    parts.append("### preprocess (uint8 frames -> float16 NCHW, antialiased)\n\n"
                 + markdown_table(time_preprocess(args.quick)))
    parts.append(f"Total gpu_check time: {time.perf_counter() - start:.0f} s")
    text = "\n\n".join(parts)
    print(text)
    if args.write is not None:
        write_section(args.write, "## Kernel GPU check\n\n" + text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
