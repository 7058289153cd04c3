"""One engine shared by threads gives, call for call, what it gives serially (torch and
ONNX Runtime), as docs/operations.md's "Threads, long runs and interrupts" section states."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

import clippy_rt

THREADS, CALLS = 4, 5
PROMPTS = {"background": ["grass", "sky"], "circle": ["a red circle"], "square": ["a blue square"]}


def _frames():
    rng = np.random.default_rng(5)
    return [rng.integers(0, 256, (24 + 8 * (i % 4), 40 - 4 * (i % 3), 3), dtype=np.uint8) for i in range(THREADS * CALLS)]


def _check_shared(engine):
    frames = _frames()
    modes = ["squash", "letterbox", "crop"]
    serial = [engine.segment(frame, PROMPTS, resize=modes[i % 3]) for i, frame in enumerate(frames)]
    results, errors = {}, []
    start = threading.Barrier(THREADS)

    def work(worker):
        try:
            start.wait()
            for index in range(worker, len(frames), THREADS):
                results[index] = engine.segment(frames[index], PROMPTS, resize=modes[index % 3])
        except Exception as exc:  # noqa: BLE001 - collected and reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(w,)) for w in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    assert sorted(results) == list(range(len(frames)))
    for index, expected in enumerate(serial):
        assert torch.equal(results[index].labels, expected.labels), index
        torch.testing.assert_close(results[index].scores, expected.scores, rtol=0, atol=0)


def test_torch_engine_shared_by_threads(tiny_model_dir):
    _check_shared(clippy_rt.load(tiny_model_dir))


def test_onnxruntime_engine_shared_by_threads(tiny_onnx_dir):
    pytest.importorskip("onnxruntime")
    _check_shared(clippy_rt.load(tiny_onnx_dir, backend="onnxruntime"))
