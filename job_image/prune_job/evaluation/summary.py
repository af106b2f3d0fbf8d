"""From measured runs to the summary figures: which batch size the status
reports, each variant against dense (the `spread` rule), and cost per million
generated tokens with its spread."""
from __future__ import annotations

from typing import Optional

from prune_job.evaluation.spread import compare
from prune_job.spec import (
    CostResult, GenerationComparison, GenerationFigures, GenerationResult, GenerationRun, Spread, VariantSpreads,
)

SECONDS_PER_HOUR = 3600.0


def cost_per_million(hourly_cost: Optional[float], tokens_per_second: Optional[float]) -> Optional[float]:
    """USD per million generated tokens for one GPU at `hourly_cost` USD/h and the measured throughput."""
    if hourly_cost is None or not tokens_per_second:
        return None
    return hourly_cost / SECONDS_PER_HOUR / tokens_per_second * 1e6


def _figures(runs: list[GenerationRun], variant: str, batch_size: int) -> Optional[GenerationFigures]:
    return next((r.figures for r in runs if r.variant == variant and r.batch_size == batch_size and r.figures), None)


def summary_batch_size(runs: list[GenerationRun]) -> Optional[int]:
    """The largest batch size measured for both dense and sparse (the serving throughput)."""
    sizes = [r.batch_size for r in runs if r.variant == "dense" and r.figures
             and _figures(runs, "sparse", r.batch_size) is not None]
    return max(sizes) if sizes else None


def generation_summary(runs: list[GenerationRun], note: Optional[str]) -> GenerationResult:
    batch = summary_batch_size(runs)
    if batch is None:
        return GenerationResult(note=note)
    dense, sparse, kernel = (_figures(runs, v, batch) for v in ("dense", "sparse", "sparse-kernel"))
    return GenerationResult(
        dense=dense, sparse=sparse, sparse_kernel=kernel, batch_size=batch, note=note,
        sparse_vs_dense=compare_figures(dense, sparse),
        sparse_kernel_vs_dense=compare_figures(dense, kernel) if kernel else None,
    )


def compare_figures(dense: GenerationFigures, other: GenerationFigures) -> Optional[GenerationComparison]:
    """Each timed figure of `other` against dense; None without spreads (figures not measured here)."""
    if dense.spread is None or other.spread is None:
        return None
    return GenerationComparison(**{
        name: compare(getattr(dense.spread, name), getattr(other.spread, name))
        for name in GenerationComparison.model_fields
    })


def cost_spread(hourly_cost: Optional[float], figures: Optional[GenerationFigures]) -> Optional[Spread]:
    """Cost per million tokens at the median throughput, its range from the throughput's range
    (the fastest run is the cheapest)."""
    tps = figures.spread.tokens_per_second if figures is not None and figures.spread is not None else None
    if hourly_cost is None or tps is None or tps.low <= 0:
        return None
    return Spread(median=cost_per_million(hourly_cost, tps.median), low=cost_per_million(hourly_cost, tps.high),
                  high=cost_per_million(hourly_cost, tps.low), samples=tps.samples)


def cost_summary(generation: GenerationResult, hourly_cost: Optional[float]) -> CostResult:
    kernel = generation.sparse_kernel
    spreads = VariantSpreads(dense=cost_spread(hourly_cost, generation.dense),
                             sparse=cost_spread(hourly_cost, generation.sparse),
                             sparse_kernel=cost_spread(hourly_cost, kernel))
    return CostResult(
        dense=cost_per_million(hourly_cost, generation.dense.tokens_per_second),
        sparse=cost_per_million(hourly_cost, generation.sparse.tokens_per_second),
        sparse_kernel=cost_per_million(hourly_cost, kernel.tokens_per_second) if kernel else None,
        spread=spreads if spreads.dense is not None else None,
        sparse_vs_dense=compare(spreads.dense, spreads.sparse),
        sparse_kernel_vs_dense=compare(spreads.dense, spreads.sparse_kernel),
    )
