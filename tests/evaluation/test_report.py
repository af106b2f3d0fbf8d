"""report.md and its two PNGs are produced and valid; the summary table prints."""
from __future__ import annotations

import json

from prune_job.evaluation import render_markdown, summary_table, write_report
from prune_job.spec import (
    GenerationFigures, GenerationRun, LayerSparsity, Results, ResultsDetail,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def detail(kernel: bool = False) -> ResultsDetail:
    kinds = ["self_attn.q_proj", "self_attn.k_proj", "mlp.down_proj"]
    layers = [LayerSparsity(name=f"model.layers.{b}.{k}", block=b, sparsity=0.5 + 0.01 * b, zeros=50 + b, numel=100)
              for b in range(4) for k in kinds]
    fig = lambda tps: GenerationFigures(tokens_per_second=tps, time_to_first_token_ms=12.0,  # noqa: E731
                                        inter_token_latency_ms=3.5, peak_memory_bytes=3 << 30)
    runs = [GenerationRun(variant=v, batch_size=b, prompt_tokens=8, new_tokens=4, repeats=3, figures=fig(100.0 * b))
            for v in ["dense", "sparse"] + (["sparse-kernel"] if kernel else []) for b in (1, 8)]
    runs.append(GenerationRun(variant="dense", batch_size=64, prompt_tokens=8, new_tokens=4, repeats=3,
                              skipped="does not fit: batch 64 needs about 90 GiB"))
    d = ResultsDetail(sparsity=0.515, target_sparsity=0.5, method="sparsegpt", pattern="2:4", layers=layers,
                      generation_runs=runs, notes=["a note"])
    d.perplexity.dense, d.perplexity.sparse, d.perplexity.increase_percent = 12.0, 13.8, 15.0
    d.generation.dense, d.generation.sparse, d.generation.batch_size = fig(800.0), fig(810.0), 8
    if kernel:
        d.generation.sparse_kernel = fig(950.0)
    d.cost_per_million_tokens.dense, d.cost_per_million_tokens.sparse = 1.2, 1.19
    return d


def test_report_and_pngs_are_written_and_valid(tmp_path):
    paths = write_report(detail(kernel=True), tmp_path)
    names = {p.name for p in paths}
    assert names == {"report.md", "results.json", "sparsity_by_block.png", "dense_vs_sparse.png"}
    for png in ("sparsity_by_block.png", "dense_vs_sparse.png"):
        data = (tmp_path / png).read_bytes()
        assert data[:8] == PNG_MAGIC and len(data) > 10_000
    report = (tmp_path / "report.md").read_text()
    assert "![sparsity by block](sparsity_by_block.png)" in report and "2:4 kernel" in report
    assert "does not fit: batch 64" in report


def test_results_json_is_the_one_model_and_summary_is_its_part(tmp_path):
    write_report(detail(), tmp_path)
    doc = json.loads((tmp_path / "results.json").read_text())
    back = ResultsDetail.model_validate(doc)
    assert back == detail()
    summary = back.summary().model_dump(by_alias=True)
    assert set(summary) == set(Results.model_fields[n].alias for n in Results.model_fields)
    assert {k: doc[k] for k in summary} == summary  # detail ⊇ summary, same values
    assert summary["generation"]["batchSize"] == 8


def test_plots_survive_missing_figures(tmp_path):
    paths = write_report(ResultsDetail(), tmp_path)
    assert all(p.stat().st_size > 1000 for p in paths if p.suffix == ".png")
    assert "(no pruned layers)" in render_markdown(ResultsDetail())


def test_summary_table():
    text = summary_table(detail(kernel=True).summary())
    lines = text.splitlines()
    assert lines[0].split() == ["dense", "sparse", "change", "2:4", "kernel"]
    assert lines[1].split() == ["perplexity", "12.00", "13.80", "+15.0%"]
    assert "tokens/s (batch 8)" in text and "950.0" in text and "USD / million tokens" in text
    assert "2:4 kernel" not in summary_table(detail().summary())
