"""Where the worker's progress and results go: nowhere (local runs) or the
PruneJob's status subresource (in a pod). The pipeline only sees this protocol."""
from __future__ import annotations

from typing import Protocol

from prune_job.spec import DenseBaseline, Progress, Results


class StatusReporter(Protocol):
    def progress(self, progress: Progress) -> None:
        """Called often (every block); implementations throttle."""

    def results(self, results: Results) -> None:
        """Called once at the end (and may be called again with more figures)."""

    def dense_baseline(self, baseline: DenseBaseline) -> None:
        """Called once, before pruning, by a sweep's child that measures the dense perplexity for the others."""

    def close(self) -> None:
        """Flush whatever is pending."""


class NullReporter:
    def progress(self, progress: Progress) -> None:
        pass

    def results(self, results: Results) -> None:
        pass

    def dense_baseline(self, baseline: DenseBaseline) -> None:
        pass

    def close(self) -> None:
        pass
