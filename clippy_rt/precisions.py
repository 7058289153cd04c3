"""Precision names, defined once.

``PRECISIONS`` is every name an engine can be loaded with; the torch backend computes in
``COMPUTE_DTYPES[name]`` (int8 exists only as ONNX Runtime's quantised graphs on the CPU).
ONNX directories hold the subset ``formats.io_spec.GRAPH_PRECISIONS``; TensorRT engines fix
theirs when built.
"""

from __future__ import annotations

import torch

from .errors import InputError

# Precision name -> the dtype the torch model computes in.
COMPUTE_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
PRECISIONS = tuple(COMPUTE_DTYPES) + ("int8",)


def compute_dtype(precision: str) -> torch.dtype:
    """The torch dtype of a compute precision; ``InputError`` for any other name."""
    if precision not in COMPUTE_DTYPES:
        raise InputError(f"precision must be one of {', '.join(COMPUTE_DTYPES)}, got {precision!r}")
    return COMPUTE_DTYPES[precision]
