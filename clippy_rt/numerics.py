"""Finite checks: NaN or infinity in weights or outputs is an error, never a result."""

from __future__ import annotations

from typing import Mapping

import torch

from .errors import CheckpointError, NumericsError


def check_finite(tensor: torch.Tensor, what: str) -> None:
    """Raise NumericsError if ``tensor`` holds NaN or an infinity. Skipped while a CUDA
    graph is being captured (the check reads the value back to the host)."""
    if tensor.is_cuda and torch.cuda.is_current_stream_capturing():
        return
    if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
        raise NumericsError(f"the {what} hold NaN or infinite values: the weights or the input are "
                            f"corrupt, or the precision overflowed")


def check_weights(state: Mapping[str, torch.Tensor], where: str) -> None:
    """Every entry a floating-point tensor with finite values; else CheckpointError naming the key.

    Integer and boolean tensors are refused rather than cast: a weight stored as an
    integer is a wrong file, not a rounding choice.
    """
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(f"{where}: {key!r} is a {type(value).__name__}, expected a tensor")
        if not value.is_floating_point():
            raise CheckpointError(f"{where}: {key!r} is a {str(value.dtype).replace('torch.', '')} tensor; "
                                  f"weights must be floating point")
        if not bool(torch.isfinite(value).all()):
            raise CheckpointError(f"{where}: {key!r} holds NaN or infinite values")
