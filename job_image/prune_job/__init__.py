"""prune_job: the worker that prunes one model (imports no torch at package level)."""
from __future__ import annotations

__version__ = "0.1.0"
