"""Where a model or an output lives: URIs turned into local folders.

`builtin:` converts a packaged model once into the cache; `s3://` downloads
through the storage package; `hf://` uses huggingface_hub's snapshot download
(safetensors only unless pickle is allowed); `pvc://claim/path` is the claim
mounted under $PRUNE_JOB_PVC_ROOT (default /mnt/pvc); anything else is a path.

`model_folder_problem` and `weight_files` are the one statement of what a
model folder must hold: the runtime loader and `prune-job validate` both ask them.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Optional

from prune_job.sources.builtin import builtin_model_dir, cache_root
from prune_job.sources.uris import parse_uri
from prune_job.spec import ModelSource, SpecError

HF_PATTERNS = ["*.json", "*.safetensors", "tokenizer*", "*.model", "*.txt", "*.jinja"]
PICKLE_PATTERNS = ["*.bin", "*.pt"]
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


class ModelFormatError(ValueError):
    """The model folder cannot be read as asked (missing files, pickle refused)."""


def resolve_model(source: ModelSource, cache: Optional[Path] = None) -> Path:
    uri = parse_uri(source.uri)
    cache = cache or cache_root()
    if uri.scheme == "builtin":
        return builtin_model_dir(uri.authority)
    if uri.is_remote:
        from prune_job import storage  # the [job] extra's minio; not needed for local runs

        return storage.fetch_model(source.uri, cache / "s3")
    if uri.scheme == "hf":
        return _hf_snapshot(source, uri.authority, cache / "hf")
    path = uri.local_path()
    if not path.is_dir():
        raise SpecError([("spec.model.uri", f"{path} does not exist or is not a directory")])
    return path


def _hf_snapshot(source: ModelSource, repo: str, cache: Path) -> Path:
    from huggingface_hub import snapshot_download

    patterns = HF_PATTERNS + (PICKLE_PATTERNS if source.allow_pickle else [])
    return Path(snapshot_download(repo, revision=source.revision, cache_dir=cache, allow_patterns=patterns))


def model_folder_problem(model_dir: Path) -> Optional[str]:
    """Why `model_dir` is not a Hugging Face model folder, or None."""
    if not model_dir.is_dir():
        return f"{model_dir} does not exist or is not a directory"
    if not (model_dir / "config.json").is_file():
        return f"{model_dir} has no config.json (not a Hugging Face model folder)"
    return None


def weight_files(model_dir: Path, allow_pickle: bool) -> list[Path]:
    """The safetensors files of a model folder; a pickle-only folder is refused (SpecError unless allowed,
    ModelFormatError when allowed, since the block-streaming loader reads safetensors only)."""
    files = sorted(model_dir.glob("*.safetensors"))
    if files:
        return files
    pickles = sorted(p for p in model_dir.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickles and not allow_pickle:
        raise SpecError([(
            "spec.model.allowPickle",
            f"{model_dir} holds only pickle checkpoints ({pickles[0].name}); pickle can run arbitrary code. "
            "Convert the model to safetensors, or set allowPickle: true if you trust it",
        )])
    if pickles:
        raise ModelFormatError(
            f"{model_dir}: pickle checkpoints are allowed by the spec but the block-streaming loader reads "
            "safetensors only; convert with `save_pretrained(..., safe_serialization=True)`"
        )
    raise SpecError([("spec.model.uri", f"{model_dir} contains no *.safetensors weights")])


def output_dir(uri: str, workdir: Path) -> Path:
    """Local folder the checkpoint is written to: for s3://, a staging folder of its own per URI, so
    that files another job left in the same workdir are never uploaded under this prefix."""
    parsed = parse_uri(uri)
    if not parsed.is_remote:
        return parsed.local_path()
    return workdir / "output" / hashlib.sha256(uri.encode()).hexdigest()[:16]
