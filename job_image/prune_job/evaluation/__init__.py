"""Dense against sparse under the same conditions: perplexity (block-streaming
forward), measured sparsity, generation speed and memory, cost per million
tokens, results.json, report.md and its plots (issue 5).

Entry points: `evaluate(...)` (called by prune_job.run after the checkpoint is
written), `summary_table(results)` (what `prune-job run` prints last) and
`write_report(detail, directory)`.
"""
from prune_job.evaluation.driver import evaluate
from prune_job.evaluation.report import render_markdown, summary_table, write_report

__all__ = ["evaluate", "render_markdown", "summary_table", "write_report"]
