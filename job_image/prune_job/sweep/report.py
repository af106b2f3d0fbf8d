"""The sweep report: `sweep.json` (the status: one row per child, skipped
combinations, the choice), `report.md` (the table and the choice) and
`pareto.png` (perplexity increase against sparsity per method × pattern, the
Pareto front and the chosen point), written to one folder; `publish` puts it
under `<template output>/sweep/` (uploaded like a checkpoint for s3://)."""
from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

from prune_job.spec import PruneSweepSpec, PruneSweepStatus, SweepRow
from prune_job.sweep.grid import report_output

REPORT_MD = "report.md"
TABLE_JSON = "sweep.json"
PLOT_PNG = "pareto.png"
COLUMNS = ["child", "combination", "phase", "sparsity", "PPL Δ%", "tokens/s", "USD/M tokens", "checkpoint", "limits"]


def series_label(spec: PruneSweepSpec, r: SweepRow) -> str:
    """method × pattern of a row (the template's where the matrix does not vary them)."""
    method = r.combination.get("method", spec.template.pruning.method)
    return f"{method} {r.combination.get('pattern', spec.template.pruning.pattern)}"


def pareto_front(rows: list[SweepRow]) -> list[SweepRow]:
    """Succeeded rows no other row beats on both (higher sparsity, lower perplexity increase), by sparsity."""
    points = [r for r in rows if r.phase == "Succeeded" and r.sparsity is not None
              and r.perplexity_increase_percent is not None]
    front = [p for p in points if not any(
        q.sparsity >= p.sparsity and q.perplexity_increase_percent <= p.perplexity_increase_percent
        and (q.sparsity > p.sparsity or q.perplexity_increase_percent < p.perplexity_increase_percent)
        for q in points)]
    return sorted(front, key=lambda r: r.sparsity)


def _cell(value: Any, spec: str = ".3g") -> str:
    if value is None:
        return "–"
    return format(value, spec) if isinstance(value, float) else str(value)


def table_rows(status: PruneSweepStatus) -> list[list[str]]:
    limits = {True: "met", False: "not met", None: "–"}
    return [[r.child, ", ".join(f"{k}={v}" for k, v in r.combination.items()), r.phase, _cell(r.sparsity, ".3f"),
             _cell(r.perplexity_increase_percent, "+.2f"), _cell(r.tokens_per_second, ".1f"),
             _cell(r.cost_per_million_tokens, ".3f"), _cell(r.checkpoint_bytes), limits[r.quality_met]]
            for r in status.rows]


def text_table(status: PruneSweepStatus) -> str:
    """The table `prune-job sweep` prints, and the choice."""
    rows = [COLUMNS] + table_rows(status)
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    return "\n".join(lines + ["", choice_line(status)])


def choice_line(status: PruneSweepStatus) -> str:
    best = status.best
    if best is None:
        return "best: none"
    if best.child:
        return f"best: {best.child} {best.combination} ({best.why})"
    return f"best: none ({best.why})"


def render_markdown(name: str, spec: PruneSweepSpec, status: PruneSweepStatus) -> str:
    limits = {k: v for k, v in spec.select.model_dump(by_alias=True).items() if v is not None and k != "objective"}
    lines = [f"# Sweep {name}", "",
             f"{status.completed}/{status.total} children finished; objective `{spec.select.objective}`"
             + (f" under {limits}" if limits else " (no limits)") + ".", "",
             f"**{choice_line(status)}**", "", f"![perplexity increase against sparsity]({PLOT_PNG})", "",
             "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(row) + " |" for row in table_rows(status)]
    if status.skipped:
        lines += ["", "Skipped combinations (the pattern contradicts the sparsity):", ""]
        lines += [f"- {s.combination}: {s.reason}" for s in status.skipped]
    failed = [r for r in status.rows if r.phase == "Failed"]
    if failed:
        lines += ["", "Failed children:", ""] + [f"- {r.child}: {r.message or 'failed'}" for r in failed]
    return "\n".join(lines) + "\n"


def plot(spec: PruneSweepSpec, status: PruneSweepStatus, path: Path) -> Path:
    from prune_job.evaluation.plots import _empty, _figure, _save  # matplotlib: imported when a plot is drawn

    fig = _figure(7, 4.5)
    ax = fig.add_subplot()
    series: dict[str, list[SweepRow]] = defaultdict(list)
    for r in status.rows:
        if r.phase == "Succeeded" and r.sparsity is not None and r.perplexity_increase_percent is not None:
            series[series_label(spec, r)].append(r)
    if not series:
        _empty(ax, "no perplexity figures (evaluation disabled, or no child succeeded)")
        return _save(fig, path)
    for label, points in sorted(series.items()):
        points.sort(key=lambda r: r.sparsity)
        ax.plot([p.sparsity for p in points], [p.perplexity_increase_percent for p in points], marker="o", label=label)
    front = pareto_front(status.rows)
    if front:
        ax.plot([p.sparsity for p in front], [p.perplexity_increase_percent for p in front], color="black",
                linestyle="--", linewidth=1, label="Pareto front")
    chosen = next((r for r in status.rows if status.best and r.child == status.best.child), None)
    if chosen is not None and chosen.sparsity is not None and chosen.perplexity_increase_percent is not None:
        ax.scatter([chosen.sparsity], [chosen.perplexity_increase_percent], marker="*", s=260, color="red",
                   zorder=5, label=f"chosen: {chosen.child}")
    if spec.select.max_perplexity_increase_percent is not None:
        ax.axhline(spec.select.max_perplexity_increase_percent, color="grey", linestyle=":", label="limit")
    ax.set_xlabel("measured sparsity")
    ax.set_ylabel("perplexity increase over dense (%)")
    ax.set_title(f"{status.completed}/{status.total} children")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return _save(fig, path)


def write_report(name: str, spec: PruneSweepSpec, status: PruneSweepStatus, directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    table = directory / TABLE_JSON
    table.write_text(json.dumps({"sweep": name, "objective": spec.select.objective,
                                 "status": status.model_dump(by_alias=True, mode="json", exclude_none=True)},
                                indent=2))
    md = directory / REPORT_MD
    md.write_text(render_markdown(name, spec, status))
    return [table, md, plot(spec, status, directory / PLOT_PNG)]


def publish(name: str, spec: PruneSweepSpec, status: PruneSweepStatus, workdir: Path) -> str:
    """Write the report to `<template output>/sweep/` (staged in `workdir` and uploaded for s3://); its URI."""
    from prune_job import storage
    from prune_job.sources.models import output_dir
    from prune_job.sources.uris import parse_uri

    uri = report_output(spec.template.output.uri)
    local = output_dir(uri, workdir / "sweep-report")
    write_report(name, spec, status, local)
    if parse_uri(uri).is_remote:
        storage.upload_folder(local, uri)
    return uri
