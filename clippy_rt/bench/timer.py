"""Timing loop: warm-up by time, then at least ``duration_s`` and ``min_iters``.

One iteration of a measured function is timed twice:

- host wall time: a ``clock()`` reading before the call and one after the call *and* a
  device synchronisation, so it is the latency a caller waiting for the result sees;
- on CUDA, device time: CUDA events recorded on torch's current stream before and after
  the call, which measure the GPU's work on that stream (no Python or launch overhead once
  the queue is full). Work a backend queues on a stream of its own is covered only when
  the backend waits for that stream before returning (the span then ends at the return).

The measured function takes one argument, a ``marks`` recorder. ``marks("h2d")`` closes
a phase named ``h2d`` that began at the previous mark (or at the start of the iteration);
``marks.add("text", 1.5)`` records a phase timed elsewhere (in milliseconds). On CUDA
phase boundaries are CUDA events (device time); on the CPU they are clock readings.
Functions that do not care about phases ignore the argument.

Peak memory: resident set size (RSS) and, on CUDA, the torch caching allocator's peak.
"""

from __future__ import annotations

import math
import re
import resource
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple

import torch

from clippy_rt.validate import check_positive_int

Clock = Callable[[], float]
"""Returns seconds from an arbitrary origin, monotonic (``time.perf_counter`` by default)."""


