"""The quality gate: measured figures against limits, in one pure function.

`judge(limits, results)` is what the PruneJob controller's condition
`QualityMet` says and what a PruneSweep's choice keeps (only children that
meet the sweep's limits are candidates; the closest one is named when none
does). Imports no torch: the controller uses it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Optional

from prune_job.spec import Gate, Results


@dataclass(frozen=True)
class Verdict:
    met: bool
    message: str  # the measured figures against each limit
    shortfall: float  # 0 when met; otherwise how far off, relative to the limits (orders the closest)


def _figures(results: Any) -> tuple[Optional[float], Optional[float]]:
    """(perplexity increase in percent, measured sparsity) from a Results or its stored mapping."""
    if results is None:
        return None, None
    r = results if isinstance(results, Results) else Results.model_validate(dict(results))
    return r.perplexity.increase_percent, r.sparsity


def judge(limits: Optional[Gate], results: Any) -> Optional[Verdict]:
    """None when there are no limits; else whether `results` meet each limit set, with the figures."""
    if limits is None or (limits.max_perplexity_increase_percent is None and limits.min_sparsity is None):
        return None
    increase, sparsity = _figures(results)
    checks, shortfall = [], 0.0
    if limits.max_perplexity_increase_percent is not None:
        limit = limits.max_perplexity_increase_percent
        if increase is None:
            checks.append((False, f"perplexity increase not measured (limit {limit:g}%)"))
            shortfall += 1e6
        else:
            ok = increase <= limit
            checks.append((ok, f"perplexity +{increase:.2f}% {'<=' if ok else '>'} {limit:g}%"))
            shortfall += max(0.0, increase - limit) / max(limit, 1.0)
    if limits.min_sparsity is not None:
        floor = limits.min_sparsity
        if sparsity is None:
            checks.append((False, f"sparsity not measured (minimum {floor:g})"))
            shortfall += 1e6
        else:
            ok = sparsity >= floor - 1e-9
            checks.append((ok, f"sparsity {sparsity:.4f} {'>=' if ok else '<'} {floor:g}"))
            shortfall += max(0.0, floor - sparsity) / max(floor, 1e-3)
    met = all(ok for ok, _ in checks)
    return Verdict(met, "; ".join(text for _, text in checks), 0.0 if met else shortfall)


def gate_of(spec_evaluation: Any) -> Optional[Gate]:
    """The gate of a PruneJob spec's evaluation (None when absent)."""
    return getattr(spec_evaluation, "gate", None)


def as_results(stored: Optional[Mapping[str, Any]]) -> Optional[Results]:
    """status.results as stored (fields this model does not know are kept)."""
    return None if not stored else Results.model_validate(dict(stored))
