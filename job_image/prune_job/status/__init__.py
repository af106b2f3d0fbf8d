"""Where the worker's progress and results go.

- `reporter`: the `StatusReporter` protocol the pipeline sees, and `NullReporter` (local runs).
- `kubernetes`: `KubernetesReporter`, which patches the PruneJob's status subresource from a pod.
- `progress`: `RunProgress`, the terminal bar per block and the progress handed to the reporter.
"""
from prune_job.status.kubernetes import KubernetesReporter, in_cluster_sender, progress_document, results_document
from prune_job.status.progress import RunProgress
from prune_job.status.reporter import NullReporter, StatusReporter

__all__ = ["KubernetesReporter", "NullReporter", "RunProgress", "StatusReporter", "in_cluster_sender",
           "progress_document", "results_document"]
