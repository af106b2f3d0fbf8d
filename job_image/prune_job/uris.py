"""Local paths behind URIs (no torch: `prune-job validate` uses this)."""
from __future__ import annotations

import os
from pathlib import Path


def local_path(uri: str) -> Path:
    """`file://x` and plain paths as given; `pvc://claim/path` under $PRUNE_JOB_PVC_ROOT (default /mnt/pvc)."""
    if uri.startswith("file://"):
        return Path(uri.removeprefix("file://"))
    if uri.startswith("pvc://"):
        return Path(os.environ.get("PRUNE_JOB_PVC_ROOT", "/mnt/pvc")) / uri.removeprefix("pvc://")
    return Path(uri)
