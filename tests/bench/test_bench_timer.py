"""The timing loop with an injected clock (exact), phases, setup, and one real-clock check."""

from __future__ import annotations

import itertools
import math
import time

import pytest

from clippy_rt.bench.stats import summarize
from clippy_rt.bench.timer import TimingPolicy, measure, peak_rss_bytes, reset_peak_memory


class FakeClock:
    """A clock that only moves when the measured code says so, in whole microseconds."""

    def __init__(self) -> None:
        self.micros = 0

    def __call__(self) -> float:
        return self.micros / 1e6

    def advance_ms(self, milliseconds: int) -> None:
        self.micros += milliseconds * 1000


def _cycling(clock: FakeClock, delays_ms):
    calls = itertools.count()

    def fn(marks):
        clock.advance_ms(delays_ms[next(calls) % len(delays_ms)])

    return fn


def test_known_delay_distribution_gives_exact_statistics():
    clock = FakeClock()
    delays = [1, 2, 3, 4]
    # Warm-up runs until 5 ms have passed: 1 + 2 + 3 = 6 ms, three calls.
    # Timed calls then cycle 4, 1, 2, 3 and stop at the first count >= 10 with >= 96.5 ms
    # elapsed: 39 calls (97 ms).
    policy = TimingPolicy(warmup_s=0.005, duration_s=0.0965, min_iters=10)
    result = measure(_cycling(clock, delays), policy, clock=clock)
    expected = ([4, 1, 2, 3] * 10)[:39]
    assert result.warmup_iters == 3
    assert len(result.host_ms) == 39
    for got, want in zip(result.host_ms, expected):
        assert math.isclose(got, want, abs_tol=1e-9)
    assert result.device_ms is None
    stats = summarize(result.host_ms)
    assert math.isclose(stats.mean, 97 / 39, rel_tol=1e-9)
    assert math.isclose(stats.median, 2.0, abs_tol=1e-9)  # 20th of 39: ten 1s, then ten 2s
    assert math.isclose(stats.p90, 4.0, abs_tol=1e-9)     # 36th of 39
    assert math.isclose(stats.min, 1.0, abs_tol=1e-9) and math.isclose(stats.max, 4.0, abs_tol=1e-9)


def test_min_iters_wins_over_a_short_duration():
    clock = FakeClock()
    policy = TimingPolicy(warmup_s=0.0, duration_s=0.001, min_iters=25)
    result = measure(_cycling(clock, [7]), policy, clock=clock)
    assert result.warmup_iters == 0
    assert len(result.host_ms) == 25


def test_max_iters_caps_the_run():
    clock = FakeClock()
    policy = TimingPolicy(warmup_s=0.0, duration_s=100.0, min_iters=3, max_iters=4)
    assert len(measure(_cycling(clock, [1]), policy, clock=clock).host_ms) == 4


def test_setup_runs_before_every_iteration_outside_the_timed_region():
    clock = FakeClock()
    setups = []

    def setup():
        setups.append(clock())
        clock.advance_ms(1000)

    policy = TimingPolicy(warmup_s=0.0015, duration_s=0.0, min_iters=5)
    result = measure(_cycling(clock, [1]), policy, clock=clock, setup=setup)
    assert result.warmup_iters == 1  # the first setup alone outlasts the warm-up
    assert len(setups) == result.warmup_iters + 5
    assert all(math.isclose(v, 1.0, abs_tol=1e-9) for v in result.host_ms)


def test_phases_from_marks_and_added_times():
    clock = FakeClock()

    def fn(marks):
        clock.advance_ms(2)
        marks("upload")
        clock.advance_ms(5)
        marks("compute")
        marks.add("decode", 0.25)
        clock.advance_ms(1)

    policy = TimingPolicy(warmup_s=0.0, duration_s=0.0, min_iters=3)
    result = measure(fn, policy, clock=clock)
    assert result.phase_clock == "host"
    assert set(result.phases_ms) == {"upload", "compute", "decode"}
    for name, value in (("upload", 2.0), ("compute", 5.0), ("decode", 0.25)):
        assert len(result.phases_ms[name]) == 3
        assert all(math.isclose(v, value, abs_tol=1e-9) for v in result.phases_ms[name])
    assert all(math.isclose(v, 8.0, abs_tol=1e-9) for v in result.host_ms)


def test_real_clock_never_reports_less_than_a_sleep():
    policy = TimingPolicy(warmup_s=0.0, duration_s=0.0, min_iters=5)
    result = measure(lambda marks: time.sleep(0.002), policy)
    assert min(result.host_ms) >= 2.0
    assert summarize(result.host_ms).median < 500.0


@pytest.mark.parametrize("kwargs", [
    dict(warmup_s=-1.0), dict(duration_s=float("nan")), dict(min_iters=0), dict(min_iters=2.5),
    dict(min_iters=5, max_iters=4), dict(warmup_s=True),
])
def test_bad_policies_are_rejected(kwargs):
    with pytest.raises(ValueError):
        TimingPolicy(**kwargs)


def test_peak_rss_covers_an_allocation_after_a_reset():
    scope = reset_peak_memory()
    before = peak_rss_bytes()
    block = bytearray(64 * 2**20)
    block[::4096] = b"\x01" * len(block[::4096])  # touch every page so it is resident
    after = peak_rss_bytes()
    del block
    assert scope in ("measurement", "process")
    assert after >= before + 48 * 2**20


@pytest.mark.gpu
def test_cuda_events_time_the_device_work():
    import torch

    matrix = torch.randn(1024, 1024, device="cuda")

    def fn(marks):
        product = matrix @ matrix
        marks("matmul")
        product.sum()
        marks("reduce")

    result = measure(fn, TimingPolicy(warmup_s=0.05, duration_s=0.0, min_iters=5), device="cuda")
    assert result.phase_clock == "cuda-events"
    assert len(result.device_ms) == len(result.host_ms) == 5
    for device, host in zip(result.device_ms, result.host_ms):
        # Events are recorded inside the host-timed region, which ends after a synchronisation.
        assert 0 < device <= host + 0.05
    assert set(result.phases_ms) == {"matmul", "reduce"}
