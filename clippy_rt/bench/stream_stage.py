"""The ``stream`` stage: ``Engine.stream`` on B uint8 frames per call.

A camera loop with a fixed vocabulary: the stream is built once per case (K prompts,
the case's size, ``batch`` = B) and each iteration hands it the same B uint8 frames of
the frame size, labels and scores coming back to the host. On CUDA with the torch
backend the first (warm-up) calls capture the CUDA graph the timed calls replay.
Public API only.
"""

from __future__ import annotations

from typing import Callable, Optional, Tuple

import numpy as np

Timed = Tuple[Callable, Optional[Callable]]


def stream_case(case, engine, frames: np.ndarray, prompts) -> Timed:
    """(run, setup) for the runner: ``run(marks)`` segments ``frames`` [B, H, W, 3] uint8."""
    stream = engine.stream(prompts, size=case.size, batch=case.batch)
    batch = list(frames)

    def run_stream(marks):
        stream(batch)

    return run_stream, None
