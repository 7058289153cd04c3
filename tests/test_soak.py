"""Thousands of segment calls: resident memory stays flat after warm-up.

The short run (CI) makes 1,000 calls; the long one (``pytest --soak``) 20,000. Both use
varied image sizes, resize modes and batch sizes with a fixed prompt set, as a camera
stream would. tools/soak.py prints the figures docs/operations.md quotes.
"""

from __future__ import annotations

import gc

import numpy as np
import pytest

import clippy_rt

PROMPTS = ["background|grass|sky", "a red circle", "a blue square", "a cross"]
SHAPES = [(40, 56), (32, 32), (48, 36), (64, 64)]
MODES = ["squash", "letterbox", "crop"]


def resident_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * __import__("os").sysconf("SC_PAGE_SIZE")


def run_calls(engine, calls: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    prompts = {name.split("|")[0]: name.split("|") for name in PROMPTS}
    frames = [rng.integers(0, 256, (*shape, 3), dtype=np.uint8) for shape in SHAPES]
    for index in range(calls):
        batch = [frames[(index + j) % len(frames)] for j in range(1 + index % 3)]
        results = engine.segment(batch, prompts, resize=MODES[index % len(MODES)])
        assert len(results) == len(batch)


def growth_after_warmup(engine, calls: int, warmup: int = 300) -> int:
    """RSS growth in bytes over ``calls`` calls made after ``warmup`` calls (one torch thread:
    on a shared 2-core machine two threads spend most of each small call waiting)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run_calls(engine, warmup)
        gc.collect()
        before = resident_bytes()
        run_calls(engine, calls, seed=1)
        gc.collect()
        return resident_bytes() - before
    finally:
        torch.set_num_threads(threads)


@pytest.mark.skipif(not __import__("os").path.exists("/proc/self/statm"), reason="needs /proc (Linux)")
def test_rss_is_flat_over_1000_calls(tiny_model_dir):
    engine = clippy_rt.load(tiny_model_dir)
    # tools/soak.py measured +0.1 MB over 20,000 calls after the warm-up (docs/operations.md, "Threads,
    # long runs and interrupts"). An engine that kept every call's results alive fails this.
    assert growth_after_warmup(engine, 1000) < 8 * 2**20


@pytest.mark.soak
@pytest.mark.skipif(not __import__("os").path.exists("/proc/self/statm"), reason="needs /proc (Linux)")
def test_rss_is_flat_over_20000_calls(tiny_model_dir):
    engine = clippy_rt.load(tiny_model_dir)
    assert growth_after_warmup(engine, 20000) < 8 * 2**20
