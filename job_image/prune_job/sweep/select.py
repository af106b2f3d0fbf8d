"""The choice of a sweep, as a pure function over its status rows.

Candidates are the Succeeded children that meet the limits (prune_job.gate.judge,
the same function as a PruneJob's QualityMet). The objective decides; a tie
(equal figures, or a cost difference that is not significant) is broken by
the next criterion in CRITERIA order, and last by the child's name. With no
candidate, nothing is chosen and the closest child is named.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Optional

from prune_job.gate import judge
from prune_job.spec import PruneSweepStatus, SkippedCombination, SweepBest, SweepRow, SweepSelect

TOLERANCE = 1e-9
# objective -> (figure of a row, +1 to minimise / -1 to maximise, words for `why`)
CRITERIA: dict[str, tuple[Callable[[SweepRow], Any], int, str]] = {
    "minCostPerMillionTokens": (lambda r: r.cost_per_million_tokens, 1, "lowest cost per million tokens"),
    "maxSparsity": (lambda r: r.sparsity, -1, "highest sparsity"),
    "minPerplexity": (lambda r: r.perplexity_increase_percent, 1, "lowest perplexity increase"),
    "minCheckpointBytes": (lambda r: r.checkpoint_bytes, 1, "smallest checkpoint"),
}


def cost_significant(results: Optional[Mapping[str, Any]]) -> bool:
    """Whether the results' sparse-vs-dense cost difference is significant
    (costPerMillionTokens.sparseVsDense.significant); absent: significant."""
    cost = (results or {}).get("costPerMillionTokens")
    comparison = cost.get("sparseVsDense") if isinstance(cost, Mapping) else None
    flag = comparison.get("significant") if isinstance(comparison, Mapping) else None
    return flag if isinstance(flag, bool) else True


def figures(row: SweepRow) -> dict[str, Any]:
    """The row's figures in the shape of results, for gate.judge."""
    return {"sparsity": row.sparsity, "perplexity": {"increasePercent": row.perplexity_increase_percent}}


def _tied(objective: str, best: SweepRow, row: SweepRow) -> bool:
    key = CRITERIA[objective][0]
    if objective == "minCostPerMillionTokens" and (row.cost_significant is False or best.cost_significant is False):
        return True  # a difference that is not significant must not decide
    a, b = key(best), key(row)
    return a is not None and b is not None and abs(a - b) <= TOLERANCE * max(1.0, abs(a))


def best_by(objective: str, pool: list[SweepRow]) -> list[SweepRow]:
    """The rows of `pool` best on one criterion, with those tied with it (rows lacking the figure come last)."""
    key, sign, _ = CRITERIA[objective]
    measured = [r for r in pool if key(r) is not None]
    if not measured:
        return pool
    best = min(measured, key=lambda r: (sign * key(r), r.child))
    return [r for r in measured if r is best or _tied(objective, best, r)]


@dataclass(frozen=True)
class Choice:
    best: SweepBest
    met: dict[str, bool]  # child -> whether it meets the limits (Succeeded children only)


def choose(rows: list[SweepRow], select: SweepSelect) -> Choice:
    done = [r for r in rows if r.phase == "Succeeded"]
    verdicts = {r.child: judge(select, figures(r)) for r in done}
    met = {c: v is None or v.met for c, v in verdicts.items()}
    pool = [r for r in done if met[r.child]]
    if not pool:
        return Choice(_nothing_meets(done, verdicts), met)
    order = [select.objective] + [c for c in CRITERIA if c != select.objective]
    deciders = []
    for objective in order:
        narrowed = best_by(objective, pool)
        if len(narrowed) < len(pool) or objective == select.objective:
            deciders.append(objective)
        pool = narrowed
        if len(pool) == 1:
            break
    chosen = min(pool, key=lambda r: r.child)
    return Choice(SweepBest(child=chosen.child, combination=chosen.combination,
                            perplexity_increase_percent=chosen.perplexity_increase_percent,
                            why=_why(chosen, deciders, len(pool) > 1, sum(met.values()))), met)


def _why(row: SweepRow, deciders: list[str], by_name: bool, candidates: int) -> str:
    objective = deciders[0]
    key, _, words = CRITERIA[objective]
    text = f"{words} ({_fmt(key(row))}) of {candidates} children within the limits"
    if len(deciders) > 1:
        text += "; tie broken by " + ", then ".join(CRITERIA[d][2] for d in deciders[1:])
    if by_name:
        text += "; still tied: first by name"
    return text


def _nothing_meets(done: list[SweepRow], verdicts: dict[str, Any]) -> SweepBest:
    if not done:
        return SweepBest(why="no child succeeded")
    closest = min(done, key=lambda r: (verdicts[r.child].shortfall, r.child))
    return SweepBest(closest=closest.child, combination=closest.combination,
                     perplexity_increase_percent=closest.perplexity_increase_percent,
                     why=f"no child meets the limits; closest: {closest.child} ({verdicts[closest.child].message})")


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def row(child: str, combination: dict[str, Any], phase: str, results: Optional[Mapping[str, Any]],
        message: Optional[str] = None) -> SweepRow:
    """One status row from a child's phase and its results (status.results or results.json, camelCase)."""
    r = dict(results or {})
    ppl, gen, cost, art = (r.get(k) or {} for k in ("perplexity", "generation", "costPerMillionTokens", "artifact"))
    return SweepRow(
        child=child, combination=combination, phase=phase, sparsity=r.get("sparsity"),
        perplexity_increase_percent=ppl.get("increasePercent"),
        tokens_per_second=(gen.get("sparse") or {}).get("tokensPerSecond"),
        cost_per_million_tokens=cost.get("sparse"),
        checkpoint_bytes=art.get("bytes") or None,
        cost_significant=cost_significant(r) if cost.get("sparse") is not None else None,
        message=message,
    )


def status_from_rows(rows: list[SweepRow], skipped: tuple, select: SweepSelect) -> PruneSweepStatus:
    """The sweep's table, counts and choice (`best` once chosen, or once every child finished),
    as the controller and `prune-job sweep` both report them; conditions are the controller's."""
    choice = choose(rows, select)
    for r in rows:
        r.quality_met = choice.met.get(r.child)
    completed = sum(1 for r in rows if r.phase in ("Succeeded", "Failed"))
    complete = completed == len(rows)
    return PruneSweepStatus(total=len(rows), completed=completed, done=f"{completed}/{len(rows)}", rows=rows,
                            skipped=[SkippedCombination(combination=c, reason=why) for c, why in skipped],
                            best=choice.best if complete or choice.best.child else None)
