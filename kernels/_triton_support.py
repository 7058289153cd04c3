"""Lazy Triton loading and implementation selection (``impl``) shared by the kernel files.

Triton is optional: importing a kernel module never imports it. It is imported
the first time a kernel is launched, and the kernel functions are wrapped then.

Triton fixes its mode when ``triton.language`` is first imported: with
``TRITON_INTERPRET=1`` in the environment at that moment every kernel (and every
``tl`` reduction, which is itself a jitted function) runs in the interpreter, on
CPU tensors; otherwise kernels are compiled for the GPU. One process cannot mix
the two, so this module checks that the mode Triton was loaded in matches the
request and says what to change when it does not.
"""

from __future__ import annotations

import contextlib
import numbers
import os
import sys
from typing import Callable, Dict, Iterable, Optional, Tuple

import torch

from clippy_rt.errors import BackendUnavailableError, InputError

IMPLS = ("auto", "triton", "torch")

_INTERPRET_HOWTO = ("set TRITON_INTERPRET=1 in the environment before triton is first imported "
                    "(for example `TRITON_INTERPRET=1 python ...`)")

_triton_error: Optional[BaseException] = None
_kernel_cache: Dict[Tuple[Callable, bool], object] = {}


def interpreter_requested() -> bool:
    """Whether ``TRITON_INTERPRET=1`` is set now (read at every call, not cached)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def load_triton():
    """Import and return the ``triton`` module, or raise BackendUnavailableError chained to
    the real import error (Triton may be missing, or broken on this platform)."""
    global _triton_error
    if _triton_error is not None:
        raise BackendUnavailableError(
            f"the Triton implementation needs the `triton` package, which failed to import: {_triton_error!r}; "
            "install it with `pip install triton` (or `pip install clippy-rt[gpu]`)") from _triton_error
    try:
        import triton
        import triton.language  # noqa: F401  (fixes the interpreter/compiled mode)
    except Exception as exc:  # an ImportError, or a RuntimeError from a broken install
        _triton_error = exc
        return load_triton()
    return triton


def triton_importable() -> bool:
    """True when ``import triton`` works here (imports it as a side effect)."""
    try:
        load_triton()
    except BackendUnavailableError:
        return False
    return True


def triton_interpreting() -> bool:
    """Whether the loaded ``triton.language`` was built for the interpreter."""
    load_triton()
    from triton.runtime.interpreter import InterpretedFunction
    import triton.language.standard as standard

    return isinstance(standard.max, InterpretedFunction)


def resolve_impl(impl: str, tensors: Iterable[torch.Tensor], op: str) -> str:
    """Map ``impl`` ("auto" | "triton" | "torch") to "triton" or "torch" for these tensors.

    "auto" picks Triton for CUDA tensors when it imports, the torch reference otherwise.
    "triton" on CPU tensors needs ``TRITON_INTERPRET=1`` (read now) and raises
    BackendUnavailableError saying how otherwise.
    """
    if impl not in IMPLS:
        raise InputError(f"{op}: impl must be one of {IMPLS}, got {impl!r}")
    if impl == "torch":
        return "torch"
    on_cuda = all(t.is_cuda for t in tensors)
    if impl == "auto":
        if on_cuda and not interpreter_requested() and triton_importable() and not triton_interpreting():
            return "triton"
        return "torch"
    # Checked before importing triton: importing it now without the flag would fix the
    # process in compiled mode.
    if not on_cuda and not interpreter_requested():
        raise BackendUnavailableError(
            f"{op}: impl='triton' got CPU tensors; Triton runs on CPU only in its interpreter: "
            f"{_INTERPRET_HOWTO}, or move the tensors to a CUDA device, or use impl='torch'")
    load_triton()
    if not on_cuda:
        if not triton_interpreting():
            raise BackendUnavailableError(
                f"{op}: TRITON_INTERPRET=1 is set but triton was imported earlier in compiled mode; "
                f"{_INTERPRET_HOWTO}")
    elif not triton_interpreting() and not torch.cuda.is_available():
        raise BackendUnavailableError(f"{op}: impl='triton' needs a working CUDA device")
    return "triton"


def jit(fn: Callable):
    """The Triton kernel object for ``fn`` in the mode Triton was loaded in (cached).

    The kernel functions are plain Python functions at module level (their
    ``tl.constexpr`` annotations are strings thanks to ``from __future__ import
    annotations``), so defining them needs no Triton; they are wrapped here on first use.
    """
    triton = load_triton()
    interpreting = triton_interpreting()
    key = (fn, interpreting)
    kernel = _kernel_cache.get(key)
    if kernel is None:
        module = sys.modules[fn.__module__]
        # The kernel bodies refer to `tl` as a module global; bind it before wrapping.
        module.tl = triton.language
        if interpreting:
            from triton.runtime.interpreter import InterpretedFunction

            kernel = InterpretedFunction(fn)
        else:
            from triton.runtime.jit import JITFunction

            kernel = JITFunction(fn)
        _kernel_cache[key] = kernel
    return kernel


def device_guard(tensor: torch.Tensor):
    """Make the tensor's CUDA device current for a launch (Triton launches on the current
    device); a no-op context for CPU tensors."""
    return torch.cuda.device(tensor.device) if tensor.is_cuda else contextlib.nullcontext()


def next_power_of_2(n: int) -> int:
    """Smallest power of two >= n (n >= 1)."""
    return 1 << (max(int(n), 1) - 1).bit_length()


def check_out_size(out_size) -> Tuple[int, int]:
    """Validate an output size: (H, W), two positive integers -> (int, int)."""
    try:
        height, width = out_size
    except (TypeError, ValueError):
        raise InputError(f"out_size must be (H, W), got {out_size!r}") from None
    for value in (height, width):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
            raise InputError(f"out_size must be two positive integers (H, W), got {out_size!r}")
    return int(height), int(width)


# Best launch configuration per (kernel, shape class), chosen once per process on the GPU.
_tuned: Dict[Tuple, int] = {}
# Launches smaller than this (elements of work, as the launcher counts them) take the
# default config: they are bound by launch latency, and tuning them only costs compiles.
TUNE_MIN_WORK = 1 << 22


def launch_tuned(key: Tuple, configs, launch: Callable[[dict], None], interpreting: bool,
                 config_index: Optional[int] = None, work: int = TUNE_MIN_WORK) -> int:
    """Run ``launch(config)`` with the best of a small config set; returns the index used.

    ``configs`` are dicts of meta-parameters (constexprs and ``num_warps``); every config
    computes the same outputs, so choosing among them changes only speed. On the first
    call for ``key`` on a GPU each config is launched (compiling it), timed with CUDA events
    over a few repeats, and the fastest is kept for the process; the outputs are those of
    the last launch, which are complete and correct. The interpreter, and a call during
    CUDA-graph capture before ``key`` was tuned, use ``configs[0]`` (capture cannot time),
    as do launches with less than TUNE_MIN_WORK ``work``. ``config_index`` forces one
    config (tests sweep every config this way).
    """
    if config_index is not None:
        launch(configs[config_index])
        return config_index
    if interpreting or len(configs) == 1 or (work < TUNE_MIN_WORK and key not in _tuned):
        launch(configs[0])
        return 0
    best = _tuned.get(key)
    if best is None and torch.cuda.is_current_stream_capturing():
        launch(configs[0])
        return 0
    if best is None:
        times = []
        for config in configs:
            launch(config)  # compile and warm up
            start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(3):
                launch(config)
            stop.record()
            stop.synchronize()
            times.append(start.elapsed_time(stop))
        best = min(range(len(configs)), key=times.__getitem__)
        _tuned[key] = best
    launch(configs[best])
    return best
