"""Figures a user can trust: each timed figure is the median of its repetitions
with its min-max spread, and a variant differs from dense only where the two
spreads do not overlap (pure functions; no torch).

Why min-max, not a mean ± standard deviation: a handful of repetitions on a
busy host has outliers, and a range that holds every repetition is what a
reader can check against the timeline. Two variants that run at the same
speed give ranges that overlap unless every run of one is faster than every
run of the other: with n interleaved runs each that happens by chance with
probability 2 / C(2n, n) (n = 5: 0.8%, n = 7: 0.06%), so below MIN_SAMPLES
runs no change is called significant at all.
"""
from __future__ import annotations

import statistics
from typing import Optional, Sequence

from prune_job.spec import Comparison, Spread

MIN_SAMPLES = 5


def spread(values: Sequence[float]) -> Optional[Spread]:
    """Median and min-max of `values`; None when there are none."""
    if not values:
        return None
    return Spread(median=statistics.median(values), low=min(values), high=max(values), samples=len(values))


def _pct(new: float, base: float) -> float:
    return 100.0 * (new - base) / base


def compare(base: Optional[Spread], other: Optional[Spread]) -> Optional[Comparison]:
    """`other` against `base`: the change of the medians, the range of changes the spreads allow
    ([other.low / base.high - 1, other.high / base.low - 1]) and whether it excludes zero."""
    if base is None or other is None or base.low <= 0 or base.high <= 0:
        return None
    low, high = _pct(other.low, base.high), _pct(other.high, base.low)
    enough = min(base.samples, other.samples) >= MIN_SAMPLES
    significant = enough and (low > 0 or high < 0)
    result = Comparison(percent=_pct(other.median, base.median), low_percent=low, high_percent=high,
                        significant=significant)
    result.verdict = verdict(result, min(base.samples, other.samples))
    return result


def verdict(c: Comparison, samples: int) -> str:
    """What the table and the status say about one comparison."""
    if c.significant:
        return f"{c.percent:+.1f}% ({c.low_percent:+.1f}% to {c.high_percent:+.1f}%)"
    bound = max(abs(c.low_percent), abs(c.high_percent))
    if samples < MIN_SAMPLES:
        return (f"no significant difference (too few runs: {samples} < {MIN_SAMPLES}; "
                f"{c.percent:+.1f}%, within ±{bound:.1f}%)")
    return f"no significant difference (within ±{bound:.1f}%)"


def is_significant(comparison: Optional[Comparison]) -> bool:
    """True only for a measured change larger than its spread (None: not measured)."""
    return comparison is not None and comparison.significant
