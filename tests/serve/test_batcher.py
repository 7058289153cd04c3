"""``Batcher``: when batches start, what they hold, where results go, failures and closing.
Deadlines run on a clock the test sets, so no assertion depends on how fast the machine is."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from clippy_rt.serve.batcher import Batcher, BatcherClosed

TIMEOUT = 10.0


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Engine:
    """Records each batch; ``hold`` blocks the engine thread inside a batch until released."""

    def __init__(self) -> None:
        self.batches = []
        self.hold = threading.Event()
        self.hold.set()
        self.entered = threading.Event()

    def __call__(self, requests):
        self.batches.append(list(requests))
        self.entered.set()
        assert self.hold.wait(TIMEOUT)
        return [("done", request) for request in requests]


async def inside_a_batch(engine):
    """Wait (without blocking the loop) until the engine thread is running a batch."""
    assert await asyncio.get_running_loop().run_in_executor(None, engine.entered.wait, TIMEOUT)


def frames(request):
    return request[1] if isinstance(request, tuple) else 1


async def _gather(batcher, requests):
    tasks = []
    for request in requests:
        tasks.append(asyncio.ensure_future(batcher(request)))
        await asyncio.sleep(0)  # queued in this order
    return await asyncio.wait_for(asyncio.gather(*tasks), TIMEOUT)


def run(coro):
    return asyncio.run(coro)


def test_a_lone_request_waits_for_company_until_its_deadline():
    clock, engine = Clock(), Engine()
    batcher = Batcher(engine, max_frames=8, wait_s=0.05, clock=clock)

    async def main():
        first = asyncio.ensure_future(batcher("a"))
        await asyncio.sleep(0.3)  # the clock has not moved: the window is still open
        assert engine.batches == [] and not first.done()
        second = asyncio.ensure_future(batcher("b"))
        await asyncio.sleep(0.3)
        assert engine.batches == []
        clock.now = 0.051  # the first request has waited wait_s
        return await asyncio.wait_for(asyncio.gather(first, second), TIMEOUT)

    assert run(main()) == [("done", "a"), ("done", "b")]
    assert engine.batches == [["a", "b"]]
    batcher.close()


def test_one_request_is_not_a_full_batch_of_two():
    clock, engine = Clock(), Engine()
    batcher = Batcher(engine, max_frames=2, wait_s=1.0, clock=clock)

    async def main():
        lone = asyncio.ensure_future(batcher("a"))
        await asyncio.sleep(0.3)
        assert not lone.done() and engine.batches == []
        clock.now = 1.0
        return await asyncio.wait_for(lone, TIMEOUT)

    assert run(main()) == ("done", "a")
    batcher.close()


def test_a_full_batch_starts_at_once():
    clock, engine = Clock(), Engine()
    batcher = Batcher(engine, max_frames=4, wait_s=3600.0, clock=clock)
    assert run(_gather(batcher, ["a", "b", "c", "d"])) == [("done", r) for r in "abcd"]
    assert engine.batches == [["a", "b", "c", "d"]]
    batcher.close()


def test_requests_queued_while_the_engine_runs_start_when_it_is_free():
    """Requests that waited ``wait_s`` behind a running batch go as soon as it ends, all of
    them together, with no second window opened when the engine frees up."""
    clock, engine = Clock(), Engine()
    batcher = Batcher(engine, max_frames=16, wait_s=1.0, clock=clock)

    async def main():
        engine.hold.clear()
        clock.now = 5.0
        first = asyncio.ensure_future(batcher("a"))
        await asyncio.sleep(0)  # queued at 5.0
        clock.now = 6.5  # "a" has waited out its window
        await inside_a_batch(engine)
        clock.now = 10.0
        later = [asyncio.ensure_future(batcher(name)) for name in "bcd"]
        await asyncio.sleep(0.1)
        clock.now = 11.5  # "b" to "d" have waited 1.5 s while "a" ran
        engine.hold.set()
        return await asyncio.wait_for(asyncio.gather(first, *later), TIMEOUT)

    assert run(main()) == [("done", r) for r in "abcd"]
    assert engine.batches == [["a"], ["b", "c", "d"]]
    batcher.close()


def test_batches_count_frames_and_a_large_request_runs_alone():
    clock, engine = Clock(), Engine()
    batcher = Batcher(engine, max_frames=4, wait_s=0.0, frames=frames, clock=clock)

    async def main():
        engine.hold.clear()
        blocker = asyncio.ensure_future(batcher(("x", 1)))
        await inside_a_batch(engine)
        queued = [asyncio.ensure_future(batcher(r)) for r in [("a", 3), ("b", 2), ("c", 2), ("d", 6), ("e", 1)]]
        await asyncio.sleep(0.1)
        engine.hold.set()
        return await asyncio.wait_for(asyncio.gather(blocker, *queued), TIMEOUT)

    results = run(main())
    assert [r[1][0] for r in results] == ["x", "a", "b", "c", "d", "e"]
    assert [[name for name, _ in batch] for batch in engine.batches] == [["x"], ["a"], ["b", "c"], ["d"], ["e"]]
    batcher.close()


def test_results_reach_their_callers_on_each_event_loop():
    batcher = Batcher(lambda requests: [r * 10 for r in requests], max_frames=64, wait_s=0.02)
    outputs = {}

    def loop_thread(offset):
        outputs[offset] = asyncio.run(_gather(batcher, [offset + i for i in range(20)]))

    threads = [threading.Thread(target=loop_thread, args=(offset,)) for offset in (0, 100, 200)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(TIMEOUT)
    assert outputs == {offset: [(offset + i) * 10 for i in range(20)] for offset in (0, 100, 200)}
    batcher.close()


def test_a_failed_batch_answers_each_caller_through_on_error():
    def broken(requests):
        raise RuntimeError("device lost")

    seen = []

    def on_error(requests, exc):
        seen.append((list(requests), str(exc)))
        return [(500, request) for request in requests]

    batcher = Batcher(broken, max_frames=2, wait_s=0.0, on_error=on_error)
    assert run(_gather(batcher, ["a", "b"])) == [(500, "a"), (500, "b")]
    assert seen and all(message == "device lost" for _, message in seen)
    # The engine thread survives a failed batch.
    assert run(_gather(batcher, ["c"])) == [(500, "c")]
    batcher.close()


def test_without_on_error_callers_get_the_exception():
    def broken(requests):
        raise KeyError("bad")

    batcher = Batcher(broken, max_frames=2, wait_s=0.0)
    for _ in range(2):  # the engine thread goes on after a failed batch
        with pytest.raises(KeyError):
            run(_gather(batcher, ["a"]))
    batcher.close()


def test_a_wrong_number_of_results_is_a_failure_not_a_shifted_answer():
    batcher = Batcher(lambda requests: requests[:-1], max_frames=3, wait_s=3600.0)
    with pytest.raises(RuntimeError, match="2 results for 3 requests"):
        run(_gather(batcher, ["a", "b", "c"]))
    batcher.close()


def test_a_request_whose_caller_left_is_not_run():
    clock, engine = Clock(), Engine()
    batcher = Batcher(engine, max_frames=8, wait_s=0.0, clock=clock)

    async def main():
        engine.hold.clear()
        first = asyncio.ensure_future(batcher("a"))
        await inside_a_batch(engine)
        gone = asyncio.ensure_future(batcher("gone"))
        kept = asyncio.ensure_future(batcher("kept"))
        await asyncio.sleep(0.05)
        gone.cancel()
        await asyncio.sleep(0.05)
        engine.hold.set()
        return await asyncio.wait_for(asyncio.gather(first, kept), TIMEOUT)

    assert run(main()) == [("done", "a"), ("done", "kept")]
    assert engine.batches == [["a"], ["kept"]]
    batcher.close()


def test_a_caller_leaving_while_its_batch_runs_leaves_the_others_answered():
    clock, engine = Clock(), Engine()
    batcher = Batcher(engine, max_frames=2, wait_s=3600.0, clock=clock)

    async def main():
        engine.hold.clear()
        gone = asyncio.ensure_future(batcher("gone"))
        kept = asyncio.ensure_future(batcher("kept"))
        await inside_a_batch(engine)
        gone.cancel()
        await asyncio.sleep(0.05)
        engine.hold.set()
        return await asyncio.wait_for(kept, TIMEOUT)

    assert run(main()) == ("done", "kept")
    assert engine.batches == [["gone", "kept"]]
    batcher.close()


def test_close_fails_queued_requests_and_refuses_new_ones():
    clock, engine = Clock(), Engine()
    batcher = Batcher(engine, max_frames=8, wait_s=0.0, clock=clock)

    async def main():
        engine.hold.clear()
        running = asyncio.ensure_future(batcher("a"))
        loop = asyncio.get_running_loop()
        await inside_a_batch(engine)
        queued = asyncio.ensure_future(batcher("b"))
        await asyncio.sleep(0.05)
        closing = loop.run_in_executor(None, batcher.close)
        await asyncio.sleep(0.05)
        engine.hold.set()  # the running batch still finishes
        await asyncio.wait_for(closing, TIMEOUT)
        with pytest.raises(BatcherClosed):
            await asyncio.wait_for(queued, TIMEOUT)
        with pytest.raises(BatcherClosed):
            await batcher("c")
        return await asyncio.wait_for(running, TIMEOUT)

    assert run(main()) == ("done", "a")
    assert engine.batches == [["a"]]


def test_frames_taken_and_left_are_counted_right():
    """After batches that filled up, a lone request waits out its window again."""
    clock, engine = Clock(), Engine()
    batcher = Batcher(engine, max_frames=3, wait_s=1.0, clock=clock)

    async def main():
        engine.hold.clear()
        first = asyncio.ensure_future(batcher("x"))
        await asyncio.sleep(0)
        clock.now = 2.0
        await inside_a_batch(engine)
        queued = [asyncio.ensure_future(batcher(name)) for name in "abcde"]
        await asyncio.sleep(0.1)
        clock.now = 4.0
        engine.hold.set()
        await asyncio.wait_for(asyncio.gather(first, *queued), TIMEOUT)
        lone = asyncio.ensure_future(batcher("f"))
        await asyncio.sleep(0.3)
        assert not lone.done()  # its window is open: nothing counted as queued but "f"
        clock.now = 5.5
        return await asyncio.wait_for(lone, TIMEOUT)

    assert run(main()) == ("done", "f")
    assert engine.batches == [["x"], ["a", "b", "c"], ["d", "e"], ["f"]]
    batcher.close()


def test_a_failing_on_error_reaches_the_callers_and_the_thread_goes_on():
    def broken(requests):
        raise RuntimeError("device lost")

    def on_error(requests, exc):
        raise KeyError("no answer")

    batcher = Batcher(broken, max_frames=1, wait_s=0.0, on_error=on_error)
    for _ in range(2):
        with pytest.raises(KeyError):
            run(_gather(batcher, ["a"]))
    batcher.close()


def test_a_batcher_left_open_does_not_keep_the_process_alive():
    import subprocess
    import sys

    code = ("from clippy_rt.serve.batcher import Batcher\n"
            "b = Batcher(lambda r: r, max_frames=4, wait_s=0.0)\n"
            "print('made')\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "made", done.stderr


@pytest.mark.parametrize("kwargs", [{"max_frames": 0, "wait_s": 0.0}, {"max_frames": 4, "wait_s": -1.0},
                                    {"max_frames": 4, "wait_s": float("nan")},
                                    {"max_frames": 4, "wait_s": float("inf")}])
def test_bad_settings_are_refused(kwargs):
    with pytest.raises(ValueError):
        Batcher(lambda requests: requests, **kwargs)
