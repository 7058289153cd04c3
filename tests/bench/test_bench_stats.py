"""Latency statistics: nearest-rank percentiles, median, edge cases, throughput."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest

from clippy_rt.bench.stats import median, nearest_rank_percentile, summarize


@pytest.mark.parametrize("n", [1, 2, 3, 7, 10, 19, 20, 21, 99, 100, 101, 1000])
@pytest.mark.parametrize("q", [1, 25, 50, 90, 95, 99, 100])
def test_percentile_matches_numpy_inverted_cdf(n, q):
    # numpy's "inverted_cdf" (Hyndman & Fan type 1) is the nearest-rank definition.
    samples = np.random.default_rng(n).exponential(3.0, n)
    expected = float(np.percentile(samples, q, method="inverted_cdf"))
    assert nearest_rank_percentile(sorted(samples.tolist()), q) == expected


@pytest.mark.parametrize("n", [7, 10, 1000, 1001])
@pytest.mark.parametrize("q", [99.9, 12.5, 33.3])
def test_fractional_percentile_uses_the_exact_rank(n, q):
    # Exact rational arithmetic: 99.9 % of 1000 samples is rank 999, although 99.9 * 1000 / 100
    # evaluates to 999.0000000000001 in floats (and numpy then picks rank 1000).
    rank = math.ceil(Fraction(str(q)) * n / 100)
    samples = [float(i) for i in range(1, n + 1)]
    assert nearest_rank_percentile(samples, q) == float(rank)


def test_percentiles_of_one_to_hundred_are_the_ranks():
    stats = summarize(range(1, 101))
    assert (stats.p90, stats.p95, stats.p99) == (90.0, 95.0, 99.0)
    assert stats.median == 50.5
    assert (stats.min, stats.max, stats.count) == (1.0, 100.0, 100)


def test_few_samples_put_the_tail_percentiles_on_the_maximum():
    stats = summarize([5.0, 1.0, 4.0, 2.0, 3.0, 9.0, 8.0, 7.0, 6.0, 10.0])
    assert stats.p90 == 9.0  # ceil(0.9 * 10) = 9th of 10
    assert stats.p95 == 10.0 and stats.p99 == 10.0
    assert stats.median == 5.5


def test_one_sample():
    stats = summarize([4.25])
    for name in ("min", "mean", "median", "p90", "p95", "p99", "max"):
        assert getattr(stats, name) == 4.25
    assert stats.std == 0.0
    assert stats.count == 1


def test_equal_samples():
    stats = summarize([0.5] * 37)
    for name in ("min", "mean", "median", "p90", "p95", "p99", "max"):
        assert getattr(stats, name) == 0.5
    assert stats.std == 0.0


def test_mean_std_total_against_numpy():
    samples = np.random.default_rng(3).gamma(2.0, 1.5, 257)
    stats = summarize(samples.tolist())
    assert math.isclose(stats.mean, float(samples.mean()), rel_tol=1e-12)
    assert math.isclose(stats.std, float(samples.std(ddof=0)), rel_tol=1e-12)
    assert math.isclose(stats.total, float(samples.sum()), rel_tol=1e-12)
    assert stats.median == float(np.median(samples))


def test_median_even_and_odd():
    assert median([1.0, 2.0, 10.0]) == 2.0
    assert median([1.0, 2.0, 4.0, 10.0]) == 3.0


def test_throughput_is_items_over_mean_latency():
    stats = summarize([10.0, 30.0])  # mean 20 ms
    assert stats.throughput(8) == pytest.approx(400.0)
    assert summarize([0.0]).throughput(1) == math.inf
    with pytest.raises(ValueError, match="items_per_iteration"):
        stats.throughput(0)


@pytest.mark.parametrize("bad", [[], [1.0, float("nan")], [float("inf")], [-0.1]])
def test_bad_samples_are_rejected(bad):
    with pytest.raises(ValueError):
        summarize(bad)


@pytest.mark.parametrize("q", [0, -5, 100.5, True, "90"])
def test_bad_percentile_is_rejected(q):
    with pytest.raises(ValueError, match="percentile"):
        nearest_rank_percentile([1.0, 2.0], q)