@dataclass(frozen=True)
class TimingPolicy:
    """How long to warm up and measure.

    warmup_s:   iterations run untimed until this much wall time has passed (0: none).
    duration_s: measured iterations continue until this much wall time has passed ...
    min_iters:  ... and at least this many iterations were timed.
    max_iters:  optional hard cap on timed iterations (None: no cap).
    """

    warmup_s: float = 0.2
    duration_s: float = 1.0
    min_iters: int = 10
    max_iters: Optional[int] = None

    def __post_init__(self) -> None:
        for name in ("warmup_s", "duration_s"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                    or value < 0:
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        check_positive_int("min_iters", self.min_iters, error=ValueError)
        if self.max_iters is not None and (isinstance(self.max_iters, bool) or not isinstance(self.max_iters, int)
                                           or self.max_iters < self.min_iters):
            raise ValueError(f"max_iters must be None or an integer >= min_iters ({self.min_iters}), "
                             f"got {self.max_iters!r}")


@dataclass(frozen=True)
class Measurement:
    """Raw samples of one measured function, in milliseconds.

    host_ms:      host wall time per timed iteration (call + device synchronisation).
    device_ms:    CUDA-event time per timed iteration, or None off CUDA.
    phases_ms:    per phase name, one value per timed iteration that recorded it.
    phase_clock:  "cuda-events" or "host": what timed the phases marked with ``marks(name)``.
    warmup_iters: untimed iterations run first.
    elapsed_s:    wall time of the timed loop (including untimed per-iteration setup).
    """

    host_ms: Tuple[float, ...]
    device_ms: Optional[Tuple[float, ...]]
    phases_ms: Dict[str, Tuple[float, ...]] = field(default_factory=dict)
    phase_clock: str = "host"
    warmup_iters: int = 0
    elapsed_s: float = 0.0


class _HostMarks:
    """Phase boundaries from a host clock."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._last = 0.0
        self.phases: Dict[str, float] = {}

    def start(self) -> None:
        self.phases = {}
        self._last = self._clock()

    def __call__(self, name: str) -> None:
        now = self._clock()
        self.phases[name] = self.phases.get(name, 0.0) + (now - self._last) * 1000.0
        self._last = now

    def add(self, name: str, milliseconds: float) -> None:
        self.phases[name] = self.phases.get(name, 0.0) + float(milliseconds)

    def collect(self) -> Dict[str, float]:
        return self.phases


class _CudaMarks:
    """Phase boundaries from CUDA events on the current stream, read after a synchronisation."""

    def __init__(self) -> None:
        self._begin = torch.cuda.Event(enable_timing=True)
        self._events: List[Tuple[str, "torch.cuda.Event"]] = []
        self._pool: List["torch.cuda.Event"] = []
        self._added: Dict[str, float] = {}

    def start(self) -> None:
        self._pool.extend(event for _, event in self._events)
        self._events = []
        self._added = {}
        self._begin.record()

    def __call__(self, name: str) -> None:
        event = self._pool.pop() if self._pool else torch.cuda.Event(enable_timing=True)
        event.record()
        self._events.append((name, event))

    def add(self, name: str, milliseconds: float) -> None:
        self._added[name] = self._added.get(name, 0.0) + float(milliseconds)

    def collect(self) -> Dict[str, float]:
        phases = dict(self._added)
        previous = self._begin
        for name, event in self._events:
            phases[name] = phases.get(name, 0.0) + previous.elapsed_time(event)
            previous = event
        return phases


class _NoMarks:
    def __call__(self, name: str) -> None:
        pass

    def add(self, name: str, milliseconds: float) -> None:
        pass


def is_cuda(device) -> bool:
    return device is not None and torch.device(device).type == "cuda"


def measure(fn: Callable, policy: TimingPolicy, *, device=None, clock: Clock = time.perf_counter,
            setup: Optional[Callable[[], None]] = None) -> Measurement:
    """Warm ``fn`` up, then time it under ``policy``; see the module doc.

    ``fn(marks)`` is the measured call. ``setup()``, when given, runs before every
    iteration (warm-up and timed) outside the timed region: e.g. clearing a cache for a
    cold measurement. ``device``: a CUDA device makes every iteration end with a
    synchronisation of that device and adds CUDA-event timing; anything else times on
    the host only. ``clock`` is injectable so the loop can be tested exactly.
    """
    if is_cuda(device):
        # Events and streams belong to the current device: make it the measured one.
        with torch.cuda.device(torch.device(device)):
            return _measure(fn, policy, device, clock, setup, cuda=True)
    return _measure(fn, policy, device, clock, setup, cuda=False)


def _measure(fn: Callable, policy: TimingPolicy, device, clock: Clock, setup: Optional[Callable[[], None]],
             *, cuda: bool) -> Measurement:
    sync = (lambda: torch.cuda.synchronize(device)) if cuda else (lambda: None)

    warmup_iters = 0
    no_marks = _NoMarks()
    warmup_start = clock()
    while clock() - warmup_start < policy.warmup_s:
        if setup is not None:
            setup()
        fn(no_marks)
        sync()
        warmup_iters += 1

    marks = _CudaMarks() if cuda else _HostMarks(clock)
    if cuda:
        begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    host: List[float] = []
    device_times: List[float] = []
    phases: Dict[str, List[float]] = {}
    loop_start = clock()
    while True:
        if setup is not None:
            setup()
        start = clock()
        if cuda:
            begin.record()
        marks.start()
        fn(marks)
        if cuda:
            end.record()
        sync()
        stop = clock()
        host.append((stop - start) * 1000.0)
        if cuda:
            device_times.append(begin.elapsed_time(end))
        for name, value in marks.collect().items():
            phases.setdefault(name, []).append(value)
        count = len(host)
        if policy.max_iters is not None and count >= policy.max_iters:
            break
        if count >= policy.min_iters and clock() - loop_start >= policy.duration_s:
            break
    return Measurement(host_ms=tuple(host), device_ms=tuple(device_times) if cuda else None,
                       phases_ms={name: tuple(values) for name, values in phases.items()},
                       phase_clock="cuda-events" if cuda else "host", warmup_iters=warmup_iters,
                       elapsed_s=clock() - loop_start)


# ---------------------------------------------------------------------------------------------
# Peak memory

_CLEAR_REFS = "/proc/self/clear_refs"
_STATUS = "/proc/self/status"


def reset_peak_memory(device=None) -> str:
    """Reset the peak counters before a measurement; returns the scope of the RSS peak.

    "measurement": Linux's peak RSS (VmHWM) was reset (writing 5 to /proc/self/clear_refs),
    so the next reading covers this measurement only; "process": it could not be reset
    and the reading is the process's peak so far (still an upper bound).
    """
    if is_cuda(device):
        torch.cuda.reset_peak_memory_stats(device)
    try:
        with open(_CLEAR_REFS, "w") as handle:
            handle.write("5")
        return "measurement"
    except OSError:
        return "process"


def peak_rss_bytes() -> int:
    """Peak resident set size of this process since the last reset, in bytes."""
    try:
        with open(_STATUS) as handle:
            match = re.search(r"^VmHWM:\s+(\d+)\s+kB", handle.read(), re.MULTILINE)
        if match:
            return int(match.group(1)) * 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # ru_maxrss is in kilobytes on Linux and in bytes on macOS.
    return int(peak) if sys.platform == "darwin" else int(peak) * 1024


def peak_device_bytes(device=None) -> Optional[int]:
    """Peak bytes held by torch's CUDA caching allocator since the last reset; None off CUDA.

    Memory that ONNX Runtime or TensorRT allocate themselves is not counted.
    """
    if not is_cuda(device):
        return None
    return int(torch.cuda.max_memory_allocated(device))
