"""The quality gate: measured figures against limits, in one pure function.

`judge(limits, results)` is what the PruneJob controller's condition
`QualityMet` says and what a PruneSweep's choice keeps (only children that
meet the sweep's limits are candidates; the closest one is named when none
does). Imports no torch: the controller uses it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

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


def _check(what: str, value: Optional[float], limit: float, upper: bool, shown: str, unit: str = "") -> tuple[bool, str, float]:
    """(met, the figure against the limit, how far off relative to the limit) for one limit."""
    if value is None:
        return False, f"{what} not measured ({'limit' if upper else 'minimum'} {limit:g}{unit})", 1e6
    ok = value <= limit + 1e-9 if upper else value >= limit - 1e-9
    sign = ("<=" if ok else ">") if upper else (">=" if ok else "<")
    excess = max(0.0, value - limit if upper else limit - value) / max(abs(limit), 1.0 if upper else 1e-3)
    return ok, f"{shown} {sign} {limit:g}{unit}", excess


def judge(limits: Optional[Gate], results: Any) -> Optional[Verdict]:
    """None when there are no limits; else whether `results` meet each limit set, with the figures."""
    if limits is None or (limits.max_perplexity_increase_percent is None and limits.min_sparsity is None):
        return None
    increase, sparsity = _figures(results)
    checks = []
    if limits.max_perplexity_increase_percent is not None:
        checks.append(_check("perplexity increase", increase, limits.max_perplexity_increase_percent, True,
                             f"perplexity {increase:+.2f}%" if increase is not None else "", "%"))
    if limits.min_sparsity is not None:
        checks.append(_check("sparsity", sparsity, limits.min_sparsity, False,
                             f"sparsity {sparsity:.4f}" if sparsity is not None else ""))
    met = all(ok for ok, _, _ in checks)
    return Verdict(met, "; ".join(text for _, text, _ in checks), 0.0 if met else sum(off for _, _, off in checks))
