"""Resident memory over a long run of segment calls (the figure docs/operations.md quotes).

Usage: python tools/soak.py [CALLS]   (default 20000; tiny random model, torch, CPU, one thread)
Prints RSS after a 300-call warm-up and every 2,000 calls after it.
"""

from __future__ import annotations

import gc
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import torch  # noqa: E402

import clippy_rt  # noqa: E402
from clippy_rt.formats.random_init import random_init  # noqa: E402
from test_soak import resident_bytes, run_calls  # noqa: E402


def main() -> None:
    calls = int(sys.argv[1]) if len(sys.argv) > 1 else 20000
    with tempfile.TemporaryDirectory() as tmp:
        random_init("tiny", Path(tmp) / "tiny", seed=0)
        engine = clippy_rt.load(Path(tmp) / "tiny")
        torch.set_num_threads(1)
        run_calls(engine, 300)
        gc.collect()
        start, base = time.perf_counter(), resident_bytes()
        print(f"after warm-up: {base / 2**20:.1f} MB")
        done = 0
        while done < calls:
            step = min(2000, calls - done)
            run_calls(engine, step, seed=done + 1)
            done += step
            gc.collect()
            rss = resident_bytes()
            print(f"{done:6d} calls: {rss / 2**20:.1f} MB ({(rss - base) / 2**20:+.1f} MB), "
                  f"{time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
