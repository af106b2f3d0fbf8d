"""prune_job: the worker that prunes one model (imports no torch at package level)."""
from __future__ import annotations

__version__ = "0.1.0"


def __getattr__(name: str):
    """`prune_job.load_pretrained` without importing torch when the package is imported."""
    if name == "load_pretrained":
        from prune_job.checkpoint.reader import load_pretrained

        return load_pretrained
    raise AttributeError(f"module 'prune_job' has no attribute {name!r}")
