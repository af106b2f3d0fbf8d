"""What people read: `report.md` (with the two plots) beside the checkpoint,
and the small text table `prune-job run` prints at the end."""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Optional

from prune_job.evaluation import tasks
from prune_job.evaluation.plots import COMPARISON_PNG, SPARSITY_PNG, comparison_plot, sparsity_plot
from prune_job.checkpoint.sparsity import layer_kind
from prune_job.evaluation.spread import MIN_SAMPLES
from prune_job.pipeline.stages import cores_busy
from prune_job.spec import Comparison, GenerationFigures, GenerationRun, Results, ResultsDetail, Spread

REPORT_MD = "report.md"
RESULTS_JSON = "results.json"


def _num(value: Optional[float], spec: str = ".2f") -> str:
    return "–" if value is None else format(value, spec)


def _bytes(value: Optional[int]) -> str:
    if not value:
        return "–"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return str(value)


def _change(dense: Optional[float], sparse: Optional[float]) -> str:
    if dense is None or sparse is None or dense == 0:
        return ""
    return f"{100.0 * (sparse - dense) / dense:+.1f}%"


def _spread(value: Optional[float], spread: Optional[Spread], spec: str) -> str:
    """A median with its min-max range: "812.3 [790.1–830.4]"."""
    if spread is None or value is None:
        return _num(value, spec)
    return f"{_num(value, spec)} [{_num(spread.low, spec)}–{_num(spread.high, spec)}]"


def _verdict(comparison: Optional[Comparison], dense: Optional[float], other: Optional[float]) -> str:
    """The change column: the spread rule's verdict where spreads were measured, else the plain change."""
    return comparison.verdict if comparison is not None else _change(dense, other)


FIGURES = (("tokens_per_second", ".1f"), ("time_to_first_token_ms", ".1f"), ("inter_token_latency_ms", ".2f"))
LABELS = {"tokens_per_second": "tokens/s (batch {b})", "time_to_first_token_ms": "time to first token ms",
          "inter_token_latency_ms": "inter-token latency ms"}


def _cells(figures: Optional[GenerationFigures], name: str, spec: str) -> str:
    if figures is None:
        return "–"
    return _spread(getattr(figures, name), getattr(figures.spread, name) if figures.spread else None, spec)


def _kernel_cell(cell: str, comparison: Optional[Comparison]) -> str:
    return f"{cell}; {comparison.verdict} vs dense" if comparison is not None and cell != "–" else cell


def _kernel_row(gen) -> list[str]:
    """Which matrix kernels each column ran: said in the table, since it decides what a speed change can mean."""
    if gen.sparse_kernel is None:
        return ["matmul kernels", "dense", "dense (no sparse kernel ran)", "same kernels: any difference is noise", ""]
    return ["matmul kernels", "dense", "dense", "", "2:4 semi-structured"]


def _generation_rows(gen) -> list[list[str]]:
    rows = [_kernel_row(gen)]
    for name, spec in FIGURES:
        kernel = _cells(gen.sparse_kernel, name, spec) if gen.sparse_kernel else ""
        k_cmp = getattr(gen.sparse_kernel_vs_dense, name) if gen.sparse_kernel_vs_dense else None
        cmp = getattr(gen.sparse_vs_dense, name) if gen.sparse_vs_dense else None
        rows.append([LABELS[name].format(b=gen.batch_size), _cells(gen.dense, name, spec),
                     _cells(gen.sparse, name, spec),
                     _verdict(cmp, getattr(gen.dense, name), getattr(gen.sparse, name)), _kernel_cell(kernel, k_cmp)])
    rows.append(["peak memory", _bytes(gen.dense.peak_memory_bytes), _bytes(gen.sparse.peak_memory_bytes), "",
                 _bytes(gen.sparse_kernel.peak_memory_bytes) if gen.sparse_kernel else ""])
    return rows


def _cost_row(results: Results) -> list[str]:
    cost, gen = results.cost_per_million_tokens, results.generation
    spreads = cost.spread
    cell = lambda v, k: _spread(v, getattr(spreads, k) if spreads else None, ".3f")  # noqa: E731
    kernel = _kernel_cell(cell(cost.sparse_kernel, "sparse_kernel"), cost.sparse_kernel_vs_dense) \
        if gen.sparse_kernel else ""
    return ["USD / million tokens", cell(cost.dense, "dense"), cell(cost.sparse, "sparse"),
            _verdict(cost.sparse_vs_dense, cost.dense, cost.sparse), kernel]


def summary_rows(results: Results) -> list[list[str]]:
    """[label, dense, sparse, change, 2:4 kernel] rows shared by the text table and report.md. Timed figures
    are "median [min–max]"; a change is given only where it is larger than the spread (evaluation.spread)."""
    ppl, gen, cost = results.perplexity, results.generation, results.cost_per_million_tokens
    rows = [["perplexity", _num(ppl.dense), _num(ppl.sparse), _change(ppl.dense, ppl.sparse), ""]]
    if gen.batch_size is not None:
        rows += _generation_rows(gen)
    if cost.dense is not None or cost.sparse is not None:
        rows.append(_cost_row(results))
    return rows + tasks.summary_rows(results)


