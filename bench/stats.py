"""The one place statistics are computed: min / median / p95 of a list of samples."""

from __future__ import annotations

import math
import statistics
from typing import Optional, TypedDict


class Summary(TypedDict):
    n: int
    min: Optional[float]
    median: Optional[float]
    p95: Optional[float]


def percentile(values: list[float], p: float) -> float:
    """Linear-interpolation percentile (numpy's default); ``values`` must not be empty."""
    ordered = sorted(values)
    rank = (len(ordered) - 1) * p / 100.0
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def summarize(values: list[float]) -> Summary:
    """n, min, median and p95 (None for all three when there are no samples)."""
    if not values:
        return Summary(n=0, min=None, median=None, p95=None)
    return Summary(n=len(values), min=round(min(values), 4), median=round(statistics.median(values), 4),
                   p95=round(percentile(values, 95), 4))


def median_or_none(values: list[float]) -> Optional[float]:
    return statistics.median(values) if values else None
