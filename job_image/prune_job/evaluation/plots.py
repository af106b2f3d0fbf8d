"""The report's two PNGs, drawn with matplotlib's Agg canvas (no pyplot, no
global backend switch, no display needed)."""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from prune_job.checkpoint.sparsity import layer_kind
from prune_job.evaluation.tasks import short_name
from prune_job.spec import ResultsDetail

SPARSITY_PNG = "sparsity_by_block.png"
COMPARISON_PNG = "dense_vs_sparse.png"
VARIANTS = (("dense", "dense", "#4C72B0"), ("sparse", "sparse", "#DD8452"), ("sparse-kernel", "sparse, 2:4 kernel", "#55A868"))


def _figure(width: float, height: float):
    """matplotlib is imported when a plot is drawn, after pruning: importing it with the
    pipeline would add its ~30 MB to the pruning's peak resident memory."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height))


def _save(fig, path: Path) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=110)
    return path


def _empty(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="grey")
    ax.set_xticks([])
    ax.set_yticks([])


def sparsity_plot(detail: ResultsDetail, path: Path) -> Path:
    """Measured sparsity of each layer kind (q_proj, up_proj, ...) against the block index."""
    fig = _figure(8, 4.2)
    ax = fig.add_subplot()
    series: dict[str, list[tuple[int, float]]] = defaultdict(list)
    for layer in detail.layers:
        if layer.block is not None:
            series[layer_kind(layer.name)].append((layer.block, layer.sparsity))
    for kind, points in sorted(series.items()):
        points.sort()
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", markersize=3, label=kind)
    if not series:
        _empty(ax, "no pruned layers")
    else:
        if detail.target_sparsity is not None:
            ax.axhline(detail.target_sparsity, color="black", linestyle="--", linewidth=1, label="target")
        ax.set_xlabel("decoder block")
        ax.set_ylabel("sparsity (zeros / weights)")
        ax.set_ylim(0, 1)
        ax.legend(fontsize=7, ncol=2, loc="lower right")
        ax.grid(alpha=0.3)
    ax.set_title(f"Measured sparsity per layer (overall {_fmt(detail.sparsity, '.3f')})")
    return _save(fig, path)


def comparison_plot(detail: ResultsDetail, path: Path) -> Path:
    return _save(comparison_figure(detail), path)


def comparison_figure(detail: ResultsDetail):
    """Left: dense vs sparse perplexity. Right: tokens/s per batch size for each variant, the median
    with its min-max range as error bars. With task accuracy measured, a third panel: accuracy per task."""
    panels = 3 if detail.tasks else 2
    fig = _figure(4.5 * panels, 4)
    ax_ppl, ax_tps = fig.add_subplot(1, panels, 1), fig.add_subplot(1, panels, 2)
    if detail.tasks:
        _accuracy_bars(fig.add_subplot(1, panels, 3), detail)
    ppl = detail.perplexity
    if ppl.dense is not None and ppl.sparse is not None:
        bars = ax_ppl.bar(["dense", "sparse"], [ppl.dense, ppl.sparse], color=[VARIANTS[0][2], VARIANTS[1][2]])
        ax_ppl.bar_label(bars, fmt="%.2f")
        ax_ppl.set_ylabel("perplexity (lower is better)")
        ax_ppl.set_title(f"Perplexity ({_fmt(ppl.increase_percent, '+.1f')}%)")
    else:
        _empty(ax_ppl, "perplexity not measured")
    _throughput_bars(ax_tps, detail)
    return fig


def _throughput_bars(ax, detail: ResultsDetail) -> None:
    batches = sorted({r.batch_size for r in detail.generation_runs})
    measured = [r for r in detail.generation_runs if r.figures and r.figures.tokens_per_second]
    if not measured:
        _empty(ax, "generation not measured")
        return
    width = 0.8 / len(VARIANTS)
    for k, (variant, label, color) in enumerate(VARIANTS):
        figures = {r.batch_size: r.figures for r in measured if r.variant == variant}
        if figures:
            shown = [b for b in batches if b in figures]
            xs = [i + (k - 1) * width for i, b in enumerate(batches) if b in figures]
            ax.bar(xs, [figures[b].tokens_per_second for b in shown], width, label=label, color=color,
                   yerr=_error_bars([figures[b] for b in shown]), capsize=3, error_kw={"elinewidth": 1})
    ax.set_xticks(range(len(batches)), [str(b) for b in batches])
    ax.set_xlabel("batch size")
    ax.set_ylabel("generated tokens / s")
    env = detail.environment
    kernels = "" if env is None or env.sparse_kernel else "\nno sparse kernel: both run the same dense kernels"
    ax.set_title(f"Generation throughput (median, min-max){kernels}", fontsize=10)
    ax.legend(fontsize=8)


def _accuracy_bars(ax, detail: ResultsDetail) -> None:
    """Dense and sparse accuracy of each task (axis 0 to 1), lm-eval's standard error as error bars."""
    measured = [t for t in detail.tasks if t.dense is not None and t.sparse is not None]
    if not measured:
        _empty(ax, "task accuracy not measured")
        return
    xs = range(len(measured))
    for k, (variant, label, color) in enumerate(VARIANTS[:2]):
        values = [getattr(t, variant) for t in measured]
        errors = [getattr(t, f"{variant}_stderr") or 0.0 for t in measured]
        bars = ax.bar([x + (k - 0.5) * 0.4 for x in xs], values, 0.4, yerr=errors, capsize=3, label=label,
                      color=color, error_kw={"elinewidth": 1})
        ax.bar_label(bars, fmt="%.2f", fontsize=7)
    ax.set_xticks(list(xs), [short_name(t.task).removeprefix("builtin:") for t in measured], fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy (higher is better)")
    ax.set_title("Task accuracy (zero-shot, ± stderr)", fontsize=10)
    ax.legend(fontsize=8)


def _error_bars(figures: list) -> list[list[float]]:
    """[[below], [above]] the median: the min-max range of tokens/s (zero where no spread was measured)."""
    below, above = [], []
    for f in figures:
        s = f.spread.tokens_per_second if f.spread else None
        below.append(f.tokens_per_second - s.low if s else 0.0)
        above.append(s.high - f.tokens_per_second if s else 0.0)
    return [below, above]


def _fmt(value, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)
