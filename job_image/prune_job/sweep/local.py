"""`prune-job sweep`: a PruneSweep on this machine, one child after another.

The children share what does not depend on the pruning fields: the resolved
model and the calibration windows (run.prepare's cache) and the dense
perplexity and, on CPU, the dense peak memory measured in a process of its
own (by the first child that evaluates, then passed to the others as
`evaluation.denseBaseline`; generation speed is still measured beside each
sparse model, interleaved). Each child writes under `<template output>/<child>/`;
a child that fails is a Failed row and the others go on. The status, the
choice and the report are those of the controller (grid, select, report).
"""
from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any, Callable, Optional

from prune_job.spec import DenseBaseline, ObjectMeta, PruneJob, PruneSweep, PruneSweepStatus
from prune_job.sweep.grid import Child, child_spec, plan_grid
from prune_job.sweep.select import row, status_from_rows

log = logging.getLogger(__name__)


def baseline_from(detail: Any, child: str) -> Optional[DenseBaseline]:
    """The dense figures a child measured itself (None when it did not, or took shared ones): its
    perplexity, and its dense peak memory where each variant was measured in a process of its own."""
    ppl = detail.perplexity
    if ppl is None or not ppl.dense or ppl.dense_source:
        return None
    from prune_job.evaluation import footprint

    nll = detail.perplexity_detail.dense_nll if detail.perplexity_detail else None
    memory = None
    if detail.environment is not None and detail.environment.memory_isolation == footprint.SEPARATE_PROCESS:
        memory = {r.batch_size: r.figures.peak_memory_bytes for r in detail.generation_runs
                  if r.variant == "dense" and r.figures is not None and r.figures.peak_memory_bytes is not None} or None
    return DenseBaseline(perplexity=ppl.dense, nll=nll, peak_memory_bytes=memory, source=f"run {child}")


def run_child(sweep: PruneSweep, child: Child, baseline: Optional[DenseBaseline], workdir: Path,
              cache: dict) -> Any:
    from prune_job.run import run_job

    spec = child_spec(sweep.spec.template, child)
    if baseline is not None and spec.evaluation.enabled:
        spec.evaluation.dense_baseline = baseline
    job = PruneJob(metadata=ObjectMeta(name=child.name, namespace=sweep.metadata.namespace), spec=spec)
    return run_job(job, workdir / child.name, show_bar=False, cache=cache)


def run_sweep(sweep: PruneSweep, workdir: Path, show_bar: bool = True,
              on_row: Optional[Callable[[Any], None]] = None) -> PruneSweepStatus:
    """Every child in grid order; the status with rows, the choice and the conditions' facts."""
    spec = sweep.spec
    grid = plan_grid(sweep.metadata.name, spec.template, spec.matrix)
    rows, baseline, cache = [], None, {}
    bar = _bar(len(grid.children), show_bar)
    for child in grid.children:
        if bar is not None:
            bar.set_description(child.name)
        try:
            detail = run_child(sweep, child, baseline, workdir, cache)
        except Exception as err:  # noqa: BLE001 - a failed child is a row; the others go on
            log.warning("child %s failed: %s", child.name, err, exc_info=log.isEnabledFor(logging.DEBUG))
            rows.append(row(child.name, child.combination, "Failed", None, f"{type(err).__name__}: {err}"))
        else:
            baseline = baseline or baseline_from(detail, child.name)
            rows.append(row(child.name, child.combination, "Succeeded",
                            detail.summary().model_dump(by_alias=True, mode="json")))
        if on_row is not None:
            on_row(rows[-1])
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    return status_from_rows(rows, grid.skipped, spec.select)


def _bar(total: int, show: bool):
    if not show:
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit="child", file=sys.stderr, dynamic_ncols=True)
