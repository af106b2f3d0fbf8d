"""From measured runs to the summary figures: which batch size the status
reports, and cost per million generated tokens."""
from __future__ import annotations

from typing import Optional

from prune_job.spec import CostResult, GenerationFigures, GenerationResult, GenerationRun

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
    return GenerationResult(
        dense=_figures(runs, "dense", batch),
        sparse=_figures(runs, "sparse", batch),
        sparse_kernel=_figures(runs, "sparse-kernel", batch),
        batch_size=batch,
        note=note,
    )


def cost_summary(generation: GenerationResult, hourly_cost: Optional[float]) -> CostResult:
    kernel = generation.sparse_kernel
    return CostResult(
        dense=cost_per_million(hourly_cost, generation.dense.tokens_per_second),
        sparse=cost_per_million(hourly_cost, generation.sparse.tokens_per_second),
        sparse_kernel=cost_per_million(hourly_cost, kernel.tokens_per_second) if kernel else None,
    )
