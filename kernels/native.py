"""The CUDA C++ segmentation head (``libclippy_rt_native.so``, built by CMake) via ctypes.

For machines where Triton is unavailable (Jetson): same contract as
:func:`clippy_rt.kernels.seg_head.seg_head`, on CUDA tensors. The library is optional
and loaded on first use from, in order: the ``path`` argument, the file named by
``CLIPPY_RT_NATIVE_LIB``, this package's directory, and ``build/`` at the source root.
Build it with

    cmake -S . -B build -DCMAKE_BUILD_TYPE=Release && cmake --build build -j
"""

from __future__ import annotations

import ctypes
import os
import threading
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import torch

from clippy_rt.errors import BackendUnavailableError, InputError

from .seg_head_inputs import check_inputs, label_dtype

LIBRARY_NAME = "libclippy_rt_native.so"
ABI_VERSION = 2  # CLIPPY_RT_NATIVE_ABI_VERSION in csrc/seg_head.h
BUILD_HOWTO = "cmake -S . -B build -DCMAKE_BUILD_TYPE=Release && cmake --build build -j (in the source tree)"

_DTYPE_CODES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}
_STATUS_NAMES = {1: "invalid argument", 2: "workspace too small", 3: "CUDA error"}

_lock = threading.Lock()
_libraries = {}


def library_candidates(path=None) -> List[Path]:
    """Where the library is looked for, in order."""
    if path is not None:
        return [Path(path)]
    candidates = []
    if os.environ.get("CLIPPY_RT_NATIVE_LIB"):
        candidates.append(Path(os.environ["CLIPPY_RT_NATIVE_LIB"]))
    here = Path(__file__).resolve().parent
    candidates += [here / LIBRARY_NAME, here.parent / "build" / LIBRARY_NAME]
    return candidates


def load_native(path=None) -> ctypes.CDLL:
    """Load (once) and return the library, with its function signatures declared.

    Raises BackendUnavailableError naming the places searched and how to build it, or
    chained to the loader's error when a file exists but does not load.
    """
    candidates = library_candidates(path)
    found = next((c for c in candidates if c.is_file()), None)
    if found is None:
        searched = ", ".join(str(c) for c in candidates)
        raise BackendUnavailableError(f"{LIBRARY_NAME} not found (searched: {searched}); build it with "
                                      f"`{BUILD_HOWTO}` or set CLIPPY_RT_NATIVE_LIB to its path")
    key = str(found.resolve())
    with _lock:
        library = _libraries.get(key)
        if library is not None:
            return library
        try:
            library = ctypes.CDLL(key)
        except OSError as exc:
            raise BackendUnavailableError(f"{found} exists but does not load: {exc}") from exc
        _declare(library)
        version = library.clippy_rt_native_abi_version()
        if version != ABI_VERSION:
            raise BackendUnavailableError(f"{found} has ABI version {version}, this clippy_rt expects "
                                          f"{ABI_VERSION}; rebuild it with `{BUILD_HOWTO}`")
        _libraries[key] = library
        return library


def _declare(library: ctypes.CDLL) -> None:
    library.clippy_rt_native_abi_version.argtypes = []
    library.clippy_rt_native_abi_version.restype = ctypes.c_int
    library.clippy_seg_head_workspace_bytes.argtypes = [ctypes.c_int] * 6  # B, h, w, K, H, W
    library.clippy_seg_head_workspace_bytes.restype = ctypes.c_size_t
    library.clippy_last_error.argtypes = []
    library.clippy_last_error.restype = ctypes.c_char_p
    library.clippy_seg_head.argtypes = [
        ctypes.c_void_p, ctypes.c_int,                      # labels, labels_bytes
        ctypes.c_void_p,                                    # scores
        ctypes.c_void_p, ctypes.c_int,                      # patch_features, dtype
        ctypes.c_void_p, ctypes.c_int,                      # text_embeds, dtype
        ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_int,  # B, h, w, D, K
        ctypes.c_int, ctypes.c_int,                         # H, W
        ctypes.POINTER(ctypes.c_double), ctypes.c_float,    # window, temperature
        ctypes.c_void_p, ctypes.c_size_t,                   # workspace, bytes
        ctypes.c_void_p,                                    # stream
    ]
    library.clippy_seg_head.restype = ctypes.c_int