def _trailer(results: Results) -> list[str]:
    art = results.artifact
    lines = [f"sparsity (measured): {_num(results.sparsity, '.4f')}"]
    if art.bytes:
        ratio = f" ({art.bytes / art.dense_bytes:.2f}x)" if art.dense_bytes else ""
        lines.append(f"checkpoint: {_bytes(art.bytes)} of {_bytes(art.dense_bytes)} dense{ratio}")
    sec = results.seconds
    lines.append(f"seconds: prune {sec.prune:.1f}, evaluate {sec.evaluate:.1f}, total {sec.total:.1f}")
    if sec.stages is not None:
        parts = [f"{k} {v:.1f}" for k, v in sec.stages.model_dump().items() if v >= 0.05]
        lines.append("prune seconds by stage: " + (", ".join(parts) or "none over 0.05"))
        if sec.stage_cpu is not None:
            cores = [f"{k} {v:.2f}" for k, v in cores_busy(sec.stages.model_dump(), sec.stage_cpu.model_dump()).items()]
            lines.append("cores busy by stage: " + (", ".join(cores) or "none over 0.05 s"))
    if results.generation.note:
        lines.append(f"note: {results.generation.note}")
    return lines


def summary_table(results: Results) -> str:
    """The summary as a small fixed-width table (what `prune-job run` prints last)."""
    rows = summary_rows(results)
    kernel = results.generation.sparse_kernel is not None
    header = ["", "dense", "sparse", "change"] + (["2:4 kernel"] if kernel else [])
    rows = [header] + [r if kernel else r[:4] for r in rows]
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))).rstrip()
             for r in rows]
    return "\n".join(lines + _trailer(results))


def _md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return out + ["| " + " | ".join(r) + " |" for r in rows]


def _run_row(run: GenerationRun) -> list[str]:
    f = run.figures
    if f is None:
        return [run.variant, str(run.batch_size), "–", "–", "–", "–", run.skipped or "not run"]
    return [run.variant, str(run.batch_size)] + [_cells(f, name, spec) for name, spec in FIGURES] + [
        _bytes(f.peak_memory_bytes), ""]


def _method_text(detail: ResultsDetail) -> str:
    env = detail.environment
    repeats = max((r.repeats for r in detail.generation_runs), default=0)
    order = ("one variant after the other (they did not fit in memory together)" if env.order == "sequential" else
             "interleaved: a shared warm-up, then rounds in which every variant runs once, the order reversed "
             "every other round (A B, B A, ...)")
    return (f"Device {env.device}{f' ({env.device_name})' if env.device_name else ''}, {env.dtype}, "
            f"torch {env.torch_version}, {env.threads} threads; sparse kernel: {env.sparse_kernel or 'none'}. "
            f"Greedy decoding with the KV cache, {repeats} timed runs per variant and batch size, {order}. "
            "Each figure is the median [min–max] of its runs; a change against dense is reported only where the "
            "two ranges do not overlap (and with at least "
            f"{MIN_SAMPLES} runs each), otherwise \"no significant difference\" with the largest change the ranges "
            f"allow. Peak memory is {'device memory' if env.memory_kind == 'device' else 'process RSS'}, measured "
            f"apart from the timed runs, {env.memory_isolation or 'one variant at a time'}. Every run, in order, "
            "is in results.json (`generationTimeline`).")


def _layers_by_block(detail: ResultsDetail) -> list[str]:
    cells: dict[int, dict[str, float]] = defaultdict(dict)
    for layer in detail.layers:
        if layer.block is not None:
            cells[layer.block][layer_kind(layer.name)] = layer.sparsity
    kinds = sorted({k for row in cells.values() for k in row})
    rows = [[str(b)] + [_num(cells[b].get(k), ".3f") for k in kinds] for b in sorted(cells)]
    return _md_table(["block"] + kinds, rows) if rows else ["(no pruned layers)"]


def render_markdown(detail: ResultsDetail) -> str:
    kernel = detail.generation.sparse_kernel is not None
    lines = [f"# Pruning report: {detail.method or ''} {detail.pattern or ''}".rstrip(), ""]
    lines += _md_table(["", "dense", "sparse", "change"] + (["2:4 kernel"] if kernel else []),
                       [r if kernel else r[:4] for r in summary_rows(detail)])
    lines += [""] + [f"- {t}" for t in _trailer(detail)] + ["", f"![dense vs sparse]({COMPARISON_PNG})", ""]
    if detail.perplexity_detail:
        p = detail.perplexity_detail
        lines += ["## Perplexity", "", f"{p.windows} windows of {p.sequence_length} tokens from `{p.source}` "
                  f"({p.tokens} predicted tokens per model, {p.method} forward, same windows for both).", ""]
    lines += tasks.report_section(detail)
    lines += ["## Generation", ""]
    if detail.environment and detail.generation_runs:
        lines += [_method_text(detail), ""]
    lines += _md_table(["variant", "batch", "tokens/s", "TTFT ms", "ITL ms", "peak memory", "skipped"],
                       [_run_row(r) for r in detail.generation_runs]) if detail.generation_runs else ["(not run)"]
    lines += ["", "## Sparsity per layer", "", f"![sparsity by block]({SPARSITY_PNG})", ""] + _layers_by_block(detail)
    if detail.notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in detail.notes]
    return "\n".join(lines) + "\n"


def write_report(detail: ResultsDetail, directory: Path) -> list[Path]:
    """results.json, report.md and the two PNGs into `directory`; returns the paths written."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = [sparsity_plot(detail, directory / SPARSITY_PNG), comparison_plot(detail, directory / COMPARISON_PNG)]
    (directory / REPORT_MD).write_text(render_markdown(detail))
    (directory / RESULTS_JSON).write_text(detail.model_dump_json(by_alias=True, indent=2))
    return paths + [directory / REPORT_MD, directory / RESULTS_JSON]
