"""Figures from raw observations: quantiles, Prometheus histograms, request-rate windows."""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Mapping, Sequence

from prometheus_client.parser import text_string_to_metric_families

# {sample name: [(labels, value), ...]} from one /metrics scrape.
Samples = dict[str, list[tuple[dict[str, str], float]]]
# A histogram as Prometheus exposes it: (upper bound, cumulative count), +Inf last.
Buckets = list[tuple[float, float]]

DIGITS = 4


def rounded(value: float | None, digits: int = DIGITS) -> float | None:
    """JSON-safe: None for a missing or non-finite value."""
    if value is None or not math.isfinite(value):
        return None
    return round(value, digits)


def quantile(ordered: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks, of a sorted, non-empty sequence."""
    position = q * (len(ordered) - 1)
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def spread(values: Iterable[float], scale: float = 1.0) -> dict[str, float | None]:
    """p50/p95/p99 (times ``scale``, e.g. 1000 for milliseconds); None when there are none."""
    ordered = sorted(values)
    if not ordered:
        return {"p50": None, "p95": None, "p99": None}
    return {
        name: rounded(quantile(ordered, q) * scale)
        for name, q in (("p50", 0.5), ("p95", 0.95), ("p99", 0.99))
    }


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or denominator is None or denominator == 0:
        return None
    return rounded(numerator / denominator, 3)


# --- Prometheus --------------------------------------------------------------------------


def parse_metrics(text: str) -> Samples:
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, []).append((dict(sample.labels), float(sample.value)))
    return out


def histogram(samples: Samples, name: str) -> Buckets:
    """The cumulative buckets of an unlabelled histogram family (empty when absent)."""
    buckets = [(float(labels["le"]), value) for labels, value in samples.get(f"{name}_bucket", [])]
    return sorted(buckets)


def histogram_delta(after: Buckets, before: Buckets) -> Buckets:
    """What was observed between two scrapes of the same histogram."""
    earlier = dict(before)
    return [(le, count - earlier.get(le, 0.0)) for le, count in after]


def histogram_quantile(buckets: Buckets, q: float) -> float | None:
    """Prometheus' ``histogram_quantile``: linear inside the bucket that holds the rank.

    None with no observations; a rank in the +Inf bucket gives the largest finite bound,
    since nothing is known about how far past it the observations lie.
    """
    if not buckets or buckets[-1][1] <= 0:
        return None
    rank = q * buckets[-1][1]
    lower, below = 0.0, 0.0
    for upper, count in buckets:
        if count >= rank:
            if math.isinf(upper):
                return lower
            if count == below:
                return upper
            return lower + (upper - lower) * (rank - below) / (count - below)
        lower, below = upper, count
    return lower


def past_last_bound(buckets: Buckets, q: float) -> bool:
    """Whether the ``q`` quantile lies in the +Inf bucket: ``histogram_quantile`` then gives
    only a floor (the largest finite bound)."""
    if len(buckets) < 2 or buckets[-1][1] <= 0:
        return False
    return buckets[-2][1] < q * buckets[-1][1]


def by_label(samples: Samples, name: str, label: str) -> dict[str, float]:
    """A labelled gauge or counter as {label value: value}."""
    return {labels.get(label, ""): value for labels, value in samples.get(name, [])}


# --- Request rates -----------------------------------------------------------------------


def per_second(times: Sequence[float], start: float, end: float) -> list[int]:
    """Requests in each whole second [start + i, start + i + 1) that ends by ``end``."""
    counts = [0] * max(1, int(end - start))
    for at in times:
        slot = int(at - start)
        if 0 <= slot < len(counts):
            counts[slot] += 1
    return counts


def max_sliding(times: Sequence[float], width: float = 1.0) -> int:
    """The most requests in any half-open window [t, t + width), wherever it starts.

    The busiest window can always be taken to start at a request, so one binary search
    per request over the sorted times finds it.
    """
    ordered = sorted(times)
    best = 0
    for i, at in enumerate(ordered):
        best = max(best, bisect.bisect_left(ordered, at + width, lo=i) - i)
    return best


def mapping_float(values: Mapping[str, float]) -> dict[str, float | None]:
    return {key: rounded(value) for key, value in sorted(values.items())}