def native_available(path=None) -> bool:
    """True when the library loads and a CUDA device is present."""
    if not torch.cuda.is_available():
        return False
    try:
        load_native(path)
    except BackendUnavailableError:
        return False
    return True


def seg_head_native(patch_features: torch.Tensor, text_embeds: torch.Tensor, out_size: Sequence[int], *,
                    window: Optional[Sequence[float]] = None, return_scores: bool = False,
                    temperature: Optional[float] = None, library_path=None
                    ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """:func:`clippy_rt.kernels.seg_head.seg_head` computed by the CUDA C++ library.

    Same arguments and results (labels [B, H, W] uint8 / int32, scores [B, H, W] float32
    or None); the tensors must be on one CUDA device. The work is queued on the current
    CUDA stream.
    """
    (height, width), window, temperature = check_inputs(patch_features, text_embeds, out_size, window,
                                                         temperature)
    if not torch.cuda.is_available():
        raise BackendUnavailableError("seg_head_native needs a CUDA device; none is available here "
                                      "(use clippy_rt.kernels.seg_head with impl='torch')")
    if not patch_features.is_cuda:
        raise InputError(f"seg_head_native takes CUDA tensors, got {patch_features.device}")
    library = load_native(library_path)
    if patch_features.shape[0] > 65535 or patch_features.shape[1] > 65535:
        raise InputError(f"seg_head_native takes at most 65535 images and 65535 patch rows per call, got "
                         f"shape {tuple(patch_features.shape)}")
    with torch.cuda.device(patch_features.device):
        stream = torch.cuda.current_stream(patch_features.device).cuda_stream
        return _run_library(library, patch_features, text_embeds, (height, width), window, return_scores,
                            temperature, stream)


def _run_library(library: ctypes.CDLL, patch_features: torch.Tensor, text_embeds: torch.Tensor,
                 out_size: Tuple[int, int], window, return_scores: bool, temperature, stream
                 ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Allocate outputs and workspace beside the inputs and call ``clippy_seg_head`` on
    validated arguments. The device is whatever the library computes on: CUDA tensors for
    the CUDA build, CPU tensors for a build with -DCLIPPY_RT_HOST_EMULATION."""
    height, width = out_size
    batch, h, w, dim = patch_features.shape
    num_prompts = text_embeds.shape[0]
    device = patch_features.device
    patch_features = patch_features.contiguous()
    text_embeds = text_embeds.contiguous()
    labels = torch.empty((batch, height, width), dtype=label_dtype(num_prompts), device=device)
    scores = torch.empty((batch, height, width), dtype=torch.float32, device=device) if return_scores else None
    workspace_bytes = library.clippy_seg_head_workspace_bytes(batch, h, w, num_prompts, height, width)
    workspace = torch.empty(max(workspace_bytes, 1), dtype=torch.uint8, device=device)
    window_arg = (ctypes.c_double * 4)(*window) if window is not None else None
    status = library.clippy_seg_head(
        labels.data_ptr(), labels.element_size(),
        scores.data_ptr() if scores is not None else None,
        patch_features.data_ptr(), _DTYPE_CODES[patch_features.dtype],
        text_embeds.data_ptr(), _DTYPE_CODES[text_embeds.dtype],
        batch, h, w, dim, num_prompts, height, width,
        window_arg, float(temperature) if temperature is not None else 0.0,
        workspace.data_ptr(), workspace.numel(),
        stream,
    )
    if status != 0:
        message = library.clippy_last_error().decode("utf-8", "replace")
        name = _STATUS_NAMES.get(status, f"status {status}")
        if status == 1:
            raise InputError(f"seg_head_native: {name}: {message}")
        raise RuntimeError(f"seg_head_native: {name}: {message}")
    return labels, scores
