"""Latency statistics of one measured configuration.

Definitions (every field in milliseconds unless stated):

- ``min``, ``max``: the extremes of the samples.
- ``mean``: the arithmetic mean; ``std``: the population standard deviation
  (divides by n: the samples are the whole run, not an estimate of anything wider).
- ``median``: the middle sample, or the mean of the two middle samples when n is even.
- ``p90``, ``p95``, ``p99``: nearest-rank percentiles. For samples sorted ascending
  x[1] <= ... <= x[n] and q in (0, 100]:

      p_q = x[ceil(q / 100 * n)]

  the smallest sample that at least q % of the samples do not exceed. Each percentile
  is therefore a latency that was actually observed, never an interpolation between
  two runs; with n < 100 samples p99 is the maximum (and with n < 10, p90 is too).
- ``throughput``: items per second = items per iteration * n / (sum of the samples),
  i.e. items / mean latency, the rate of a loop that runs one iteration after another.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Dict, Sequence

PERCENTILES = (90, 95, 99)


def nearest_rank_percentile(sorted_samples: Sequence[float], q: float) -> float:
    """The nearest-rank ``q``-th percentile of samples already sorted ascending.

    x[ceil(q / 100 * n)] with 1-based ranks, for 0 < q <= 100. Raises ValueError on an
    empty sequence or a q outside (0, 100].
    """
    if not sorted_samples:
        raise ValueError("a percentile needs at least one sample, got none")
    if isinstance(q, bool) or not isinstance(q, (int, float)) or not 0 < q <= 100:
        raise ValueError(f"percentile q must be a number in (0, 100], got {q!r}")
    n = len(sorted_samples)
    # The tolerance keeps a product that should be an integer (q * n / 100 computed in floats,
    # e.g. 99.9 * 1000 / 100) from rounding up to the next rank.
    rank = math.ceil(q * n / 100 - 1e-9)
    return float(sorted_samples[min(max(rank, 1), n) - 1])


def median(sorted_samples: Sequence[float]) -> float:
    """The middle of samples sorted ascending (mean of the two middle ones for even n)."""
    if not sorted_samples:
        raise ValueError("a median needs at least one sample, got none")
    n = len(sorted_samples)
    middle = n // 2
    if n % 2:
        return float(sorted_samples[middle])
    return (float(sorted_samples[middle - 1]) + float(sorted_samples[middle])) / 2.0


@dataclass(frozen=True)
class LatencyStats:
    """Summary of n latency samples, in milliseconds (see the module doc for definitions)."""

    count: int
    min: float
    mean: float
    median: float
    p90: float
    p95: float
    p99: float
    max: float
    std: float
    total: float

    def throughput(self, items_per_iteration: float) -> float:
        """Items per second over the run: items_per_iteration * count / (total / 1000)."""
        if items_per_iteration <= 0:
            raise ValueError(f"items_per_iteration must be positive, got {items_per_iteration!r}")
        if self.total <= 0:
            return math.inf
        return items_per_iteration * self.count / (self.total / 1000.0)

    def to_dict(self) -> Dict[str, float]:
        return asdict(self)


def summarize(samples_ms: Sequence[float]) -> LatencyStats:
    """LatencyStats of latency samples in milliseconds (order of the input is irrelevant).

    Raises ValueError for an empty sequence or a negative, NaN or infinite sample.
    """
    values = [float(v) for v in samples_ms]
    if not values:
        raise ValueError("no latency samples to summarise")
    for value in values:
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"latency samples must be finite and >= 0, got {value!r}")
    values.sort()
    n = len(values)
    total = math.fsum(values)
    mean = total / n
    variance = math.fsum((v - mean) ** 2 for v in values) / n
    p90, p95, p99 = (nearest_rank_percentile(values, q) for q in PERCENTILES)
    return LatencyStats(count=n, min=values[0], mean=mean, median=median(values), p90=p90, p95=p95,
                        p99=p99, max=values[-1], std=math.sqrt(variance), total=total)
