"""Where a model or an output lives: URIs turned into local folders.

`builtin:` converts a packaged model once into the cache; `s3://` downloads
through the storage module; `hf://` uses huggingface_hub's snapshot download
(safetensors only unless pickle is allowed); `pvc://claim/path` is the claim
mounted under $PRUNE_JOB_PVC_ROOT (default /mnt/pvc); anything else is a path.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from prune_job.builtin import builtin_model_dir, cache_root
from prune_job.uris import local_path
from prune_job.spec import ModelSource, SpecError

HF_PATTERNS = ["*.json", "*.safetensors", "tokenizer*", "*.model", "*.txt", "*.jinja"]
PICKLE_PATTERNS = ["*.bin", "*.pt"]


def resolve_model(source: ModelSource, cache: Optional[Path] = None) -> Path:
    uri = source.uri
    cache = cache or cache_root()
    if uri.startswith("builtin:"):
        return builtin_model_dir(uri.removeprefix("builtin:"))
    if uri.startswith("s3://"):
        from prune_job import storage

        return storage.fetch_model(uri, cache / "s3")
    if uri.startswith("hf://"):
        return _hf_snapshot(source, cache / "hf")
    path = local_path(uri)
    if not path.is_dir():
        raise SpecError([("spec.model.uri", f"{path} does not exist or is not a directory")])
    return path


def _hf_snapshot(source: ModelSource, cache: Path) -> Path:
    try:
        from huggingface_hub import snapshot_download
    except ImportError:  # pragma: no cover - transformers depends on it
        raise SpecError([("spec.model.uri", "hf:// needs huggingface_hub")]) from None
    patterns = HF_PATTERNS + (PICKLE_PATTERNS if source.allow_pickle else [])
    repo = source.uri.removeprefix("hf://").strip("/")
    return Path(snapshot_download(repo, revision=source.revision, cache_dir=cache, allow_patterns=patterns))


def is_remote(uri: str) -> bool:
    return uri.startswith("s3://")


def output_dir(uri: str, workdir: Path) -> Path:
    """Local folder the checkpoint is written to (a staging folder for s3://)."""
    if is_remote(uri):
        return workdir / "output"
    return local_path(uri)
