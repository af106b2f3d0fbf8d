"""prune_operator: the Kopf controller that runs each PruneJob as a Kubernetes Job.

Layout: pure modules (crdgen, builders, reconcile, rbac) build manifests and
compute status; prunejobs.py holds the thin Kopf handlers; main.py runs them.
"""
from __future__ import annotations

__version__ = "0.1.0"
