"""Dynamic batching for a replica: requests from any number of event-loop coroutines are
queued, and one engine thread runs them in batches. Needs no Ray.

When the engine thread is free it takes what is queued at once, up to ``max_frames``
frames, unless the oldest queued request has waited less than ``wait_s``: then it waits
until that request has waited ``wait_s`` or enough frames to fill the batch are queued. So
a lone request on an idle replica waits up to ``wait_s`` for company, while requests that
queued up during the previous batch start as soon as the engine is free: the next batch
forms while this one runs, and the engine does not sit idle waiting for a window to close.
A request of more than ``max_frames`` frames runs alone.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from typing import Any, Callable, Deque, List, Optional, Sequence, Tuple

from ..validate import check_positive_int

logger = logging.getLogger("clippy_rt.serve")


class BatcherClosed(RuntimeError):
    """The batcher was closed: no more requests are run."""


class _Item:
    __slots__ = ("request", "frames", "future", "loop", "arrived")

    def __init__(self, request: Any, frames: int, future: asyncio.Future, loop, arrived: float) -> None:
        self.request = request
        self.frames = frames
        self.future = future
        self.loop = loop
        self.arrived = arrived


def _deliver(futures: Sequence[asyncio.Future], results: Sequence[Any]) -> None:
    for future, result in zip(futures, results):
        if not future.done():  # cancelled: its caller went away
            future.set_result(result)


def _fail(futures: Sequence[asyncio.Future], exc: BaseException) -> None:
    for future in futures:
        if not future.done():
            future.set_exception(exc)


class Batcher:
    """``await batcher(request)`` -> the result ``run_batch`` gave for it.

    ``run_batch(requests)`` returns one result per request, in order, and runs on the
    batcher's own thread, one batch at a time; if it raises, ``on_error(requests, exc)``
    gives the results instead (without it, every caller of the batch gets the exception).
    ``frames(request)`` counts a request's frames (default 1).
    """

    def __init__(self, run_batch: Callable[[List[Any]], Sequence[Any]], *, max_frames: int, wait_s: float,
                 frames: Optional[Callable[[Any], int]] = None,
                 on_error: Optional[Callable[[List[Any], Exception], Sequence[Any]]] = None,
                 name: str = "clippy-rt-batcher", clock: Callable[[], float] = time.monotonic) -> None:
        check_positive_int("max_frames", max_frames)
        if not (isinstance(wait_s, (int, float)) and 0 <= wait_s < float("inf")):
            raise ValueError(f"wait_s must be a finite number >= 0, got {wait_s!r}")
        self._run_batch = run_batch
        self._frames = frames or (lambda request: 1)
        self._on_error = on_error
        self.max_frames = max_frames
        self.wait_s = float(wait_s)
        self._clock = clock
        self._queue: Deque[_Item] = deque()
        self._queued_frames = 0
        self._ready = threading.Condition(threading.Lock())
        self._closed = False
        self._thread = threading.Thread(target=self._work, name=name, daemon=True)
        self._thread.start()

    async def __call__(self, request: Any) -> Any:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        frames = max(1, int(self._frames(request)))
        with self._ready:
            if self._closed:
                raise BatcherClosed("the batcher is closed")
            self._queue.append(_Item(request, frames, future, loop, self._clock()))
            self._queued_frames += frames
            self._ready.notify()
        return await future

    def close(self, timeout: Optional[float] = 5.0) -> None:
        """Run no more batches: requests still queued fail with BatcherClosed; the batch
        running finishes. Waits up to ``timeout`` seconds for the thread to end."""
        with self._ready:
            self._closed = True
            left = list(self._queue)
            self._queue.clear()
            self._queued_frames = 0
            self._ready.notify_all()
        self._hand_back(left, None, BatcherClosed("the batcher closed before this request ran"))
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    # -- the engine thread ---------------------------------------------------------------
    def _next_batch(self) -> Optional[List[_Item]]:
        with self._ready:
            while True:
                while not self._queue and not self._closed:
                    self._ready.wait()
                if self._closed:
                    return None
                deadline = self._queue[0].arrived + self.wait_s
                while self._queue and self._queued_frames < self.max_frames and not self._closed:
                    remaining = deadline - self._clock()
                    if remaining <= 0:
                        break
                    self._ready.wait(remaining)
                if self._closed:
                    return None
                batch, frames = [], 0
                while self._queue and (not batch or frames + self._queue[0].frames <= self.max_frames):
                    item = self._queue.popleft()
                    frames += item.frames
                    self._queued_frames -= item.frames
                    if not item.future.cancelled():  # its caller went away while it queued
                        batch.append(item)
                if batch:
                    return batch

    def _work(self) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            requests = [item.request for item in batch]
            try:
                results = list(self._run_batch(requests))
                if len(results) != len(requests):
                    raise RuntimeError(f"run_batch gave {len(results)} results for {len(requests)} requests")
            except Exception as exc:
                if self._on_error is None:
                    self._hand_back(batch, None, exc)
                    continue
                try:
                    results = list(self._on_error(requests, exc))
                except Exception as error_exc:  # the handler itself failed: callers see why
                    self._hand_back(batch, None, error_exc)
                    continue
            self._hand_back(batch, results, None)

    @staticmethod
    def _hand_back(batch: Sequence[_Item], results: Optional[Sequence[Any]], exc: Optional[BaseException]) -> None:
        """Set the batch's futures on their own loops: one callback per loop."""
        by_loop = {}
        for index, item in enumerate(batch):
            by_loop.setdefault(item.loop, []).append(index)
        for loop, indices in by_loop.items():
            futures = [batch[i].future for i in indices]
            try:
                if exc is None:
                    loop.call_soon_threadsafe(_deliver, futures, [results[i] for i in indices])
                else:
                    loop.call_soon_threadsafe(_fail, futures, exc)
            except RuntimeError:  # that loop is closed: nobody waits for these any more
                pass
